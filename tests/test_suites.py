"""Probe suites: the table, the protocol's rows, banks reused across suites, and a stopped suite
continued to the same table."""

import base64
import csv
import html.parser
import io
import json

import numpy as np
import pytest

from conftest import colour_images
from featurebank import FeatureBankError, SuiteConfig, suite
from featurebank.cli import main
from featurebank.suites import few_shot_rows

MODELS = ["resnet18", "mobilenet_v3_small"]  # random weights, 32 px: tiny and quick
KW = dict(weights="none", image_size=32, progress=False)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("suite-data")
    out = []
    for name, seed in (("warm", 0), ("cold", 1)):
        rng = np.random.default_rng(seed)
        (X, y), (Xt, yt) = colour_images(rng, 120), colour_images(rng, 45)
        np.savez(tmp / f"{name}.npz", train_images=X, train_labels=y, test_images=Xt,
                 test_labels=yt)
        out.append(f"npz:{tmp / f'{name}.npz'}")
    return out


@pytest.fixture(scope="module")
def finished(datasets, tmp_path_factory):
    """A suite of 2 models x 2 datasets x 2 shot counts x 2 seeds (one tap, logreg)."""
    out = tmp_path_factory.mktemp("suite")
    rows = suite(MODELS, datasets, shots=[3, "all"], seeds=[0, 1], out=out / "s",
                 cache=out / "cache", **KW)
    return out, rows


def test_the_table_has_a_row_per_cell(finished, datasets):
    out, rows = finished
    assert len(rows) == 2 * 2 * 2 * 2
    assert {(r["model"], r["dataset"], r["shots"], r["seed"]) for r in rows} == {
        (m, d, k, s) for m in MODELS for d in datasets for k in (3, "all") for s in (0, 1)}
    assert all(r["tap"] == "penultimate" and r["head"] == "logreg" for r in rows)
    assert all(0 <= r["test_accuracy"] <= r["test_top5_accuracy"] == 1.0 for r in rows)
    three = [r for r in rows if r["shots"] == 3]
    assert {r["n_train"] for r in three} == {9} and {r["n_val"] for r in three} == {9}
    with open(out / "s" / "results.csv") as f:
        assert len(list(csv.DictReader(f))) == 16
    with open(out / "s" / "summary.csv") as f:
        summary = list(csv.DictReader(f))
    assert len(summary) == 8 and {s["seeds"] for s in summary} == {"2"}
    first = next(s for s in summary if s["shots"] == "3")
    values = [r["test_accuracy"] for r in rows if (r["model"], r["dataset"], r["shots"]) == (
        first["model"], first["dataset"], 3)]
    assert float(first["test_accuracy_mean"]) == pytest.approx(np.mean(values))
    assert float(first["test_accuracy_std"]) == pytest.approx(np.std(values, ddof=1))
    record = json.loads((out / "s" / "results.json").read_text())
    assert record["protocol"] == 1 and all(b["extracted"] for b in record["banks"])


def test_k_shot_validation_and_test_rows_never_overlap(finished):
    out, _ = finished
    cells = [json.loads(p.read_text()) for p in (out / "s" / "cells").glob("*.json")]
    assert len(cells) == 2 * 2 * 2 * 2  # one file per bank, tap, shots and seed: its heads
    for cell in cells:
        train, val = np.array(cell["train_rows"]), np.array(cell["val_rows"])
        assert not np.intersect1d(train, val).size  # disjoint within the train split
        assert train.max() < 120 and val.max() < 120  # rows of the train split, never test
        if cell["key"]["shots"] == 3:
            assert len(train) == len(val) == 9
    y = np.random.default_rng(0).integers(0, 4, 200)
    for seed in (0, 1):
        train, val = few_shot_rows(y, 5, seed)
        assert np.bincount(y[train]).tolist() == [5] * 4 == np.bincount(y[val]).tolist()
        assert not np.intersect1d(train, val).size
    a, b = few_shot_rows(y, 5, 0), few_shot_rows(y, 5, 1)
    assert not np.array_equal(a[0], b[0])  # the seed draws the rows
    np.testing.assert_array_equal(few_shot_rows(y, 5, 0)[0], a[0])  # and only the seed
    with pytest.raises(FeatureBankError, match="60-shot needs 120 training images of each"):
        few_shot_rows(y, 60, 0)


