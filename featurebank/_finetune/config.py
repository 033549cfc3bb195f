"""The fine-tune's options: one frozen dataclass, the single list of them.

The command line's flags, the provenance record (``best_model.json``, the checkpoint's
``config``) and the settings a resumed run must share with the one it continues all derive
from :class:`FinetuneConfig`'s fields, so a new option is one field here.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

from .._io import (NON_NEGATIVE_FLOAT, NON_NEGATIVE_INT, POSITIVE_FLOAT, POSITIVE_INT, Interval,
                   check_choice)

__all__ = ["FinetuneConfig"]

_OPTIMIZERS = ("adamw", "sgd")


def _option(default: Any, help: str, *, check: Interval | None = None,
            choices: tuple[str, ...] | None = None, result: bool = True,
            metavar: str | None = None) -> Any:
    """A field with what the CLI and the checks need: ``result`` options change what a run
    computes, so a resumed run must use the values it started with."""
    return field(default=default, metadata={"help": help, "check": check, "choices": choices,
                                            "result": result, "metavar": metavar})


@dataclass(frozen=True)
class FinetuneConfig:
    """Settings of an end-to-end fine-tune (see :func:`featurebank.finetune`).

    Every value is checked when the config is made: an out-of-range one raises
    :class:`~featurebank.ParameterError` naming it.
    """

    epochs: int = _option(10, "epochs to train", check=POSITIVE_INT)
    batch_size: int = _option(64, "images per training step", check=POSITIVE_INT)
    lr: float = _option(1e-3, "learning rate of the head", check=POSITIVE_FLOAT)
    backbone_lr_ratio: float = _option(0.1, "backbone learning rate = lr x this",
                                       check=NON_NEGATIVE_FLOAT)
    optimizer: str = _option("adamw", "optimizer (SGD: Nesterov momentum)", choices=_OPTIMIZERS)
    weight_decay: float = _option(1e-4, "weight decay", check=NON_NEGATIVE_FLOAT)
    momentum: float = _option(0.9, "SGD momentum", check=Interval(float, 0, 1, closed="left"))
    warmup_epochs: float = _option(1.0, "linear warm-up (epochs), then cosine decay to zero",
                                   check=NON_NEGATIVE_FLOAT)
    freeze_until: str | None = _option(None, "freeze the backbone's parameters up to and "
                                       "including this module (e.g. features.18)",
                                       metavar="MODULE")
    clip_grad_norm: float | None = _option(1.0, "gradient clipping norm (0 or none: off)",
                                           check=Interval(float, 0, None, none_ok=True))
    patience: int = _option(3, "early-stopping patience (epochs without a better validation "
                               "loss)", check=POSITIVE_INT)
    augment: bool = _option(True, "random crop (zero padding 1/8 of the side) and horizontal "
                                  "flip, on the device")
    train_bn: bool = _option(False, "let BatchNorm use batch statistics and update its running "
                                    "ones (default: kept as at extraction)")
    seed: int = _option(0, "seed of the data order, augmentation and dropout",
                        check=NON_NEGATIVE_INT)
    checkpoint_every: int | None = _option(None, "also checkpoint every N steps (always at "
                                           "each epoch's end)",
                                           check=Interval(int, 1, None, none_ok=True),
                                           result=False, metavar="STEPS")
    handoff_samples: int = _option(512, "training images in the hand-off check",
                                   check=POSITIVE_INT, result=False, metavar="N")
    workers: int = _option(min(8, os.cpu_count() or 1), "processes decoding image files "
                           "(folder banks) ahead of training", check=NON_NEGATIVE_INT,
                           result=False, metavar="N")

    def __post_init__(self) -> None:
        for f in fields(self):
            value, meta = getattr(self, f.name), f.metadata
            if meta["check"] is not None:
                object.__setattr__(self, f.name, meta["check"].check(f.name, value))
            elif meta["choices"] is not None:
                check_choice(f.name, value, meta["choices"])
            elif f.type == "bool" and not isinstance(value, bool):
                check_choice(f.name, value, [True, False])

    @classmethod
    def result_keys(cls) -> tuple[str, ...]:
        """Options a resumed run must share with the run it continues."""
        return tuple(f.name for f in fields(cls) if f.metadata["result"])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """One flag per field (``--batch-size``, ``--augment/--no-augment``), values checked
        with the same messages as the Python API (use ``ArgumentDefaultsHelpFormatter`` to
        show the defaults)."""
        for f in fields(cls):
            meta, flag = f.metadata, f"--{f.name.replace('_', '-')}"
            default = f.default if f.default is not MISSING else None
            kwargs: dict[str, Any] = {"default": default, "dest": f.name, "help": meta["help"]}
            if f.type == "bool":
                kwargs["action"] = argparse.BooleanOptionalAction
            elif meta["choices"]:
                kwargs["choices"] = meta["choices"]
            else:
                kwargs["type"] = meta["check"].parse if meta["check"] else str
                kwargs["metavar"] = meta["metavar"] or ("N" if "int" in f.type else "X")
            parser.add_argument(flag, **kwargs)

    @classmethod
    def from_namespace(cls, args: argparse.Namespace) -> FinetuneConfig:
        """The config of parsed command-line arguments (those of :meth:`add_arguments`)."""
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})
