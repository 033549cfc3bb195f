"""Augmented views of a batch, as a bank stores them (:class:`~featurebank.records.ViewRecipe`).

View 0 is the mirror (the batch flipped left to right); views 1 to ``count`` are random, each
image's drawn from ``numpy.random.default_rng([seed, position, view])``: a function of the
image's source position alone, so a rerun, a resumed extraction and any split over ranks
give the same views. Small images (64 px or less) get the fine-tune's zero-pad-and-crop with a
flip (:func:`featurebank.finetuning.augment.crop_flip`); larger ones a random resized crop
(torchvision's ``RandomResizedCrop`` rule: 10 tries of an area in ``scale`` and an aspect in
``ratio``, else the centre crop) with a flip. Everything runs on the uint8 batch on its device.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch

from .finetuning.augment import crop_flip
from .records import ViewRecipe

__all__ = ["VIEW_RECIPES", "view_batches"]

VIEW_RECIPES = ("auto", "pad_crop_flip", "resized_crop_flip")  # ViewRecipe.kind, or auto


def view_batches(x: torch.Tensor, positions: np.ndarray, recipe: ViewRecipe,
                 split: str) -> Iterator[torch.Tensor]:
    """The uint8 ``(B, H, W, 3)`` batches of each view of ``x`` (images at source
    ``positions``), in the bank's view order for ``split``."""
    yield x.flip(2)
    for v in range(1, recipe.per_split(split)):
        rngs = [np.random.default_rng([recipe.seed, int(p), v]) for p in positions]
        yield (_pad_crop_flip(x, rngs) if recipe.kind == "pad_crop_flip"
               else _resized_crop_flip(x, rngs, recipe))


def _pad_crop_flip(x: torch.Tensor, rngs: list[np.random.Generator]) -> torch.Tensor:
    pad = max(1, x.shape[1] // 8)
    draws = np.array([[g.integers(0, 2 * pad + 1), g.integers(0, 2 * pad + 1), g.random() < 0.5]
                      for g in rngs], dtype=np.int64).reshape(-1, 3)
    return crop_flip(x, (torch.from_numpy(draws[:, 0]), torch.from_numpy(draws[:, 1]),
                         torch.from_numpy(draws[:, 2].astype(bool))))


def _box(g: np.random.Generator, h: int, w: int, scale, ratio) -> tuple[int, int, int, int]:
    """``(top, left, height, width)`` of a random resized crop (torchvision's rule)."""
    area = h * w
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * g.uniform(*scale)
        aspect = math.exp(g.uniform(*log_ratio))
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            return int(g.integers(0, h - ch + 1)), int(g.integers(0, w - cw + 1)), ch, cw
    aspect = w / h  # the centre crop, its aspect clamped to ratio
    cw, ch = ((w, round(w / ratio[0])) if aspect < ratio[0] else
              (round(h * ratio[1]), h) if aspect > ratio[1] else (w, h))
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def _resized_crop_flip(x: torch.Tensor, rngs: list[np.random.Generator],
                       recipe: ViewRecipe) -> torch.Tensor:
    n, h, w, _ = x.shape
    out = torch.empty_like(x)
    for i, g in enumerate(rngs):
        top, left, ch, cw = _box(g, h, w, recipe.scale, recipe.ratio)
        crop = x[i, top:top + ch, left:left + cw].permute(2, 0, 1)[None].float()
        image = torch.nn.functional.interpolate(crop, size=(h, w), mode="bilinear",
                                                antialias=True, align_corners=False)
        image = image[0].round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0)
        out[i] = image.flip(1) if g.random() < 0.5 else image
    return out
