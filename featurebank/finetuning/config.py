"""The fine-tune's options: one frozen dataclass, the single list of them.

The command line's flags, the provenance record (``best_model.json``, the checkpoint's
``config``) and the settings a resumed run must share with the one it continues all derive
from :class:`FinetuneConfig`'s fields, so a new option is one field here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .._io import (NON_NEGATIVE_FLOAT, NON_NEGATIVE_INT, POSITIVE_FLOAT, POSITIVE_INT, Interval)
from .._options import Options
from .._options import option as _option

__all__ = ["FinetuneConfig"]

_OPTIMIZERS = ("adamw", "sgd")
KEEP = ("best", "last", "all")


@dataclass(frozen=True)
class FinetuneConfig(Options):
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
                                    "ones (off: they stay as at extraction)")
    seed: int = _option(0, "seed of the data order, augmentation and dropout",
                        check=NON_NEGATIVE_INT)
    checkpoint_every: int | None = _option(None, "also checkpoint every N steps (always at "
                                           "each epoch's end)",
                                           check=Interval(int, 1, None, none_ok=True),
                                           result=False, metavar="STEPS")
    calibrate: bool = _option(False, "fit a temperature to the final model on the validation "
                                     "split (by log loss): predict and export give calibrated "
                                     "probabilities; training is unchanged", result=False)
    handoff_samples: int = _option(512, "training images in the hand-off check",
                                   check=POSITIVE_INT, result=False, metavar="N")
    keep: str = _option("last", "what stays on disk at the end: best (best_model.pt only: "
                                "predict, export and report use it), last (also checkpoint.pt, "
                                "the full training state --resume continues from), all (also "
                                "checkpoint-epochNNN.pt of every epoch)", choices=KEEP,
                        result=False)
    workers: int = _option(min(8, os.cpu_count() or 1), "processes decoding image files "
                           "(folder banks) ahead of training", check=NON_NEGATIVE_INT,
                           result=False, metavar="N")
