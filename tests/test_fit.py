import csv
import json

import h5py
import numpy as np
import pytest

from conftest import write_feature_bank
from featurebank import BankError, FeatureBankError, fit_heads, load_head
from featurebank.cli import main
from featurebank.heads import get_head_spec


@pytest.fixture
def bank(tmp_path):
    return write_feature_bank(tmp_path / "bank.h5")


def test_fit_ranks_saves_and_marks_the_best_graftable_head(tmp_path, bank):
    board = fit_heads(bank, heads=["knn", "logreg", "ridge", "mlp"], out=tmp_path / "runs",
                      progress=False)
    rows = board["rows"]
    assert [r["val_accuracy"] for r in rows] == sorted((r["val_accuracy"] for r in rows),
                                                       reverse=True)
    assert board["n_train"] == 270 and board["n_val"] == 30 and board["n_test"] == 100
    logreg = next(r for r in rows if r["head"] == "logreg")
    Cs = get_head_spec("logreg").grid["C"]
    assert logreg["params"]["C"] in Cs and len(logreg["tried"]) == len(Cs)
    assert logreg["val_accuracy"] == max(a for _, a in logreg["tried"])
    assert logreg["test_accuracy"] > 0.8
    knn = next(r for r in rows if r["head"] == "knn")
    assert not knn["graftable"] and not knn["best"]
    best = [r for r in rows if r["best"]]
    assert len(best) == 1 and best[0]["graftable"] and best[0]["head"] == board["best_head"]
    assert best[0]["val_accuracy"] == max(r["val_accuracy"] for r in rows if r["graftable"])

    runs = tmp_path / "runs"
    saved = json.loads((runs / "leaderboard.json").read_text())
    assert saved["best_head"] == board["best_head"] and saved["tap"] == "fc7"
    assert saved["bank_fingerprint"] == bank.fingerprint
    with open(runs / "leaderboard.csv") as f:
        assert [r["head"] for r in csv.DictReader(f)] == [r["head"] for r in rows]
    split = np.load(runs / "split.npz")
    train, val = split["train_rows"], split["val_rows"]
    assert len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == 300
    y = bank.labels("train")  # stratified: class shares match
    np.testing.assert_allclose(np.bincount(y[val]) / len(val), np.bincount(y) / len(y),
                               atol=0.04)

    head = load_head(runs / "logreg.joblib", bank=bank)
    info = head.featurebank_
    assert info["tap"] == "fc7" and info["classes"] == ["c0", "c1", "c2"]
    np.testing.assert_array_equal(info["val_rows"], val)
    assert info["metrics"]["test_accuracy"] == logreg["test_accuracy"]
    Xt, yt = bank.load("test")
    assert head.score(Xt, yt) == logreg["test_accuracy"]
    assert "torch_version" in info["versions"]


def test_chosen_setting_never_saw_the_validation_rows(tmp_path, bank):
    board = fit_heads(bank, heads=["logreg"], out=tmp_path / "runs", progress=False)
    head = load_head(tmp_path / "runs" / "logreg.joblib")
    from featurebank import LogisticHead

    X, y = bank.load("train")
    train = np.load(tmp_path / "runs" / "split.npz")["train_rows"]
    again = LogisticHead(C=board["rows"][0]["params"]["C"], max_iter=200).fit(X[train], y[train])
    np.testing.assert_allclose(head.predict_proba(X), again.predict_proba(X), atol=1e-3)


def test_split_is_seeded(tmp_path, bank):
    a = fit_heads(bank, heads=["ridge"], out=tmp_path / "a", progress=False, random_state=3)
    b = fit_heads(bank, heads=["ridge"], out=tmp_path / "b", progress=False, random_state=3)
    fit_heads(bank, heads=["ridge"], out=tmp_path / "c", progress=False, random_state=4)
    va, vb, vc = (np.load(tmp_path / k / "split.npz")["val_rows"] for k in "abc")
    np.testing.assert_array_equal(va, vb)
    assert not np.array_equal(va, vc)
    assert a["rows"][0]["val_accuracy"] == b["rows"][0]["val_accuracy"]


