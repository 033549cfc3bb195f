"""Run-folder artefacts: their names, their readers, and damaged or unwritable files."""

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from conftest import as_unprivileged
from featurebank import FeatureBankError, load_model
from featurebank.artefacts import (BEST_MODEL, BEST_MODEL_JSON, LEADERBOARD_JSON, head_file,
                                   read_best_model, read_leaderboard)
from featurebank.cli import main

FIXTURES = Path(__file__).parent / "fixtures" / "v1"


@pytest.fixture
def ft(tmp_path):
    shutil.copytree(FIXTURES / "ft", tmp_path / "ft")
    return tmp_path / "ft"


def test_head_file_names():
    assert head_file("logreg", "fc7", False) == "logreg.joblib"
    assert head_file("mlp", "fc6+fc7", True) == "mlp@fc6+fc7.joblib"


def test_leaderboard_reads_into_a_record():
    board = read_leaderboard(FIXTURES / "runs")
    assert board.taps == ["features.3"] and board.best()["file"] == "logreg.joblib"
    assert board.files() == ["logreg.joblib"] and board.folder == FIXTURES / "runs"
    assert board.extra["split"] == "split.npz"  # keys it does not name are kept


def test_a_changed_best_model_is_refused_not_used(ft):
    data = bytearray((ft / BEST_MODEL).read_bytes())
    middle = len(data) // 2  # inside a tensor's bytes: the archive still loads
    data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
    (ft / BEST_MODEL).write_bytes(bytes(data))
    with pytest.raises(FeatureBankError, match=r"best_model\.pt' changed since the fine-tune "
                                               r"wrote it \(its SHA-256 differs from the one "
                                               r"best_model\.json records\)"):
        load_model(ft)


