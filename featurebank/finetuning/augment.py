"""Device-side augmentation of uint8 image batches, drawn from an explicit generator."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["random_crop_flip"]


def random_crop_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random crop with zero padding (1/8 of the side: 4 px at 32 px) and horizontal flip of a
    uint8 ``(N, H, W, 3)`` batch, per image, on the batch's device.

    The draws come from ``gen`` (a CPU generator, kept in the fine-tune's checkpoint), so a
    resumed run augments exactly as an uninterrupted one.
    """
    n, h, w, _ = x.shape
    pad = max(1, h // 8)
    padded = nn.functional.pad(x, (0, 0, pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    flip = torch.rand(n, generator=gen) < 0.5
    # one gather: row r of image i comes from padded row oy[i] + r, column likewise (flipped)
    rows = (oy[:, None] + torch.arange(h)).to(x.device)
    cols = ox[:, None] + torch.arange(w)
    cols = torch.where(flip[:, None], cols.flip(1), cols).to(x.device)
    i = torch.arange(n, device=x.device)[:, None, None]
    return padded[i, rows[:, :, None], cols[:, None, :]]
