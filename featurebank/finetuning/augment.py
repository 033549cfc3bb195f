"""Device-side augmentation of uint8 image batches, drawn from an explicit generator.

The draws (:func:`draw_crop_flip`) are separate from their application (:func:`crop_flip`), so
that under torchrun every rank draws for the whole global batch, from the same generator, and
applies the draws of its own slice: each image is augmented as one process would augment it,
whatever the rank count.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["CropFlip", "crop_flip", "draw_crop_flip", "random_crop_flip"]

# per image: row offset, column offset (into the zero-padded image) and whether to flip
CropFlip = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _pad(side: int) -> int:
    return max(1, side // 8)


def draw_crop_flip(n: int, side: int, gen: torch.Generator) -> CropFlip:
    """The draws of :func:`random_crop_flip` for ``n`` images of ``side`` pixels."""
    pad = _pad(side)
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    return oy, ox, torch.rand(n, generator=gen) < 0.5


def crop_flip(x: torch.Tensor, draws: CropFlip) -> torch.Tensor:
    """Apply one draw per image of a uint8 ``(N, H, W, 3)`` batch, on the batch's device."""
    n, h, w, _ = x.shape
    pad = _pad(h)
    oy, ox, flip = draws
    padded = nn.functional.pad(x, (0, 0, pad, pad, pad, pad))
    # one gather: row r of image i comes from padded row oy[i] + r, column likewise (flipped)
    rows = (oy[:, None] + torch.arange(h)).to(x.device)
    cols = ox[:, None] + torch.arange(w)
    cols = torch.where(flip[:, None], cols.flip(1), cols).to(x.device)
    i = torch.arange(n, device=x.device)[:, None, None]
    return padded[i, rows[:, :, None], cols[:, None, :]]


def random_crop_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random crop with zero padding (1/8 of the side: 4 px at 32 px) and horizontal flip of a
    uint8 ``(N, H, W, 3)`` batch, per image, on the batch's device.

    The draws come from ``gen`` (a CPU generator, kept in the fine-tune's checkpoint), so a
    resumed run augments exactly as an uninterrupted one.
    """
    return crop_flip(x, draw_crop_flip(len(x), x.shape[1], gen))