def test_bad_banks_and_arguments(tmp_path, bank):
    with pytest.raises(BankError, match="has no tap 'fc6'"):
        fit_heads(bank, tap="fc6", out=None, progress=False)
    with pytest.raises(FeatureBankError, match=r"unknown heads \['svm'\]"):
        fit_heads(bank, heads=["svm"], out=None, progress=False)
    with pytest.raises(FeatureBankError, match=r"the 'val_fraction' parameter must be a float in \(0, 1\)"):
        fit_heads(bank, val_fraction=1.5, out=None, progress=False)
    nan = write_feature_bank(tmp_path / "nan.h5")
    with h5py.File(nan.path, "r+") as f:
        f["train/features/fc7"][7, 3] = np.nan
    with pytest.raises(BankError, match=r"split 'train', tap 'fc7' has 1 rows with NaN or "
                                        r"infinite features \(rows \[7\]\)"):
        fit_heads(nan, out=None, progress=False)
    one = write_feature_bank(tmp_path / "one.h5", n_classes=1)
    with pytest.raises(BankError, match="holds only one class"):
        fit_heads(one, out=None, progress=False)
    empty = write_feature_bank(tmp_path / "empty.h5", n_train=0)
    assert empty.num_rows("train") == 0 and empty.shape("train") == (0, 32)
    with pytest.raises(BankError, match="the train split of .*empty.h5' is empty"):
        fit_heads(empty, out=None, progress=False)
    tiny = write_feature_bank(tmp_path / "tiny.h5", n_train=4, n_test=2)
    with pytest.raises(FeatureBankError, match="cannot hold out a stratified validation split"):
        fit_heads(tiny, out=None, progress=False)


def test_cli_fit(tmp_path, bank, capsys):
    assert main(["fit", str(bank.path), "--heads", "logreg,ridge", "--out",
                 str(tmp_path / "runs")]) == 0
    out, err = capsys.readouterr()
    assert "<- best graftable" in out and "val acc" in out and "logreg" in out
    assert "  ridge       fc7      val " in out  # each head's line as it finishes
    n_settings = sum(len(get_head_spec(h).candidates()) for h in ("logreg", "ridge"))
    assert "fit logreg" in err and f"/{n_settings} " in err  # the progress bar, on stderr
    assert (tmp_path / "runs" / "ridge.joblib").is_file()
    with pytest.raises(SystemExit):
        main(["fit", str(bank.path), "--heads", "logreg,svm"])
    assert "unknown heads ['svm']" in capsys.readouterr().err
    assert main(["fit", str(bank.path), "--tap", "nope"]) == 2
    assert "has no tap 'nope'" in capsys.readouterr().err


def test_several_taps_in_one_run_rank_every_head_on_every_tap(tmp_path):
    bank = write_feature_bank(tmp_path / "b.h5", taps=("fc6", "fc7", "pool5"))
    board = fit_heads(bank, tap="fc6,pool5,fc6+fc7", heads=["logreg", "ridge"],
                      out=tmp_path / "runs", progress=False)
    assert board["taps"] == ["fc6", "pool5", "fc6+fc7"]
    assert sorted((r["head"], r["tap"]) for r in board["rows"]) == sorted(
        (h, t) for h in ("logreg", "ridge") for t in board["taps"])
    assert all(r["file"] == f"{r['head']}@{r['tap']}.joblib" for r in board["rows"])
    with open(tmp_path / "runs" / "leaderboard.csv") as f:
        assert [r["tap"] for r in csv.DictReader(f)] == [r["tap"] for r in board["rows"]]
    both = load_head(tmp_path / "runs" / "logreg@fc6+fc7.joblib", bank=bank)
    assert both.n_features_in_ == 64 and both.featurebank_["tap"] == "fc6+fc7"
    X, _ = bank.load("test", "fc6+fc7")  # the taps side by side, in the order named
    np.testing.assert_array_equal(X[:, :32], bank.load("test", "fc6")[0])
    row = next(r for r in board["rows"] if r["file"] == "logreg@fc6+fc7.joblib")
    assert both.score(X, bank.labels("test")) == row["test_accuracy"]
    every = fit_heads(bank, tap="all", heads=["ridge"], out=None, progress=False)
    assert every["taps"] == ["fc6", "fc7", "pool5"]
    with pytest.raises(BankError, match="has no tap 'fc9'"):
        fit_heads(bank, tap="fc6,fc9", out=None, progress=False)


