import subprocess
import sys

import pytest

from conftest import REPO, write_feature_bank

import featurebank.fit  # noqa: F401  (registers the modules patched below)
import featurebank.finetune  # noqa: F401
from featurebank.cli import main


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize("argv, module, function, says", [
    (["fit", "bank.h5", "--out", "myruns"], "featurebank.fit", "fit_heads",
     "heads finished so far are saved in myruns/"),
    (["finetune", "--bank", "bank.h5", "--runs", "runs", "--out", "ft"], "featurebank.finetune",
     "finetune", "rerun with --resume to continue from the last checkpoint (ft/checkpoint.pt"),
])
def test_ctrl_c_exits_130_and_says_how_to_go_on(monkeypatch, capsys, argv, module, function,
                                                says):
    # sys.modules: the package re-exports functions under the modules' own names
    monkeypatch.setattr(sys.modules[module], function, _interrupt)
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert f"featurebank {argv[0]}: interrupted; " in err and says in err


def test_output_piped_into_a_reader_that_stops_is_no_traceback(tmp_path):
    # `featurebank info BANK | head -1`: the reader goes away before the output is written
    bank = write_feature_bank(tmp_path / "bank.h5")
    proc = subprocess.Popen([sys.executable, "-m", "featurebank", "info", str(bank.path)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # before the interpreter has even imported torch
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and "Traceback" not in err and err == "", err