def test_a_second_suite_reuses_the_banks(finished, datasets, tmp_path, monkeypatch):
    out, rows = finished
    import featurebank.extraction as extraction

    written = []
    real = extraction._write
    monkeypatch.setattr(extraction, "_write", lambda *a, **k: written.append(a) or real(*a, **k))
    more = suite(MODELS[:1], datasets, shots=[3], seeds=[0], out=tmp_path / "s2",
                 cache=out / "cache", **KW)
    assert written == [] and len(more) == 2  # no second extraction
    record = json.loads((tmp_path / "s2" / "results.json").read_text())
    assert not any(b["extracted"] for b in record["banks"])
    assert {r["bank"] for r in more} <= {r["bank"] for r in rows}


def test_a_stopped_suite_continues_to_the_same_table(finished, datasets, tmp_path,
                                                     monkeypatch):
    out, rows = finished
    import featurebank.suites as suites

    real, done = suites._fit_cell, []

    def stop_after_five(*a, **k):
        if len(done) == 5:
            raise KeyboardInterrupt  # as Ctrl-C, or a kill, between two cells
        done.append(1)
        return real(*a, **k)

    monkeypatch.setattr(suites, "_fit_cell", stop_after_five)
    args = dict(shots=[3, "all"], seeds=[0, 1], out=tmp_path / "s", cache=out / "cache", **KW)
    with pytest.raises(KeyboardInterrupt):
        suite(MODELS, datasets, **args)
    assert len(list((tmp_path / "s" / "cells").glob("*.json"))) == 5
    monkeypatch.setattr(suites, "_fit_cell", lambda *a, **k: done.append(1) or real(*a, **k))
    again = suite(MODELS, datasets, **args)
    assert len(done) == 16  # 5 before the stop, the other 11 after: none twice
    key = lambda r: (r["model"], r["dataset"], r["tap"], r["head"], str(r["shots"]), r["seed"])
    drop = ("fit_seconds",)  # the rest is the same table
    assert sorted([{k: v for k, v in r.items() if k not in drop} for r in again], key=key) == \
        sorted([{k: v for k, v in r.items() if k not in drop} for r in rows], key=key)


class _Images(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.images = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])


def test_the_page_parses_and_its_images_decode(finished):
    from PIL import Image

    out, _ = finished
    page = _Images()
    page.feed((out / "s" / "report.html").read_text())
    assert len(page.images) == 1 + 2 * 2  # the heatmap, then shots and taps per dataset
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        image = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        assert image.size[0] > 200 and image.size[1] > 100


def test_every_image_of_the_page_renders_in_a_browser(finished, tmp_path):
    from conftest import images_a_browser_renders

    out, _ = finished
    assert images_a_browser_renders(out / "s" / "report.html", tmp_path) == (5, 5)