def test_a_runs_folder_is_never_silently_overwritten(tmp_path, bank, capsys):
    first = fit_heads(bank, heads=["logreg", "ridge"], out=tmp_path / "runs", progress=False)
    stamp = (tmp_path / "runs" / "leaderboard.json").stat().st_mtime_ns
    again = fit_heads(bank, heads=["ridge", "logreg"], out=tmp_path / "runs")  # the same fit
    assert again["rows"] == json.loads(json.dumps(first["rows"]))  # as saved, nothing refitted
    assert (tmp_path / "runs" / "leaderboard.json").stat().st_mtime_ns == stamp
    assert "is up to date" in capsys.readouterr().err
    with pytest.raises(FeatureBankError, match=r"holds the results of an earlier fit of other "
                                               r"arguments \(leaderboard.json\); pass "
                                               r"overwrite=True \(--overwrite\)"):
        fit_heads(bank, heads=["ridge"], out=tmp_path / "runs", progress=False)
    assert main(["fit", str(bank.path), "--heads", "ridge", "--out", str(tmp_path / "runs")]) == 2
    assert "--overwrite" in capsys.readouterr().err
    fit_heads(bank, heads=["ridge"], out=tmp_path / "runs", progress=False, overwrite=True)
    assert sorted(p.name for p in (tmp_path / "runs").glob("*.joblib")) == ["ridge.joblib"]


def test_validation_size_is_reported_and_small_splits_and_ties_are_noted(tmp_path, capsys):
    bank = write_feature_bank(tmp_path / "b.h5", n_train=120)  # 12 validation rows
    board = fit_heads(bank, heads=["ridge", "logreg"], out=None)
    assert all(r["n_val"] == 12 for r in board["rows"])
    assert any("the validation split has 12 rows" in n and "fewer than 20 per class" in n
               for n in board["notes"])
    # these blobs are easy: every setting reaches 1.0, so the choice among them is a tie
    assert any("scored the same validation accuracy" in n and "the first of them in the "
               "head's grid order was kept" in n for n in board["notes"])
    assert not any("simpler" in n for n in board["notes"])  # a grid's order is no complexity
    captured = capsys.readouterr()
    assert "note: the validation split has 12 rows" in captured.err
    assert "ridge" in captured.out and "(12)" in captured.out
    big = fit_heads(write_feature_bank(tmp_path / "big.h5", n_train=900), heads=["ridge"],
                    out=None, progress=False)
    assert not any("validation split has" in n for n in big["notes"])


def test_refit_uses_the_validation_rows_too_and_finetune_refuses_it(tmp_path, bank):
    board = fit_heads(bank, heads=["logreg"], out=tmp_path / "runs", progress=False, refit=True)
    head = load_head(tmp_path / "runs" / "logreg.joblib")
    assert head.featurebank_["refit"] and board["rows"][0]["refit"]
    from featurebank import LogisticHead, finetune

    X, y = bank.load("train")
    again = LogisticHead(C=board["rows"][0]["params"]["C"], max_iter=200).fit(X, y)
    np.testing.assert_allclose(head.predict_proba(X), again.predict_proba(X), atol=1e-3)
    from featurebank import FinetuneError

    with pytest.raises(FinetuneError, match=r"was refitted on its validation rows \(fit "
                                            r"--refit\)"):
        finetune(bank, runs=tmp_path / "runs", out=tmp_path / "ft", progress=False)


