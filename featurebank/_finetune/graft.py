"""The grafted network: the bank's backbone up to the head's tap, then the head as a module.

The head is ``to_torch(head)`` behind a fixed standardisation layer built from the head's own
stored statistics, and the assembled network must reproduce the head's predictions on a sample
of training images (the hand-off check) before any training.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from ..backbones import WeightsId, get_backbone
from ..bank import FeatureBank
from ..exceptions import FinetuneError
from ..heads.export import to_torch

__all__ = ["GraftedNetwork", "build_network", "check_handoff", "describe_head", "freeze",
           "head_from_description", "trainable_head"]


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


def build_network(bank: FeatureBank, est: Any, tap: str) -> GraftedNetwork:
    """The bank's backbone rebuilt from its spec (same weights) as a plain module up to the
    head's tap, grafted with the head."""
    spec = bank.spec
    weights = WeightsId.parse(spec["weights"]).rebuild_argument(spec.get("weights_path"))
    backbone = get_backbone(spec["model"], weights=weights, taps=tap.split("+"))
    return GraftedNetwork(backbone.tap_network(spec["tap_layers"]), trainable_head(est), tap)


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


def freeze(backbone: nn.Module, freeze_until: str | None) -> None:
    """Freeze the backbone's parameters up to and including the module ``freeze_until``."""
    if not freeze_until:
        return
    names = [n for n, _ in backbone.model.named_parameters()]
    inside = [i for i, n in enumerate(names) if n.startswith(f"{freeze_until}.")]
    if not inside:
        modules = sorted({n.rsplit(".", 1)[0] for n in names})
        raise FinetuneError(f"freeze_until={freeze_until!r} names no module with parameters "
                            f"(--freeze-until); expected one of {modules[:12]}"
                            f"{' ...' if len(modules) > 12 else ''}.")
    for i, (_, p) in enumerate(backbone.model.named_parameters()):
        if i <= inside[-1]:
            p.requires_grad_(False)


@torch.no_grad()
def check_handoff(net: GraftedNetwork, est: Any, bank: FeatureBank, rows: np.ndarray,
                  images: Callable[[np.ndarray], torch.Tensor], *, batch_size: int,
                  amp: torch.dtype | None) -> tuple[float, float]:
    """Agreement of the assembled network with the head on the bank's train ``rows``.

    Returns ``(argmax agreement, median logit gap / the logits' spread)``; FinetuneError when
    the agreement is below 99% or the gap above 5% (the bank's float16 rounding is far below).
    """
    classes = np.asarray(est.classes_)
    dev = next(net.parameters()).device
    net.eval()
    with torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
        net_logits = torch.cat([net(images(rows[i:i + batch_size])).float().cpu()
                                for i in range(0, len(rows), batch_size)])
    feats = bank.rows("train", net.tap, rows)
    head_pred = np.searchsorted(classes, est.predict(feats))
    head_logits = to_torch(est)(torch.from_numpy(feats))
    agreement = float((net_logits.argmax(1).numpy() == head_pred).mean())
    gap = float((net_logits - head_logits).abs().median() / head_logits.std().clamp(min=1e-6))
    if agreement < 0.99 or gap > 0.05:
        raise FinetuneError(
            f"the rebuilt network agrees with the head on only {agreement:.1%} of {len(rows)} "
            f"images (median logit gap {gap:.1%}; at least 99% agreement and at most 5% gap "
            f"expected): the weights, images or preprocessing differ from the extraction (a "
            f"changed weights file, moved or edited data?).")
    return agreement, gap
