"""``featurebank run``: extract, fit, fine-tune and report in one folder; reruns do nothing."""

import json

import numpy as np

from conftest import colour_images
from featurebank import run
from featurebank.cli import main


def _stamps(folder):
    return {p.relative_to(folder): p.stat().st_mtime_ns for p in folder.rglob("*")
            if p.is_file()}


def test_run_makes_everything_once_and_a_rerun_is_a_no_op(tmp_path, capsys):
    rng = np.random.default_rng(0)
    (X, y), (Xt, yt) = colour_images(rng, 120), colour_images(rng, 30)
    np.savez(tmp_path / "d.npz", train_images=X, train_labels=y, test_images=Xt,
             test_labels=yt, classes=np.array(["red", "green", "blue"]))
    kw = dict(out=tmp_path / "run", heads=["logreg"], model="resnet18", weights="none",
              image_size=32, progress=False)
    first = run(f"npz:{tmp_path / 'd.npz'}", **kw)
    assert first.bank.path == tmp_path / "run" / "bank.h5" and first.finetune is None
    assert first.leaderboard["best_head"] == "logreg" and first.report.is_file()
    before = _stamps(tmp_path / "run")
    again = run(f"npz:{tmp_path / 'd.npz'}", **kw)  # every step up to date
    assert _stamps(tmp_path / "run") == before and again.report == first.report
    # a fine-tune asked for later: the bank and the heads are kept, the rest is added
    argv = ["run", f"npz:{tmp_path / 'd.npz'}", "--out", str(tmp_path / "run"), "--heads",
            "logreg", "--model", "resnet18", "--weights", "none", "--image-size", "32",
            "--finetune-epochs", "1", "-q"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "logreg" in out and "fine-tuned: test accuracy" in out and "report.html" in out
    after = _stamps(tmp_path / "run")
    assert after[first.bank.path.relative_to(tmp_path / "run")] == \
        before[first.bank.path.relative_to(tmp_path / "run")]
    assert any(str(p).startswith("finetune") for p in after)
    assert main(argv) == 0 and _stamps(tmp_path / "run") == after  # and again: nothing


def test_run_with_views_lets_the_heads_choose_them(tmp_path):
    rng = np.random.default_rng(0)
    (X, y), (Xt, yt) = colour_images(rng, 60), colour_images(rng, 15)
    np.savez(tmp_path / "d.npz", train_images=X, train_labels=y, test_images=Xt,
             test_labels=yt)
    argv = ["run", f"npz:{tmp_path / 'd.npz'}", "--out", str(tmp_path / "run"), "--heads",
            "logreg", "--model", "resnet18", "--weights", "none", "--image-size", "32",
            "--views", "1", "--tta", "-q"]
    assert main(argv) == 0
    board = json.loads((tmp_path / "run" / "runs" / "leaderboard.json").read_text())
    assert (board["views"], board["tta"]) == (1, True)
    assert {(p["views"], p["tta"]) for p, _ in board["rows"][0]["tried"]} == {
        (0, False), (0, True), (1, False), (1, True)}