def test_the_heads_of_a_run_share_one_standardisation(bank, monkeypatch):
    import featurebank.heads.registry as registry

    real, calls = registry.standardization, []

    def counting(X, standardize, rows=None):
        calls.append(X.shape)
        return real(X, standardize, rows)

    monkeypatch.setattr(registry, "standardization", counting)
    board = fit_heads(bank, heads=["logreg", "mlp"], out=None, progress=False)
    assert calls == [(270, 32)]  # once, on the train rows, for both heads' grids
    assert {r["head"] for r in board["rows"]} == {"logreg", "mlp"}


def test_fit_streams_a_bank_it_cannot_hold(tmp_path, monkeypatch):
    import h5py

    bank = write_feature_bank(tmp_path / "b.h5", n_train=600, dtype="float16")
    loaded = fit_heads(bank, heads=["logreg", "mlp"], out=None, progress=False, stream=False)
    real, reads = h5py.Dataset.__getitem__, []

    def counting(self, key):
        out = real(self, key)
        if self.name.endswith("/features/fc7"):
            reads.append(len(out))
        return out

    monkeypatch.setattr(h5py.Dataset, "__getitem__", counting)
    streamed = fit_heads(bank, heads=["logreg", "mlp"], out=tmp_path / "runs", progress=False,
                         stream=True, chunk_rows=128)  # the bank is read piece by piece
    # chunks of 128 rows, and each head's one sample for its sketch (all 540 rows here, at
    # most 4,096): the whole split is never read at once
    assert all(r <= 128 for r in reads if r != 540) and reads.count(540) == 2
    assert len(reads) > 100
    by_head = {r["head"]: r for r in loaded["rows"]}
    for r in streamed["rows"]:
        assert r["test_accuracy"] == pytest.approx(by_head[r["head"]]["test_accuracy"], abs=0.02)
    logreg = next(r for r in streamed["rows"] if r["head"] == "logreg")
    assert logreg["params"] == by_head["logreg"]["params"]
    head = load_head(tmp_path / "runs" / "logreg.joblib", bank=bank)
    X, y = bank.load("test")
    assert head.score(X, y) == logreg["test_accuracy"]
    with pytest.raises(FeatureBankError, match=r"heads \['ridge'\] need their features in "
                                               r"memory"):
        fit_heads(bank, heads=["ridge", "logreg"], out=None, progress=False, stream=True)


def _imbalanced_bank(path):
    """A bank of a 94/6 problem whose minority class needs weak regularisation to be seen."""
    from featurebank.bank import BankWriter
    from featurebank.records import BankSpec, DatasetInfo

    def draw(n, seed):
        rng = np.random.default_rng(seed)
        y = (rng.random(n) < 0.06).astype(np.int64)
        X = rng.standard_normal((n, 20)).astype(np.float32)
        X[y == 1, :3] += 1.2
        return X, y

    data = {"train": draw(2300, 1), "test": draw(800, 3)}
    spec = {"model": "toy", "weights": "none", "weights_path": None, "taps": ["f"],
            "tap_layers": {"f": {"module": "f", "where": "output", "activation_shape": [20],
                                 "pool": "none", "dim": 20}},
            "image_size": 8, "resize": "device", "interpolation": "bilinear", "antialias": True,
            "mean": [0.5] * 3, "std": [0.25] * 3, "preprocessing_source": "test",
            "dtype": "float32"}
    dataset = {"name": "npz", "source": "generated", "classes": ["common", "rare"],
               "splits": {k: len(v[1]) for k, v in data.items()}, "resize": "device",
               "fingerprint": "9" * 64}
    w = BankWriter(path, spec=BankSpec.from_json(spec), dataset=DatasetInfo.from_json(dataset),
                   resume=False)
    for split, (X, y) in data.items():
        w.write(split, features={"f": X}, labels=y, index=np.arange(len(y)),
                sources_done=len(y))
    w.commit({})
    w.close()
    from featurebank import FeatureBank

    return FeatureBank(path)