def test_a_truncated_best_model_is_a_clear_error(ft, capsys):
    (ft / BEST_MODEL).write_bytes((ft / BEST_MODEL).read_bytes()[:1000])
    with pytest.raises(FeatureBankError, match="SHA-256 differs"):
        load_model(ft)
    meta = json.loads((ft / BEST_MODEL_JSON).read_text())
    del meta["weights_sha256"]  # a record that cannot tell: the load itself must say it
    (ft / BEST_MODEL_JSON).write_text(json.dumps(meta))
    with pytest.raises(FeatureBankError, match=r"best_model\.pt' cannot be loaded .*damaged or "
                                               r"truncated; restore it"):
        load_model(ft)
    assert main(["predict", str(ft), str(FIXTURES / "colours.npz")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "PytorchStreamReader" not in err.split("(")[0]


def test_a_truncated_record_is_a_clear_error(ft, capsys):
    (ft / BEST_MODEL_JSON).write_text((ft / BEST_MODEL_JSON).read_text()[:200])
    with pytest.raises(FeatureBankError, match=r"best_model\.json' \(a fine-tuned model's "
                                               r"record\) cannot be read \(JSONDecodeError"):
        read_best_model(ft)
    (ft / BEST_MODEL_JSON).write_text("[1, 2]")
    with pytest.raises(FeatureBankError, match=r"is not a fine-tuned model's record \(missing "
                                               r"\['bank', "):
        read_best_model(ft)
    (ft / BEST_MODEL).unlink()
    with pytest.raises(FeatureBankError, match="is not a fine-tune output folder"):
        read_best_model(ft)


def test_a_truncated_leaderboard_is_one_clear_error_for_report_and_finetune(tmp_path, capsys):
    shutil.copytree(FIXTURES / "runs", tmp_path / "runs")
    board = tmp_path / "runs" / LEADERBOARD_JSON
    board.write_text(board.read_text()[:300])
    says = (r"leaderboard\.json' \(a featurebank fit's leaderboard\) cannot be read "
            r"\(JSONDecodeError: .*\): the file is damaged or truncated; rerun featurebank fit")
    assert main(["report", str(tmp_path / "runs")]) == 2
    assert re.search(says, capsys.readouterr().err)
    assert main(["finetune", "--bank", str(FIXTURES / "npz_bank.h5"), "--runs",
                 str(tmp_path / "runs"), "--out", str(tmp_path / "ft")]) == 2
    err = capsys.readouterr().err
    assert re.search(says, err) and "Traceback" not in err
    assert not (tmp_path / "ft").exists()


@pytest.fixture
def read_only():
    ro = Path(tempfile.mkdtemp())  # under /tmp, so that uid nobody can reach it
    ro.chmod(0o555)
    yield ro
    ro.chmod(0o755)
    shutil.rmtree(ro)


@pytest.mark.parametrize("argv, target", [
    (["predict", str(FIXTURES / "ft"), str(FIXTURES / "colours.npz"), "--out"], "p.csv"),
    (["export", str(FIXTURES / "ft"), "--format", "torchscript", "--out"], "m.pt"),
    (["report", str(FIXTURES / "runs"), "--out"], "rep"),
])
def test_an_unwritable_output_is_refused_before_any_work(read_only, argv, target):
    rc, err = as_unprivileged([*argv, str(read_only / target)])
    assert rc == 2 and "Traceback" not in err, err
    assert re.search(rf"error: cannot write to the folder of '.*{target}' \(Permission denied: "
                     rf".*\); choose a writable out= path \(--out\), or make the folder "
                     rf"writable\.", err), err
    assert os.listdir(read_only) == []


def test_an_existing_folder_is_no_output_file(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    assert main(["predict", str(FIXTURES / "ft"), str(FIXTURES / "colours.npz"), "--out",
                 str(tmp_path / "out")]) == 2
    assert re.search(r"error: '.*out' is a folder; pass the path of the file to write as out= "
                     r"\(--out FILE\)", capsys.readouterr().err)
    assert os.listdir(tmp_path / "out") == ["keep.txt"]
    predictor = load_model(FIXTURES / "ft")
    with pytest.raises(FeatureBankError, match="is a folder"):
        predictor.export(tmp_path / "out")
    with pytest.raises(FeatureBankError, match="is a folder"):
        predictor.predict_to_csv(np.zeros((1, 16, 16, 3), np.uint8), tmp_path / "out")


def test_predict_export_and_report_are_up_to_date_on_a_rerun_or_need_overwrite(tmp_path,
                                                                              capsys):
    shutil.copytree(FIXTURES / "runs", tmp_path / "runs")
    images = str(FIXTURES / "colours.npz")
    csv_out, pt_out = tmp_path / "p.csv", tmp_path / "m.pt"
    cases = [
        (["predict", str(FIXTURES / "ft"), images, "--out", str(csv_out)],
         ["--top-k", "2"], csv_out),
        (["export", str(FIXTURES / "ft"), "--format", "torchscript", "--out", str(pt_out)],
         ["--format", "onnx"], pt_out),
        (["report", str(tmp_path / "runs"), "--bank", str(FIXTURES / "npz_bank.h5"), "--out",
          str(tmp_path / "rep")], [str(FIXTURES / "ft")], tmp_path / "rep" / "report.html"),
    ]
    for argv, other, output in cases:
        assert main(argv) == 0, capsys.readouterr().err
        stamp = output.stat().st_mtime_ns
        capsys.readouterr()
        assert main(argv) == 0  # the same arguments: nothing is done
        assert "up to date:" in "".join(capsys.readouterr()) and \
            output.stat().st_mtime_ns == stamp
        changed = [*argv, *other] if argv[0] != "report" else [*argv[:2], *other, *argv[2:]]
        assert main(changed) == 2
        assert re.search(r"exists already, made with other arguments; pass overwrite=True "
                         r"\(--overwrite\)", capsys.readouterr().err)
        assert output.stat().st_mtime_ns == stamp  # nothing already written is lost
        assert main([*changed, "--overwrite"]) == 0
        assert output.stat().st_mtime_ns != stamp
