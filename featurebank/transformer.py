"""BackboneTransformer: a frozen backbone as a scikit-learn transformer, images -> features.

``transform`` runs :func:`featurebank.extract` on the images and keeps the result as a feature
bank in ``cache_dir``, named by a hash of the images and of the backbone settings. Calling
``fit``/``transform`` again on the same images (a second ``Pipeline.fit``, a grid search, a
refit) reads that bank instead of running the network again.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from .bank import FeatureBank
from .data import check_images, from_arrays
from .exceptions import DataError

__all__ = ["BackboneTransformer"]


class BackboneTransformer(TransformerMixin, BaseEstimator):
    """Images ``(N, H, W, 3)`` uint8 to the features of one backbone tap, cached on disk.

    Parameters
    ----------
    model : str, default="vgg19"
    weights : str or path-like, default="DEFAULT"
        As in :func:`featurebank.extract`.
    tap : str, optional
        Default: ``fc7`` for VGG, else ``penultimate``.
    image_size : int, default=224
    batch_size : int, optional
    device : {"auto", "cpu", "cuda"}, default="auto"
    dtype : {"float32", "float16"}, default="float32"
        Storage dtype of the cached features (returned as float32).
    cache_dir : path-like, default="featurebank_cache"
        Where the feature banks of transformed image sets are kept.

    Attributes
    ----------
    image_shape_ : tuple
        ``(H, W, 3)`` of the images seen in ``fit``.
    n_features_out_ : int
        Set by the first ``transform``.
    last_bank_ : FeatureBank
        The bank the last ``transform`` read.

    Notes
    -----
    Inputs are images, not 2-D feature arrays, so scikit-learn's generic estimator checks (which
    feed 2-D float data) do not apply to this class.
    """

    def __init__(self, model: str = "vgg19", *, weights: str | os.PathLike = "DEFAULT",
                 tap: str | None = None, image_size: int = 224, batch_size: int | None = None,
                 device: str = "auto", dtype: str = "float32",
                 cache_dir: str | os.PathLike = "featurebank_cache"):
        self.model = model
        self.weights = weights
        self.tap = tap
        self.image_size = image_size
        self.batch_size = batch_size
        self.device = device
        self.dtype = dtype
        self.cache_dir = cache_dir

    def fit(self, X, y=None) -> BackboneTransformer:
        """Check the images; the backbone is frozen, so there is nothing to learn."""
        self.image_shape_ = tuple(check_images(X, "X").shape[1:])
        return self

    def _cache_path(self, images: np.ndarray) -> Path:
        h = hashlib.sha256()
        h.update(repr(images.shape).encode())
        h.update(memoryview(np.ascontiguousarray(images)).cast("B"))
        w = str(self.weights)
        if Path(w).is_file():  # a local file: its size and time stand for its content
            st = Path(w).stat()
            w = f"{Path(w).resolve()}:{st.st_size}:{st.st_mtime_ns}"
        settings = {"model": self.model, "weights": w, "tap": self.tap,
                    "image_size": self.image_size, "dtype": self.dtype}
        h.update(json.dumps(settings, sort_keys=True).encode())
        return Path(self.cache_dir) / f"{h.hexdigest()[:32]}.h5"

    def transform(self, X) -> np.ndarray:
        """Features ``(N, D)`` float32 of the images, from the cache when they were seen."""
        from .extraction import extract

        check_is_fitted(self)
        images = check_images(X, "X")
        if images.shape[1:] != self.image_shape_:
            raise DataError(f"X has images of shape {images.shape[1:]}, but "
                            f"{type(self).__name__} was fitted on {self.image_shape_}.")
        path = self._cache_path(images)
        if path.exists():
            bank = FeatureBank(path)
        else:
            bank = extract(from_arrays(images), model=self.model, weights=self.weights,
                           taps=self.tap, image_size=self.image_size,
                           batch_size=self.batch_size, device=self.device, dtype=self.dtype,
                           out=path, progress=False)
        self.last_bank_ = bank
        X_out, _ = bank.load("train", bank.taps[0])
        self.n_features_out_ = X_out.shape[1]
        return X_out

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        """``<tap>_0``, ``<tap>_1``, ... (after the first ``transform``)."""
        check_is_fitted(self, "n_features_out_")
        tap = self.last_bank_.taps[0]
        return np.array([f"{tap}_{i}" for i in range(self.n_features_out_)], dtype=object)