def test_the_selection_metric_chooses_the_setting_and_every_metric_is_recorded(tmp_path,
                                                                               capsys):
    bank = _imbalanced_bank(tmp_path / "imb.h5")
    kw = dict(heads=["logreg"], val_fraction=0.35, progress=False)
    by_acc = fit_heads(bank, out=None, **kw)["rows"][0]
    by_bal = fit_heads(bank, out=tmp_path / "runs", metric="balanced_accuracy", **kw)
    row = by_bal["rows"][0]
    assert set(row["val_scores"]) == {"accuracy", "top5_accuracy", "balanced_accuracy",
                                      "f1_macro", "log_loss"}
    assert by_acc["metric"] == "accuracy" and by_bal["metric"] == "balanced_accuracy"
    # accuracy keeps the majority-leaning setting; balanced accuracy wants the rare class seen
    assert row["params"]["C"] > by_acc["params"]["C"]
    assert row["val_scores"]["balanced_accuracy"] > by_acc["val_scores"]["balanced_accuracy"]
    assert max(v for _, v in row["tried"]) == row["val_scores"]["balanced_accuracy"]
    by_loss = fit_heads(bank, out=None, metric="log_loss", **kw)["rows"][0]
    assert min(v for _, v in by_loss["tried"]) == by_loss["val_scores"]["log_loss"]
    header = (tmp_path / "runs" / "leaderboard.csv").read_text().splitlines()[0]
    assert "metric" in header and "val_balanced_accuracy" in header and "test_log_loss" in header
    assert main(["fit", str(bank.path), "--heads", "logreg", "--val-fraction", "0.35",
                 "--metric", "f1_macro", "--out", str(tmp_path / "f1")]) == 0
    out = capsys.readouterr().out
    assert "val F1 macro" in out and "validation f1 macro on" in out
    with pytest.raises(Exception, match=r"the 'metric' parameter must be one of"):
        fit_heads(bank, out=None, metric="auc", **kw)


def test_class_weights_reach_every_head_that_takes_them(tmp_path, capsys):
    bank = _imbalanced_bank(tmp_path / "imb.h5")
    kw = dict(val_fraction=0.35, progress=False)
    plain = fit_heads(bank, heads=["logreg"], out=None, **kw)["rows"][0]
    board = fit_heads(bank, heads=["logreg", "mlp", "sk-logreg", "knn"], out=tmp_path / "runs",
                      class_weight="balanced", metric="balanced_accuracy", **kw)
    rows = {r["head"]: r for r in board["rows"]}
    assert board["class_weight"] == "balanced"
    assert {h: r["class_weight"] for h, r in rows.items()} == {
        "logreg": "balanced", "mlp": "balanced", "sk-logreg": "balanced", "knn": None}
    assert any("knn take no class or sample weights" in n for n in board["notes"])
    # the weighted logreg sees the rare class: its recall (and balanced accuracy) goes up
    assert (rows["logreg"]["test_scores"]["balanced_accuracy"]
            > plain["test_scores"]["balanced_accuracy"] + 0.05)
    head = load_head(tmp_path / "runs" / rows["logreg"]["file"])
    assert head.class_weight == "balanced"
    assert head.featurebank_["metrics"]["class_weight"] == "balanced"
    sk = load_head(tmp_path / "runs" / rows["sk-logreg"]["file"])
    assert sk[-1].class_weight == "balanced"
    # a dict names the bank's classes; another weight rule is another fit
    by_name = fit_heads(bank, heads=["logreg"], out=None, class_weight={"rare": 10.0}, **kw)
    assert by_name["rows"][0]["class_weight"] == {"1": 10.0}
    with pytest.raises(FeatureBankError, match="other arguments"):
        fit_heads(bank, heads=["logreg", "mlp", "sk-logreg", "knn"], out=tmp_path / "runs",
                  metric="balanced_accuracy", **kw)
    with pytest.raises(FeatureBankError, match="class_weight names class 'missing'"):
        fit_heads(bank, heads=["logreg"], out=None, class_weight={"missing": 2.0}, **kw)
    assert main(["fit", str(bank.path), "--heads", "logreg", "--class-weight", "balanced",
                 "--calibrate", "--out", str(tmp_path / "cli"), "-q"]) == 0
    out = capsys.readouterr().out
    assert 'class weights "balanced"' in out and "probabilities calibrated" in out
    assert "logreg on f: temperature" in out and "test ECE" in out


