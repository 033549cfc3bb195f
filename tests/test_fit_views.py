"""Heads on a bank with augmented views: trained on the centre rows plus each train image's
views, scored with the mirror average, both chosen on a validation split drawn by image; the
saved head and the predictor remember the choice."""

import json

import h5py
import numpy as np
import pytest
from sklearn.preprocessing import StandardScaler

from conftest import run_cli, write_npz
from featurebank import FeatureBank, ParameterError, extract, fit_heads, load_model
from featurebank.fit import _outputs, scores
from featurebank.heads import LogisticHead, class_probabilities, load_head
from featurebank.heads.registry import HeadSpec
from featurebank.rows import ViewRows
from test_heads import _head_objective

KW = dict(model="resnet18", weights="none", image_size=32, dtype="float32", progress=False)


@pytest.fixture(scope="module")
def banks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("views")
    write_npz(tmp / "d.npz", n_train=120, n_test=40)
    views = extract(f"npz:{tmp / 'd.npz'}", out=tmp / "v.h5", views=2, **KW)
    plain = extract(f"npz:{tmp / 'd.npz'}", out=tmp / "p.h5", **KW)
    return tmp, views, plain


def _row_set(a: np.ndarray) -> set[bytes]:
    return {r.tobytes() for r in np.ascontiguousarray(a, dtype=np.float32)}


def test_no_view_of_a_validation_or_test_image_is_trained_on(banks, tmp_path, monkeypatch):
    _, bank, _ = banks
    seen = []
    real = HeadSpec.fit_grid

    def recording(self, X, y, **kw):
        seen.append((self.name, np.asarray(X), kw.get("groups")))
        return real(self, X, y, **kw)

    monkeypatch.setattr(HeadSpec, "fit_grid", recording)
    fit_heads(bank, out=tmp_path / "r", tta=True, progress=False)
    with np.load(tmp_path / "r" / "split.npz") as z:
        train, val = z["train_rows"], z["val_rows"]
    centre, views = bank.load("train")[0], bank.views("train")[:]
    held_out = _row_set(np.concatenate([centre[val], *views[val].transpose(1, 0, 2),
                                        bank.load("test")[0], bank.views("test")[:, 0]]))
    allowed = _row_set(np.concatenate([centre[train], *views[train].transpose(1, 0, 2)]))
    sizes = sorted({len(X) for _, X, _ in seen})
    assert sizes == [len(train), 3 * len(train)]  # the centre rows; with 2 views each
    for name, X, groups in seen:
        rows = _row_set(X)
        assert not rows & held_out and rows <= allowed, name
        if groups is not None:  # each row's image: train images only
            assert set(groups) <= set(train) and len(groups) == len(X)


def test_views_and_the_mirror_average_are_settings_chosen_on_validation(banks, tmp_path):
    _, bank, _ = banks
    board = fit_heads(bank, out=tmp_path / "r", tta=True, progress=False)
    assert (board["views"], board["tta"]) == (2, True)
    test_x, test_y = bank.load("test")
    test_m = bank.views("test")[:, 0]
    for row in board["rows"]:
        combos = {(p["views"], p["tta"]) for p, _ in row["tried"]}
        assert combos == {(0, False), (0, True), (2, False), (2, True)}
        assert row["val_scores"]["accuracy"] == max(v for _, v in row["tried"])
        assert (row["views"], row["tta"]) in combos
        head = load_head(tmp_path / "r" / row["file"])
        assert head.featurebank_["metrics"]["tta"] == row["tta"]
        proba = class_probabilities(head, test_x)
        if row["tta"]:  # the test split is scored as the head was chosen
            proba = (proba + class_probabilities(head, test_m)) / 2
        assert row["test_accuracy"] == pytest.approx(
            (head.classes_[proba.argmax(1)] == test_y).mean())
    csv = (tmp_path / "r" / "leaderboard.csv").read_text().splitlines()
    assert "views" in csv[0].split(",") and "tta" in csv[0].split(",")
    again = fit_heads(bank, out=tmp_path / "r", tta=True, progress=False)
    assert again["rows"] == json.loads(json.dumps(board["rows"]))  # up to date: read back
    with pytest.raises(Exception, match="earlier fit of other arguments"):
        fit_heads(bank, out=tmp_path / "r", views="none", tta=True, progress=False)
    centre_only = fit_heads(bank, out=None, views="none", progress=False)
    assert all(r["views"] == 0 and not r["tta"] for r in centre_only["rows"])
    assert all("views" not in p for r in centre_only["rows"] for p, _ in r["tried"])


