"""Options records: ExtractConfig and FinetuneConfig, their checks, flags and provenance."""

from dataclasses import fields

import pytest

from featurebank import FinetuneConfig, ParameterError, extract
from featurebank.cli import COMMANDS, main
from featurebank.extraction import ExtractConfig


def test_extract_config_checks_every_value_as_the_cli_does(capsys):
    for f in fields(ExtractConfig):
        interval = f.metadata["check"]
        if interval is None:
            continue
        value = interval.low - 1
        with pytest.raises(ParameterError, match=rf"the '{f.name}' parameter must be "):
            ExtractConfig(**{f.name: value})
    with pytest.raises(ParameterError, match=r"the 'dtype' parameter must be one of"):
        ExtractConfig(dtype="float64")
    with pytest.raises(ParameterError, match=r"the 'skip_bad' parameter must be one of"):
        ExtractConfig(skip_bad="yes")
    assert ExtractConfig(batch_size=None).batch_size is None  # None: per device, later
    assert {"model", "weights", "taps", "image_size", "dtype", "decode"} <= set(
        ExtractConfig.result_keys())
    assert "batch_size" not in ExtractConfig.result_keys()
    with pytest.raises(SystemExit):
        main(["extract", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for f in fields(ExtractConfig):  # one flag per field, its help and default from the field
        flags = f.metadata["flags"] or (f"--{f.name.replace('_', '-')}",)
        assert all(flag in out for flag in flags), f.name
    assert "square input size in pixels (default: 224)" in out
    assert "--skip-bad, --no-skip-bad" in out


def test_unknown_options_name_the_known_ones():
    with pytest.raises(TypeError, match=r"extract\(\) got unexpected keyword arguments "
                                        r"\['modle'\]; its options are \["):
        extract("cifar10", modle="vgg19")
    with pytest.raises(TypeError, match=r"finetune\(\) got unexpected keyword arguments"):
        FinetuneConfig.merged(None, {"epoch": 3}, "finetune")
    assert FinetuneConfig.merged(FinetuneConfig(lr=0.5), {"epochs": 2}, "finetune") == \
        FinetuneConfig(lr=0.5, epochs=2)


def test_every_command_says_what_an_interrupt_leaves(monkeypatch, capsys):
    from dataclasses import replace

    import featurebank.cli as cli

    def interrupt(args):
        raise KeyboardInterrupt

    argv = {"run": ["cifar10"], "extract": [], "info": ["b.h5"], "fit": ["b.h5"], "finetune": ["--bank", "b",
            "--runs", "r"], "predict": ["m", "i.png"], "export": ["m", "--out", "x"],
            "report": ["r"], "taps": ["resnet18"], "merge": ["b.h5"],
            "suite": ["--models", "resnet18", "--datasets", "cifar10"]}
    assert set(argv) == set(COMMANDS)  # a new command must be added here too
    for name, command in COMMANDS.items():
        monkeypatch.setitem(cli.COMMANDS, name, replace(command, run=interrupt))
        assert main([name, *argv[name]]) == 130
        err = capsys.readouterr().err
        assert f"featurebank {name}: interrupted; " in err and len(err.split("; ", 1)[1]) > 10
