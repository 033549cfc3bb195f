"""`featurebank report`: metrics, every plot, and one self-contained HTML page."""

import base64
import io
import json
import subprocess
import sys
from html.parser import HTMLParser

import numpy as np
import pytest

from conftest import REPO, run_cli
from featurebank import build_report, load_head

pytest.importorskip("matplotlib")  # the [plots] extra; the dev extra installs it


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs, self.tables = [], 0

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.srcs.append(dict(attrs)["src"])
        self.tables += tag == "table"


def test_report_of_a_fit_and_a_fine_tune(trained, tmp_path, capsys):
    from PIL import Image

    tmp, bank = trained
    proc = run_cli("report", str(tmp / "runs"), str(tmp / "ft"), "--out", str(tmp_path / "r"),
                   capsys=capsys)
    assert "report.html" in proc.stdout
    board = json.loads((tmp / "runs" / "leaderboard.json").read_text())
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert set(metrics) == {f"{h} on penultimate" for h in ("logreg", "mlp", "knn")} | {
        "fine-tuned model"}
    X, y = bank.load("test")
    for row in board["rows"]:
        m = metrics[f"{row['head']} on penultimate"]
        assert m["accuracy"] == pytest.approx(row["test_accuracy"])
        est = load_head(tmp / "runs" / row["file"])
        pred = est.predict(X)
        recall = [(pred[y == c] == c).mean() for c in range(3)]
        assert m["balanced_accuracy"] == pytest.approx(np.mean(recall))
        assert m["top5_accuracy"] == 1.0 and m["n"] == 60  # 3 classes: all are in the top 5
        assert set(m["per_class"]) >= {"red", "green", "blue", "macro avg"}
        assert np.trace(m["confusion"]) == round(m["accuracy"] * 60)
    ft = metrics["fine-tuned model"]
    summary = json.loads((tmp / "ft" / "summary.json").read_text())
    assert ft["accuracy"] == pytest.approx(summary["test_accuracy"])
    # every plot: a PNG file, and the same image embedded in the page
    pngs = sorted((tmp_path / "r").glob("*.png"))
    kinds = {p.name.split("_")[0] for p in pngs}
    assert {"confusion", "sweep", "curves"} <= kinds
    wrong_models = [k for k, m in metrics.items() if m.get("accuracy", 1) < 1]
    assert len(list((tmp_path / "r").glob("wrong_*.png"))) == len(wrong_models) > 0
    page = _Images()
    page.feed((tmp_path / "r" / "report.html").read_text())
    assert len(page.srcs) == len(pngs) and page.tables >= 5
    embedded = sorted(Image.open(io.BytesIO(base64.b64decode(s.split(",", 1)[1]))).size
                      for s in page.srcs if s.startswith("data:image/png;base64,"))
    assert embedded == sorted(Image.open(p).size for p in pngs)  # all decode, none linked


def test_report_without_matplotlib_says_how_to_install_it(trained, tmp_path):
    tmp, _ = trained
    code = ("import sys; sys.modules['matplotlib'] = None\n"  # as if not installed
            "from featurebank.cli import main\n"
            f"sys.exit(main(['report', {str(tmp / 'runs')!r}, '--out', {str(tmp_path)!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert 'pip install "featurebank[plots]"' in proc.stderr
    assert not list(tmp_path.iterdir())


def test_fit_and_finetune_say_how_to_make_the_report(trained, tmp_path, capsys):
    tmp, bank = trained
    out = run_cli("fit", str(bank.path), "--heads", "ridge", "--out", str(tmp_path / "runs"),
                  "-q", capsys=capsys).stdout
    assert f"featurebank report {tmp_path / 'runs'} --out {tmp_path / 'runs'}/report" in out
    with pytest.raises(Exception, match="does not exist; pass the --out folder"):
        build_report(tmp_path / "nothing")


def test_every_image_of_the_page_renders_in_a_browser(trained, tmp_path):
    # the parse above holds on every machine; a real engine where one is installed
    from conftest import images_a_browser_renders

    tmp, _ = trained
    page = build_report(tmp / "runs", tmp / "ft", out=tmp_path / "r")
    n = len(list((tmp_path / "r").glob("*.png")))
    assert images_a_browser_renders(page, tmp_path) == (n, n)