def test_scores_with_the_mirror_average_the_two_views_probabilities(banks):
    _, bank, _ = banks
    X, y = bank.load("train")
    M = bank.views("train")[:, 0]
    head = LogisticHead(C=0.1).fit(X, y)
    mean = (head.predict_proba(X) + head.predict_proba(M)) / 2
    got = scores(head, X, y, mirror=M)
    assert got["accuracy"] == pytest.approx((head.classes_[mean.argmax(1)] == y).mean())
    assert scores(head, X, y)["accuracy"] == pytest.approx((head.predict(X) == y).mean())
    assert got["log_loss"] == pytest.approx(
        -np.mean(np.log(mean[np.arange(len(y)), np.searchsorted(head.classes_, y)])))
    # a sweep's one evaluation of the rows serves both: the same scores as from scratch
    plain = _outputs(head, X)
    assert scores(head, X, y, mirror=M, computed=plain) == got
    assert scores(head, X, y, computed=plain) == scores(head, X, y)


def test_view_rows_streamed_reach_the_in_memory_optimum(banks):
    tmp, bank, _ = banks
    y = np.repeat(bank.labels("train"), 3)
    images = np.arange(bank.num_rows("train"))
    with h5py.File(tmp / "v.h5", "r") as f:
        tap = bank.taps[0]
        rows = ViewRows(f[f"train/features/{tap}"], f[f"train/views/{tap}"], images, [1, 2],
                        chunk=50)
        X = rows.array()
        streamed = LogisticHead(C=0.05, tol=1e-6, max_iter=1000).fit(rows, y)
    memory = LogisticHead(C=0.05, tol=1e-6, max_iter=1000).fit(X, y)
    Xs = StandardScaler().fit_transform(X.astype(np.float64))
    assert _head_objective(streamed, Xs, y, 0.05) == pytest.approx(
        _head_objective(memory, Xs, y, 0.05), rel=1e-6)
    # fit streams the same rows: the same choices and scores as in memory
    a = fit_heads(bank, out=None, stream=True, chunk_rows=64, progress=False)
    b = fit_heads(bank, out=None, stream=False, progress=False)
    for ra, rb in zip(sorted(a["rows"], key=lambda r: r["head"]),
                      sorted(b["rows"], key=lambda r: r["head"])):
        assert (ra["head"], ra["views"]) == (rb["head"], rb["views"])
        np.testing.assert_allclose([v for _, v in ra["tried"]], [v for _, v in rb["tried"]],
                                   atol=1.5 / ra["n_val"])  # at most a row's rounding


def test_views_are_checked_against_the_bank(banks, tmp_path):
    _, bank, plain = banks
    with pytest.raises(ParameterError, match=r"views=3 asks for 3 random views .* holds 2"):
        fit_heads(bank, out=None, views=3, progress=False)
    with pytest.raises(ParameterError, match="'views' parameter must be 'all', 'none' or a"):
        fit_heads(bank, out=None, views="some", progress=False)
    with pytest.raises(ParameterError, match="holds no views; extract it with --mirror"):
        fit_heads(plain, out=None, tta=True, progress=False)
    with pytest.raises(ParameterError, match="views=1 asks for 1 random views"):
        fit_heads(plain, out=None, views=1, progress=False)
    with pytest.raises(ParameterError, match="calibrate=True .* tta=True"):
        fit_heads(bank, out=None, tta=True, calibrate=True, progress=False)
    board = fit_heads(plain, out=None, progress=False)  # a bank without views: as before
    assert all(r["views"] == 0 and not r["tta"] and "views" not in r["params"]
               for r in board["rows"])
    assert all("views" not in p for r in board["rows"] for p, _ in r["tried"])


