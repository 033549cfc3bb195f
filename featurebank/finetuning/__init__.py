"""Fine-tune from the best head: graft it onto the backbone at its tap, train end to end.

``api.finetune`` is the straight line; ``config`` holds the options (one dataclass),
``handoff`` the frozen prefix and the hand-off check (the grafted network itself is
:mod:`featurebank.network`'s), ``loop`` the trainer and its callbacks,
``checkpoint`` what a run saves to continue exactly, ``augment`` the device-side augmentation.
Names are imported on first use: ``config`` alone (the command line's options) needs no torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["Callback", "FinetuneConfig", "GraftedNetwork", "Trainer", "finetune"]

_EXPORTS = {"finetune": ".api", "FinetuneConfig": ".config", "GraftedNetwork": "..network",
            "Callback": ".loop", "Trainer": ".loop"}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value
