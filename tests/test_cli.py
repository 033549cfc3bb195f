import argparse
import subprocess
import sys

import pytest

from conftest import REPO, write_feature_bank

import featurebank.finetuning  # noqa: F401  (registers the modules patched below)
import featurebank.fit  # noqa: F401
from featurebank.cli import main


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize("argv, module, function, says", [
    (["fit", "bank.h5", "--out", "myruns"], "featurebank.fit", "fit_heads",
     "heads finished so far are saved in myruns/"),
    (["finetune", "--bank", "bank.h5", "--runs", "runs", "--out", "ft"], "featurebank.finetuning",
     "finetune", "rerun with --resume to continue from the last checkpoint (ft/checkpoint.pt"),
])
def test_ctrl_c_exits_130_and_says_how_to_go_on(monkeypatch, capsys, argv, module, function,
                                                says):
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


def _numeric_options():
    """(command, flag, Interval) of every option whose values an Interval checks."""
    from featurebank._io import Interval
    from featurebank.cli import _parser

    sub = next(a for a in _parser(full=True)._actions
               if isinstance(a, argparse._SubParsersAction))
    for command, parser in sub.choices.items():
        for action in parser._actions:
            interval = getattr(getattr(action, "type", None), "__self__", None)
            if isinstance(interval, Interval):
                yield command, "/".join(action.option_strings), interval


def test_every_numeric_option_refuses_out_of_range_values_in_one_format(capsys):
    options = list(_numeric_options())
    flags = {(c, f) for c, f, _ in options}
    assert {("extract", "--batch-size"), ("extract", "--image-size"), ("fit", "--val-fraction"),
            ("extract", "--workers/--num-workers"), ("finetune", "--workers"),
            ("finetune", "--batch-size"), ("finetune", "--lr"), ("finetune", "--epochs"),
            ("finetune", "--checkpoint-every")} <= flags
    for command, flag, interval in options:
        value = interval.low - 1 if interval.low is not None else interval.high + 1
        text = f"{value:g}"
        with pytest.raises(SystemExit) as e:
            main([command, flag.split("/")[0], text])
        assert e.value.code == 2
        assert f"argument {flag}: must be {interval.describe()}, got {text}" in \
            capsys.readouterr().err


def test_finetune_config_checks_every_value_as_the_api_does():
    from dataclasses import fields

    from featurebank import FinetuneConfig, ParameterError

    for f in fields(FinetuneConfig):
        interval = f.metadata["check"]
        if interval is None:
            continue
        value = interval.low - 1 if interval.low is not None else interval.high + 1
        with pytest.raises(ParameterError, match=rf"the '{f.name}' parameter must be "):
            FinetuneConfig(**{f.name: value})
    with pytest.raises(ParameterError, match=r"the 'optimizer' parameter must be one of "
                                             r"\('adamw', 'sgd'\)|\['adamw', 'sgd'\]"):
        FinetuneConfig(optimizer="adam")
    assert FinetuneConfig(batch_size=8).batch_size == 8
    assert "checkpoint_every" not in FinetuneConfig.result_keys()
    assert {"epochs", "lr", "seed", "augment"} <= set(FinetuneConfig.result_keys())


def test_finetune_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "images per training step (default: 64)" in out
    assert "--augment, --no-augment" in out and "(default: True)" in out
    assert "(default: None)" not in out  # required and unset options show no default
    start = out.index("--train-bn, --no-train-bn")  # the option's help, not the usage line
    train_bn = out[start:out.index("--seed", start)]
    assert train_bn.count("(default:") == 1
    with pytest.raises(SystemExit):
        main(["extract", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "output bank file (default: DATASET_MODEL_WEIGHTS_SIZEpx.h5 in the working " \
           "folder)" in out and "(default: None)" not in out


def test_the_all_extra_holds_every_user_extra():
    import tomllib

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    users = {req for name, reqs in extras.items() if name not in ("all", "dev") for req in reqs}
    assert users <= set(extras["all"]) and users <= set(extras["dev"])


def test_fit_quiet_prints_the_leaderboard_and_the_notes_only(tmp_path, capsys):
    bank = write_feature_bank(tmp_path / "bank.h5")  # 30 validation rows: a note says so
    assert main(["fit", str(bank.path), "--heads", "ridge", "--out", str(tmp_path / "r"),
                 "-q"]) == 0
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert lines and all(line.startswith("note: ") for line in lines)  # no bar, no head line
    assert any("the validation split has 30 rows" in line for line in lines)
    assert "fitting" not in captured.out
    assert "ridge" in captured.out and (tmp_path / "r" / "leaderboard.json").is_file()


def test_taps_lists_every_tap_with_its_shape(capsys):
    assert main(["taps", "resnet18", "--image-size", "64"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["tap", "layer", "where", "activation", "pool", "dim"]
    layer3 = next(line for line in out if line.startswith("layer3 "))
    assert layer3.split() == ["layer3", "Sequential", "output", "(256,", "4,", "4)", "avg",
                              "256"]
    assert any("runs 2 times: ambiguous" in line for line in out)


def test_help_and_version_do_not_import_torch():
    # the whole of torch took 10-12 s before the first line of --help
    code = ("import sys; from featurebank.cli import main\n"
            "for argv in (['--help'], ['--version']):\n"
            "    try: main(argv)\n"
            "    except SystemExit: pass\n"
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert "predict" in proc.stdout and "finetune" in proc.stdout and "featurebank 0" in \
        proc.stdout


def test_the_package_imports_from_the_folder_that_holds_a_clone(tmp_path):
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        distribution("featurebank")
    except PackageNotFoundError:
        pytest.skip("featurebank is not installed here (the tests run from PYTHONPATH): the "
                    "check is of README's install")
    (tmp_path / "featurebank").symlink_to(REPO, target_is_directory=True)  # a clone, named so
    env = {k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", "import featurebank; featurebank.FeatureBank; "
                           "print(featurebank.__file__)"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("featurebank/__init__.py")
