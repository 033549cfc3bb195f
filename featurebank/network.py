"""The grafted network: a bank's backbone up to a head's tap, then the head as a module.

One home for what the fine-tune trains and what the predictor and export run: the head is
``to_torch(head)`` behind a fixed standardisation layer built from the head's own stored
statistics (:func:`trainable_head`), and its layers are recorded as data
(:func:`describe_head`) so that a fine-tuned network is rebuilt without the head file
(:func:`load_finetuned`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from .exceptions import FinetuneError
from .heads.calibration import calibrated_parts
from .heads.export import to_torch
from .records import BankSpec, TapSelection

if TYPE_CHECKING:
    from .artefacts import BestModel

__all__ = ["GraftedNetwork", "describe_head", "graft", "head_from_description",
           "load_finetuned", "trainable_head"]


class GraftedNetwork(nn.Module):
    """The backbone up to its tap, followed by a head as a torch module: images -> logits.

    A plain module (the backbone is a :class:`~featurebank.TapNetwork`, truncated with FX),
    so ``torch.export``, TorchScript and ONNX work on it.

    Parameters
    ----------
    backbone : nn.Module
        Normalised ``(N, 3, S, S)`` images -> ``(N, D)`` tap features.
    head : nn.Module
        ``(N, D)`` features -> logits.
    tap : str
        The tap the head was fitted on (``"fc7"``, or ``"fc6+fc7"`` for concatenated taps).
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, tap: str):
        super().__init__()
        self.backbone, self.head, self.tap = backbone, head, tap

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised ``(N, 3, S, S)`` input (``backbone.preprocess``) to logits."""
        return self.head(self.backbone(x).float())


class _Standardize(nn.Module):
    """Fixed ``(x - mean) / scale`` of the tap's features (buffers, not trained)."""

    def __init__(self, mean: np.ndarray, scale: np.ndarray):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.scale


def _head_standardization(est: Any, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """The standardisation a fitted head applies before its first layer, as one
    ``(x - mean) / scale``: its pipeline's StandardScalers, then its own ``mean_``/``scale_``
    (LogisticHead, MLPHead), composed."""
    est = calibrated_parts(est)[0]
    steps = [s for _, s in est.steps] if isinstance(est, Pipeline) else [est]
    mean, scale = np.zeros(dim), np.ones(dim)
    for step in steps:
        if isinstance(step, StandardScaler):
            m = step.mean_ if step.with_mean else 0.0
            s = step.scale_ if step.with_std else 1.0
        elif hasattr(step, "mean_") and hasattr(step, "scale_"):
            m, s = step.mean_, step.scale_
        else:
            continue
        # ((x - mean) / scale - m) / s == (x - (mean + scale * m)) / (scale * s)
        mean, scale = mean + scale * np.asarray(m, float), scale * np.asarray(s, float)
    return mean, scale


def trainable_head(est: Any) -> nn.Module:
    """``to_torch(head)`` with its first linear layer moved to standardised coordinates.

    ``to_torch`` folds the standardisation into the first layer, so its weights are ``W / scale``:
    fine for inference, but gradient steps on them are badly scaled (features with a small spread
    get huge weights). Training the same function as ``Standardize -> Linear(W, b')`` keeps the
    steps in the coordinates the head was fitted in. The function is unchanged.
    """
    module = to_torch(est)
    first = next(m for m in module.modules() if isinstance(m, nn.Linear))
    mean, scale = _head_standardization(est, first.in_features)
    with torch.no_grad():
        W = first.weight.double()
        first.bias.copy_(first.bias.double() + W @ torch.from_numpy(mean))
        first.weight.copy_(W * torch.from_numpy(scale))
    return nn.Sequential(_Standardize(mean, scale), module)


def graft(spec: BankSpec, est: Any, tap: str) -> GraftedNetwork:
    """The backbone of a bank's ``spec`` (its own weights) as a plain module up to the head's
    ``tap``, grafted with the fitted head ``est`` (:func:`trainable_head`)."""
    backbone = spec.rebuild_backbone(tap)
    return GraftedNetwork(backbone, trainable_head(est), str(TapSelection.parse(tap)))


def load_finetuned(best: BestModel) -> GraftedNetwork:
    """The network a fine-tune saved (``best_model.pt``, verified against its record), with no
    init and no download: the backbone's architecture on the meta device holding the saved
    tensors, the head rebuilt from its recorded layers."""
    from .artefacts import load_best_weights

    if best.head_module is None:
        raise FinetuneError(f"{str(best.folder)!r} was written by an older featurebank that did "
                            f"not record the head's layers; fine-tune again to use it.")
    state = load_best_weights(best)
    backbone = best.spec.rebuild_backbone(best.tap, state_dict=state)
    head = head_from_description(best.head_module)
    head.load_state_dict({k[len("head."):]: v for k, v in state.items() if k.startswith("head.")})
    return GraftedNetwork(backbone, head, best.tap)


_LAYERS = {"Linear": lambda d: nn.Linear(d["in"], d["out"]),
           "Standardize": lambda d: _Standardize(np.zeros(d["dim"]), np.ones(d["dim"])),
           "ReLU": lambda d: nn.ReLU(), "GELU": lambda d: nn.GELU(), "Tanh": lambda d: nn.Tanh(),
           "Identity": lambda d: nn.Identity()}


def describe_head(module: nn.Module) -> dict[str, Any]:
    """The architecture of a head module as JSON-able data (no weights), for
    :func:`head_from_description`; ``best_model.json`` keeps it, so a fine-tuned network can be
    rebuilt without the head file."""
    if isinstance(module, nn.Sequential):
        return {"type": "Sequential", "children": [describe_head(m) for m in module]}
    if isinstance(module, nn.Linear):
        return {"type": "Linear", "in": module.in_features, "out": module.out_features}
    if isinstance(module, _Standardize):
        return {"type": "Standardize", "dim": int(module.mean.numel())}
    if type(module).__name__ in _LAYERS:
        return {"type": type(module).__name__}
    raise FinetuneError(f"cannot describe head layer {type(module).__name__}; expected "
                        f"{sorted(_LAYERS)} in Sequentials.")


def head_from_description(desc: dict[str, Any]) -> nn.Module:
    """The head module :func:`describe_head` described, with placeholder weights: load a
    state_dict into it."""
    if desc["type"] == "Sequential":
        return nn.Sequential(*(head_from_description(d) for d in desc["children"]))
    return _LAYERS[desc["type"]](desc)
