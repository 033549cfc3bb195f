"""Fine-tune checkpoints: everything a run needs to continue, written atomically.

A checkpoint is ``torch.save`` of a dict of tensors and plain values (loadable with
``weights_only=True``): the config, model, optimizer, scheduler, grad scaler, augmentation
generator, the loop's state (epoch, step, best, stale, history, the epoch's data order) and
the python / numpy / torch / CUDA RNG states.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._io import atomic_write, versions
from ..exceptions import FinetuneError

__all__ = ["checkpoint_record", "load_checkpoint", "rng_state", "save", "set_rng_state"]


def rng_state() -> dict[str, Any]:
    """Every global RNG's state, as tensors and plain values (``weights_only`` loadable)."""
    np_state = np.random.get_state()
    return {"python": random.getstate(), "torch": torch.random.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)),
                      *np_state[2:]]}


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` recorded."""
    random.setstate(state["python"])
    torch.random.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))


def save(obj: Any, path: Path) -> None:
    """``torch.save`` all or nothing (temporary file, fsync, rename)."""
    atomic_write(path, lambda f: torch.save(obj, f))


def checkpoint_record(config: dict[str, Any], trainer_state: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint of a run: its config, the trainer's state, every RNG, the versions."""
    return {"config": config, **trainer_state, "rng": rng_state(), "versions": versions()}


def load_checkpoint(path: Path, config: dict[str, Any],
                    result_keys: tuple[str, ...]) -> dict[str, Any]:
    """The checkpoint at ``path``, refused when damaged or made with other ``result_keys``."""
    if not path.is_file():
        raise FinetuneError(f"resume=True but there is no checkpoint {str(path)!r}; start "
                            f"without --resume.")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        saved = ckpt["config"]
    except Exception as e:
        raise FinetuneError(f"checkpoint {str(path)!r} is damaged ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''}); delete it to start "
                            f"over.") from None
    diff = {k: (saved.get(k), config.get(k)) for k in result_keys if saved.get(k) != config.get(k)}
    if diff:
        detail = "; ".join(f"{k}: checkpoint {a!r}, now {b!r}" for k, (a, b) in diff.items())
        raise FinetuneError(f"checkpoint {str(path)!r} belongs to another fine-tune ({detail}); "
                            f"resume with the same bank, head and settings, or use another out=.")
    return ckpt