def test_small_classes_are_noted_with_what_one_row_moves_the_metric(tmp_path):
    bank = _imbalanced_bank(tmp_path / "imb.h5")  # 6% rare: ~14 rare rows at val_fraction 0.1
    board = fit_heads(bank, heads=["ridge"], out=None, progress=False,
                      metric="balanced_accuracy")
    import re

    note = next(n for n in board["notes"] if "weighs every class equally" in n)
    n_rare, step = re.search(r"'rare' (\d+) \(step ([0-9.]+)\)", note).groups()
    assert int(n_rare) < 20 and float(step) == pytest.approx(1 / (2 * int(n_rare)), abs=5e-4)
    assert "1 class has fewer than 20" in note and "'common'" not in note
    # accuracy keeps the plain note
    plain = fit_heads(bank, heads=["ridge"], out=None, progress=False)
    assert any("fewer than 20 per class" in n for n in plain["notes"])


def test_calibrate_fits_a_temperature_and_keeps_the_predictions(tmp_path):
    from featurebank.heads import TemperatureScaledClassifier

    bank = write_feature_bank(tmp_path / "bank.h5", n_train=600, n_test=300, d=16,
                              n_classes=4)
    kw = dict(heads=["logreg", "mlp", "linear-svc"], progress=False, random_state=0)
    plain = fit_heads(bank, out=tmp_path / "plain", **kw)
    board = fit_heads(bank, out=tmp_path / "cal", calibrate=True, **kw)
    assert board["calibrate"] is True
    for row in board["rows"]:
        c = row["calibration"]
        assert row["temperature"] == c["temperature"] > 0
        assert c["val_log_loss_after"] <= c["val_log_loss_before"] + 1e-9  # fitted by it
        assert row["val_scores"]["log_loss"] == pytest.approx(c["val_log_loss_after"])
        assert sum(c["test_reliability_after"]["count"]) == board["n_test"]
        assert 0 <= c["test_ece_after"] <= 1
        before = next(r for r in plain["rows"] if r["head"] == row["head"])
        assert row["params"] == before["params"]  # selected as without calibration
        assert row["test_accuracy"] == before["test_accuracy"]  # the argmax did not move
        est = load_head(tmp_path / "cal" / row["file"])
        assert isinstance(est, TemperatureScaledClassifier)
        X, y = bank.load("test", "fc7")
        raw = load_head(tmp_path / "plain" / before["file"])
        np.testing.assert_array_equal(est.predict(X), raw.predict(X))
        assert est.featurebank_["metrics"]["temperature"] == row["temperature"]
    csv_row = next(csv.DictReader(open(tmp_path / "cal" / "leaderboard.csv")))
    assert float(csv_row["temperature"]) > 0 and csv_row["test_ece_after"]
    with pytest.raises(FeatureBankError, match="calibrate=True.*refit=True"):
        fit_heads(bank, out=None, calibrate=True, refit=True, **kw)