def test_the_command_line_and_a_suite_file(finished, datasets, tmp_path, capsys):
    out, rows = finished
    toml = tmp_path / "suite.toml"
    toml.write_text(f'models = ["{MODELS[0]}"]\ndatasets = ["{datasets[0]}"]\nshots = [3]\n'
                    f'seeds = [0, 1]\n[extract]\nweights = "none"\nimage_size = 32\n')
    assert main(["suite", str(toml), "--cache", str(out / "cache"), "--out",
                 str(tmp_path / "s"), "-q", "--markdown"]) == 0
    table = capsys.readouterr().out
    assert "| dataset | model | tap | head | 3-shot |" in table
    expected = np.mean([r["test_accuracy"] for r in rows if (r["model"], r["dataset"],
                                                              r["shots"]) == (MODELS[0],
                                                                              datasets[0], 3)])
    assert f"{expected:.4f} ±" in table
    assert SuiteConfig.from_toml(toml).extract == {"weights": "none", "image_size": 32}
    toml.write_text('models = ["resnet18"]\nshot = [1]\n')
    assert main(["suite", str(toml)]) == 2
    assert "unknown keys ['shot']" in capsys.readouterr().err
    assert main(["suite", "--models", "resnet18"]) == 2
    assert "needs --models and --datasets" in capsys.readouterr().err
    with pytest.raises(FeatureBankError, match="'shots' parameter takes positive ints and 'all'"):
        SuiteConfig(["resnet18"], ["cifar10"], shots=[0])
    with pytest.raises(FeatureBankError, match="extract options.*\\['image_sise'\\]"):
        SuiteConfig(["resnet18"], ["cifar10"], extract={"image_sise": 32})


def test_under_torchrun_every_rank_extracts_and_rank_0_fits(finished, datasets, tmp_path):
    import os
    import subprocess
    import sys

    from conftest import REPO
    from featurebank import FeatureBank

    out, rows = finished
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           "2", "-m", "featurebank", "suite", "--models", MODELS[0], "--datasets",
           ",".join(datasets), "--shots", "3", "--seeds", "0", "--weights", "none",
           "--image-size", "32", "--out", str(tmp_path / "s"), "-q"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("results over") == 1  # rank 0 reports
    record = json.loads((tmp_path / "s" / "results.json").read_text())
    assert len(record["rows"]) == 2
    for b in record["banks"]:  # one bank over both ranks' shards, per dataset
        assert len(FeatureBank(b["bank"]).shards) == 2
    for r in record["rows"]:  # the features differ from one process's by rounding at most
        alone = next(x for x in rows if (x["model"], x["dataset"], x["shots"], x["seed"]) ==
                     (r["model"], r["dataset"], 3, 0))
        assert r["test_accuracy"] == pytest.approx(alone["test_accuracy"], abs=1 / 45 + 1e-9)


def test_all_taps_are_each_models_named_taps(datasets, tmp_path):
    rows = suite(["vgg11"], datasets[:1], taps="all", shots=[3], seeds=[0], out=tmp_path / "s",
                 **KW)
    assert sorted(r["tap"] for r in rows) == ["fc6", "fc7", "penultimate", "pool5"]
    record = json.loads((tmp_path / "s" / "results.json").read_text())
    assert len(record["summary"]) == 4 and (tmp_path / "s" / "report.html").stat().st_size > 0


def test_views_go_into_the_banks_and_each_cell_chooses_them(datasets, tmp_path):
    from featurebank import FeatureBank

    rows = suite(["resnet18"], datasets[:1], shots=[3], seeds=[0], views=2,
                 out=tmp_path / "s", cache=tmp_path / "cache", **KW)
    (row,) = rows
    bank = FeatureBank(row["bank"])
    assert bank.spec.views.count == 2 and bank.view_names("test") == ["mirror"]
    assert row["views"] in (0, 2) and isinstance(row["tta"], bool)
    cell = json.loads(next((tmp_path / "s" / "cells").glob("*.json")).read_text())
    assert cell["key"]["views"] == 2 and len(cell["train_rows"]) == 9
    plain = suite(["resnet18"], datasets[:1], shots=[3], seeds=[0], out=tmp_path / "p",
                  cache=tmp_path / "cache", **KW)
    assert plain[0]["bank"] != row["bank"] and (plain[0]["views"], plain[0]["tta"]) == (0, False)
    with pytest.raises(FeatureBankError, match="the suite's views are its own 'views' key"):
        SuiteConfig(["resnet18"], datasets[:1], extract={"views": 2})
