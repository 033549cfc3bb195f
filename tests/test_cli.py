import sys

import pytest

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