def _cli(capsys, *argv: str) -> str:
    """``featurebank ARGV`` in this process; its standard output."""
    return run_cli(*argv, capsys=capsys).stdout


def test_a_bank_with_views_through_fit_finetune_predict_and_report(banks, tmp_path, capsys):
    tmp, bank, _ = banks
    images = np.load(tmp / "d.npz")["test_images"][:12]
    np.savez(tmp_path / "t.npz", images=images)
    out = _cli(capsys, "fit", str(bank.path), "--out", str(tmp_path / "r"), "--tta", "--views",
               "2", "-q")
    assert "views none or 2 per train image; with and without the mirror average" in out
    board = json.loads((tmp_path / "r" / "leaderboard.json").read_text())
    _cli(capsys, "finetune", str(bank.path), "--runs", str(tmp_path / "r"), "--out",
         str(tmp_path / "ft"), "--epochs", "1", "-q")
    _cli(capsys, "report", str(tmp_path / "r"), str(tmp_path / "ft"), "--out",
         str(tmp_path / "rep"))
    assert (tmp_path / "rep" / "report.html").is_file()
    logreg = next(r for r in board["rows"] if r["head"] == "logreg")
    model = load_model(tmp_path / "r" / logreg["file"])
    assert model.tta == logreg["tta"]
    head = model.estimator
    X, M = bank.load("test")[0][:12], bank.views("test")[:12, 0]
    mean = (class_probabilities(head, X) + class_probabilities(head, M)) / 2
    np.testing.assert_allclose(model.predict_proba(tmp_path / "t.npz", tta=True), mean,
                               atol=1e-4)  # the mirror of each image, as the bank's
    np.testing.assert_allclose(model.predict_proba(tmp_path / "t.npz", tta=False),
                               class_probabilities(head, X), atol=1e-4)
    for flag, expected in (("--tta", mean), ("--no-tta", class_probabilities(head, X))):
        csv = _cli(capsys, "predict", str(tmp_path / "r" / logreg["file"]),
                   str(tmp_path / "t.npz"), flag, "-q").splitlines()[1:]
        names = np.asarray(model.classes_)[expected.argmax(1)]
        assert [line.split(",")[1] for line in csv] == list(names)
    ft = load_model(tmp_path / "ft")
    assert not ft.tta  # the fine-tune is not selected with the mirror; asked, it averages
    assert ft.predict_proba(tmp_path / "t.npz", tta=True).shape == (12, 4)
    _cli(capsys, "export", str(tmp_path / "r" / logreg["file"]), "--format", "torchscript",
         "--out", str(tmp_path / "m.pt"))
    card = json.loads((tmp_path / "m.pt.json").read_text())
    assert (card["output"]["test_time_augmentation"] is not None) == logreg["tta"]
    with pytest.raises(Exception, match="'tta' parameter must be True, False or None"):
        model.predict(tmp_path / "t.npz", tta="yes")
    assert FeatureBank(bank.path).fingerprint == bank.fingerprint


def test_refit_fits_every_train_image_with_the_views_it_chose(banks, monkeypatch):
    import featurebank.fit as fit

    _, bank, _ = banks
    seen, real = [], fit._refit

    def recording(name, params, X, y, w, **kw):
        seen.append(len(y))
        return real(name, params, X, y, w, **kw)

    monkeypatch.setattr(fit, "_refit", recording)
    board = fit_heads(bank, out=None, refit=True, heads=["logreg", "mlp"], progress=False)
    n = bank.num_rows("train")
    assert seen == [n * (1 + r["views"]) for r in sorted(
        board["rows"], key=lambda r: ["logreg", "mlp"].index(r["head"]))]
