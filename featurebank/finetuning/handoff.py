"""Before training: freeze a prefix of the backbone, and check the hand-off.

The assembled network (:func:`featurebank.network.graft`) must reproduce the head's predictions
on a sample of training images before any training: a changed weights file, moved or edited
data, or another preprocessing would otherwise be trained on silently.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from .._io import autocast
from ..bank import FeatureBank
from ..exceptions import FinetuneError
from ..heads.export import to_torch
from ..network import GraftedNetwork

__all__ = ["check_handoff", "freeze"]


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
                  images: Callable[[np.ndarray], torch.Tensor], *,
                  batch_size: int) -> tuple[float, float]:
    """Agreement of the assembled network with the head on the bank's train ``rows``.

    Returns ``(argmax agreement, median logit gap / the logits' spread)``; FinetuneError when
    the agreement is below 99% or the gap above 5% (the bank's float16 rounding is far below).
    """
    classes = np.asarray(est.classes_)
    dev = next(net.parameters()).device
    net.eval()
    with autocast(dev, bank.spec.amp(dev)):  # as the bank's rows were computed
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
