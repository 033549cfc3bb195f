"""``to_torch``: a fitted head as an ``nn.Module`` from raw tap features to logits.

Works for the heads of this package (their own ``to_torch()``), for scikit-learn's linear
classifiers (``LogisticRegression``, ``LinearSVC``, ``RidgeClassifier``, ``SGDClassifier``, ...:
anything with ``coef_`` and ``intercept_``), and for a ``Pipeline`` of a ``StandardScaler`` and
one of those, the scaler folded into the linear layer.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import is_classifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted
from torch import nn

from ._base import affine_to_torch, fold_standardization
from .calibration import calibrated_parts

__all__ = ["is_graftable", "to_torch"]


def _split_pipeline(estimator: Any) -> tuple[list[Any], Any]:
    estimator = calibrated_parts(estimator)[0]  # a temperature changes no logit's argmax
    if isinstance(estimator, Pipeline):
        steps = [s for _, s in estimator.steps if s not in (None, "passthrough")]
        return steps[:-1], steps[-1]
    return [], estimator


def is_graftable(estimator: Any) -> bool:
    """Whether :func:`to_torch` can turn ``estimator`` into a network."""
    pre, final = _split_pipeline(estimator)
    if not all(isinstance(s, StandardScaler) for s in pre):
        return False
    # a linear classifier: scikit-learn's have coef_ and intercept_ once fitted
    return hasattr(final, "to_torch") or (is_classifier(final) and hasattr(final, "coef_")
                                          and hasattr(final, "intercept_"))


def to_torch(estimator: Any) -> nn.Module:
    """A fitted head as an ``nn.Module`` mapping raw features to logits.

    ``to_torch(head)(x).argmax(1)`` equals the index of ``head.predict(x)`` in ``classes_``, and
    for linear heads the logits equal ``decision_function`` (binary heads give the two logits
    ``(0, s)``). A :class:`TemperatureScaledClassifier` gives its estimator's logits, before
    the temperature.

    Parameters
    ----------
    estimator : fitted estimator
        A featurebank head, a scikit-learn linear classifier, or a ``Pipeline`` of
        ``StandardScaler`` steps followed by one of those.

    Returns
    -------
    torch.nn.Module
    """
    pre, final = _split_pipeline(estimator)
    if not is_graftable(estimator):
        raise TypeError(
            f"cannot turn {type(estimator).__name__} into a torch module: expected a featurebank "
            f"head, a scikit-learn linear classifier (coef_, intercept_), or a Pipeline of "
            f"StandardScaler steps and one of those; got steps "
            f"{[type(s).__name__ for s in [*pre, final]]}.")
    check_is_fitted(final)
    if hasattr(final, "to_torch"):
        module = final.to_torch()
        first = next(m for m in module.modules() if isinstance(m, nn.Linear))
        W, b = first.weight.detach().double().numpy(), first.bias.detach().double().numpy()
    else:
        module = None
        W = np.atleast_2d(np.asarray(final.coef_, dtype=np.float64))
        b = np.broadcast_to(np.asarray(final.intercept_, dtype=np.float64), (W.shape[0],))
    # fold scalers, last first: x' = (x - mean) / scale  =>  W x' + b = (W / scale) x + b'
    for scaler in reversed(pre):
        check_is_fitted(scaler)
        W, b = fold_standardization(W, b, scaler.mean_ if scaler.with_mean else 0.0,
                                     scaler.scale_ if scaler.with_std else 1.0)
    if module is None:
        return affine_to_torch(W, b)
    if pre:
        first.weight.data.copy_(first.weight.new_tensor(W))
        first.bias.data.copy_(first.bias.new_tensor(b))
    return module