def test_rows_of_your_own_are_what_is_fitted_and_selected_on(tmp_path, bank):
    train, val = np.arange(0, 120), np.arange(200, 260)
    board = fit_heads(bank, heads=["logreg"], out=tmp_path / "runs", progress=False,
                      train_rows=train, val_rows=val[::-1])
    assert (board["n_train"], board["n_val"]) == (120, 60)
    split = np.load(tmp_path / "runs" / "split.npz")
    np.testing.assert_array_equal(split["train_rows"], train)
    np.testing.assert_array_equal(split["val_rows"], val)
    assert board["rows"][0]["test_scores"]["top5_accuracy"] == 1.0  # 3 classes: always
    again = fit_heads(bank, heads=["logreg"], out=tmp_path / "runs", progress=False,
                      train_rows=train, val_rows=val)
    assert again["rows"][0]["fit_seconds"] == board["rows"][0]["fit_seconds"]  # up to date
    with pytest.raises(FeatureBankError, match="other arguments"):
        fit_heads(bank, heads=["logreg"], out=tmp_path / "runs", progress=False,
                  train_rows=train[1:], val_rows=val)
    with pytest.raises(FeatureBankError, match="share 10 rows"):
        fit_heads(bank, heads=["logreg"], out=None, train_rows=train, val_rows=train[:10])
    with pytest.raises(FeatureBankError, match="go together"):
        fit_heads(bank, heads=["logreg"], out=None, train_rows=train)
    with pytest.raises(FeatureBankError, match=r"distinct rows of the bank's train split \(0 "
                                                r"to 299\)"):
        fit_heads(bank, heads=["logreg"], out=None, train_rows=[1, 400], val_rows=val)


def test_sample_weights_reach_every_head_that_takes_them(tmp_path, bank, monkeypatch):
    import featurebank.heads.logistic as logistic
    from sklearn.preprocessing import StandardScaler

    w = np.ones(300)
    w[::2] = 3.0
    seen = {}
    real = logistic.logistic_path
    monkeypatch.setattr("featurebank.heads.registry.logistic_path",
                        lambda *a, **k: seen.setdefault("logreg", k["sample_weight"]) is None
                        or real(*a, **k))
    board = fit_heads(bank, heads=["logreg", "sk-logreg", "knn"], out=tmp_path / "runs",
                      progress=False, sample_weight=w)
    rows = {r["head"]: r for r in board["rows"]}
    split = np.load(tmp_path / "runs" / "split.npz")
    np.testing.assert_array_equal(seen["logreg"], w[split["train_rows"]])  # the train rows'
    assert rows["logreg"]["sample_weight"] and not rows["knn"]["sample_weight"]
    assert any("knn take no class or sample weights" in n for n in board["notes"])
    sk = load_head(tmp_path / "runs" / rows["sk-logreg"]["file"])
    X, _ = bank.load("train")
    scaler = StandardScaler().fit(X[split["train_rows"]],
                                  sample_weight=w[split["train_rows"]])
    np.testing.assert_allclose(sk[0].mean_, scaler.mean_)  # the pipeline's scaler weighed too
    plain = fit_heads(bank, heads=["sk-logreg"], out=None, progress=False)
    assert plain["rows"][0]["sample_weight"] is False
    with pytest.raises(FeatureBankError, match=r"sample_weight must have shape \(300,\).*one "
                                                r"per row of the bank's train split"):
        fit_heads(bank, heads=["logreg"], out=None, sample_weight=np.ones(10))
    with pytest.raises(FeatureBankError, match="other arguments"):
        fit_heads(bank, heads=["logreg", "sk-logreg", "knn"], out=tmp_path / "runs",
                  progress=False)


def test_fit_records_the_settings_stopped_for_trailing_on_validation(tmp_path):
    bank = write_feature_bank(tmp_path / "b.h5", n_train=300, d=64)
    board = fit_heads(bank, heads=["logreg"], out=tmp_path / "r", val_fraction=0.3,
                      progress=False)
    row = board["rows"][0]
    assert row["pruned"]  # on this bank the slowest setting (C=1e-4) trails, and is stopped
    notes = " ".join(board["notes"])
    for p in row["pruned"]:
        assert p["n_iter"] % 10 == 0 and p["n_iter"] < 200 and p["C"] != row["params"]["C"]
        assert f"{ {'C': p['C']} } at iteration {p['n_iter']}" in notes
    saved = json.loads((tmp_path / "r" / "leaderboard.json").read_text())["rows"][0]
    assert saved["pruned"] == row["pruned"]
