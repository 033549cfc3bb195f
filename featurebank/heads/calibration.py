"""Calibrated probabilities: one temperature fitted on held-out rows, and how to measure it.

Temperature scaling (Guo et al., 2017) divides a model's logits by one scalar ``T`` chosen to
minimise the log loss of held-out rows: predictions (the argmax) are unchanged, probabilities
become as confident as the model is right. It is what scikit-learn's
``CalibratedClassifierCV(FrozenEstimator(est), method="temperature")`` fits; here it is one
home for heads (:class:`TemperatureScaledClassifier`) and for fine-tuned networks
(:func:`fit_temperature` on their validation logits), and it keeps a head graftable.

The expected calibration error (:func:`reliability`) is the usual one: 15 equal-width bins of
the top-class confidence, the mean of ``|accuracy - confidence|`` weighted by bin size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from ..rows import chunks, is_streamed
from ._base import check_sample_weight, proba_from_scores

__all__ = ["Reliability", "TemperatureScaledClassifier", "calibrated_parts", "calibration_record",
           "fit_temperature", "head_logits", "reliability"]

N_BINS = 15
_LOG_T = (-7.0, 7.0)  # temperatures from 1e-3 to 1e3: past either end a model is degenerate


def _nll(logits: np.ndarray, y: np.ndarray, w: np.ndarray | None, t: float) -> float:
    """Weighted mean negative log-likelihood of ``logits / t`` (one column: a sigmoid)."""
    z = logits / t
    if z.ndim == 1:  # binary scores: log sigmoid(+-z)
        rows = np.logaddexp(0, np.where(y == 1, -z, z))
    else:
        rows = -log_softmax(z, axis=1)[np.arange(len(y)), y]
    return float(np.average(rows, weights=w))


def fit_temperature(logits, y, sample_weight=None) -> float:
    """The temperature ``T > 0`` minimising the log loss of ``softmax(logits / T)``.

    Parameters
    ----------
    logits : array-like of shape (n_samples, n_classes) or (n_samples,)
        Scores of held-out rows (one column: a binary model's score of class 1).
    y : array-like of shape (n_samples,)
        Class indices (columns of ``logits``; 0/1 for one column).
    sample_weight : array-like of shape (n_samples,), optional

    Returns
    -------
    float
        The log loss is convex in ``1/T``; it is minimised over ``log T`` in [-7, 7] to
        ``1e-8``.
    """
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    if len(y) == 0 or len(z) != len(y):
        raise ValueError(f"fit_temperature needs held-out rows: got {len(z)} logits and "
                         f"{len(y)} labels.")
    w = check_sample_weight(sample_weight, len(y))
    res = minimize_scalar(lambda u: _nll(z, y, w, float(np.exp(u))), bounds=_LOG_T,
                          method="bounded", options={"xatol": 1e-8})
    return float(np.exp(res.x))


def head_logits(estimator: Any, X) -> np.ndarray:
    """What a head's probabilities are the softmax (or sigmoid) of: ``decision_function``, or
    for heads with probabilities alone (k-NN) their logarithm. ``X`` may be streamed from a
    bank (read a chunk at a time)."""
    if is_streamed(X):
        return np.concatenate([head_logits(estimator, c) for _, c in chunks(X)])
    if hasattr(estimator, "decision_function"):
        return np.asarray(estimator.decision_function(X), dtype=np.float64)
    return np.log(np.clip(estimator.predict_proba(X), 1e-12, 1))


@dataclass(frozen=True)
class Reliability:
    """A reliability diagram's data: per confidence bin (15 equal-width bins of the top-class
    probability), the rows in it, their mean confidence and their accuracy; and the expected
    calibration error ``sum_b n_b / n |accuracy_b - confidence_b|``."""

    count: tuple[int, ...]
    confidence: tuple[float, ...]
    accuracy: tuple[float, ...]
    ece: float

    def to_json(self) -> dict[str, Any]:
        """As JSON; an empty bin's confidence and accuracy are null (JSON has no NaN)."""
        def nulls(values):
            return [None if np.isnan(v) else v for v in values]

        return {"count": list(self.count), "confidence": nulls(self.confidence),
                "accuracy": nulls(self.accuracy), "ece": self.ece}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Reliability:
        def nans(values):
            return tuple(float("nan") if v is None else float(v) for v in values)

        return cls(tuple(d["count"]), nans(d["confidence"]), nans(d["accuracy"]),
                   float(d["ece"]))


def reliability(proba, y, classes=None, n_bins: int = N_BINS) -> Reliability:
    """The :class:`Reliability` of probabilities ``(n, n_classes)`` against labels ``y``: the
    columns' ``classes`` (default: ``y`` holds column indices). Empty bins have count 0 and
    NaN confidence and accuracy."""
    proba, y = np.asarray(proba, dtype=np.float64), np.asarray(y)
    top = proba.argmax(1)
    conf, correct = proba.max(1), (top if classes is None else np.asarray(classes)[top]) == y
    b = np.minimum((conf * n_bins).astype(int), n_bins - 1)  # (0, 1/15], ... ; 1.0 in the last
    count = np.bincount(b, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(b, weights=conf, minlength=n_bins) / count
        acc = np.bincount(b, weights=correct, minlength=n_bins) / count
    gaps = np.where(count > 0, np.abs(acc - mean_conf), 0.0)
    return Reliability(tuple(int(c) for c in count), tuple(float(v) for v in mean_conf),
                       tuple(float(v) for v in acc), float((count * gaps).sum() / len(y)))


class TemperatureScaledClassifier(ClassifierMixin, BaseEstimator):
    """A fitted classifier whose probabilities are calibrated by one temperature.

    ``fit(X_val, y_val)`` leaves ``estimator`` as it is (it must be fitted already, on other
    rows) and fits ``temperature_`` on the held-out ``(X_val, y_val)`` by log loss
    (:func:`fit_temperature`); ``predict_proba`` is then the softmax of the estimator's logits
    divided by it. ``predict`` is the estimator's own: the argmax does not move.

    Parameters
    ----------
    estimator : fitted classifier
        A featurebank head, or any scikit-learn classifier with ``decision_function`` or
        ``predict_proba``.

    Attributes
    ----------
    temperature_ : float
    classes_ : ndarray
        The estimator's.
    """

    def __init__(self, estimator: Any):
        self.estimator = estimator

    def fit(self, X, y, sample_weight=None) -> TemperatureScaledClassifier:
        """Fit the temperature on held-out rows ``X``, ``y`` (labels as the estimator's)."""
        check_is_fitted(self.estimator)
        return self._fit_logits(head_logits(self.estimator, X), y, sample_weight)

    def _fit_logits(self, logits: np.ndarray, y, sample_weight=None
                    ) -> TemperatureScaledClassifier:
        """:meth:`fit` from the estimator's logits of the held-out rows, computed already."""
        classes = np.asarray(self.estimator.classes_)
        y = np.asarray(y)
        unknown = np.setdiff1d(y, classes)
        if len(unknown):
            raise ValueError(f"y holds labels {unknown[:5].tolist()} that the estimator was "
                             f"not fitted on (its classes {classes.tolist()[:10]}).")
        self.temperature_ = fit_temperature(logits, np.searchsorted(classes, y), sample_weight)
        self.classes_ = classes
        if hasattr(self.estimator, "n_features_in_"):
            self.n_features_in_ = self.estimator.n_features_in_
        return self

    def decision_function(self, X) -> np.ndarray:
        """The estimator's logits divided by the temperature."""
        check_is_fitted(self)
        return head_logits(self.estimator, X) / self.temperature_

    def predict_proba(self, X) -> np.ndarray:
        """Calibrated class probabilities, columns in ``classes_`` order."""
        return proba_from_scores(self.decision_function(X))

    def predict_log_proba(self, X) -> np.ndarray:
        return np.log(self.predict_proba(X))

    def predict(self, X) -> np.ndarray:
        """The estimator's predictions (a temperature does not change the argmax)."""
        check_is_fitted(self)
        return self.estimator.predict(X)


def calibrated_parts(estimator: Any) -> tuple[Any, float]:
    """``(the head itself, its temperature)``: 1.0 for a head without one."""
    if isinstance(estimator, TemperatureScaledClassifier):
        return estimator.estimator, float(estimator.temperature_)
    return estimator, 1.0


def calibration_record(splits: dict[str, tuple[np.ndarray, np.ndarray]],
                       temperature: float | None = None) -> dict[str, Any]:
    """A temperature (``temperature``, or fitted on ``splits["val"]``) and what it does on
    every split.

    ``splits`` maps a split's name to its ``(logits, class indices)``. Returns
    ``temperature`` and, per split, ``<split>_log_loss_before/after``,
    ``<split>_ece_before/after`` and ``<split>_reliability_before/after`` (the
    :class:`Reliability` as JSON): what ``fit --calibrate`` and ``finetune --calibrate``
    record, and ``featurebank report`` draws."""
    if temperature is None:
        temperature = fit_temperature(*splits["val"])
    record: dict[str, Any] = {"temperature": float(temperature)}
    for split, (z, y) in splits.items():
        z, y = np.asarray(z, dtype=np.float64), np.asarray(y, dtype=np.int64)
        for when, t in (("before", 1.0), ("after", record["temperature"])):
            proba = proba_from_scores(z / t)
            rel = reliability(proba, y)
            record[f"{split}_log_loss_{when}"] = float(
                -np.log(np.clip(proba[np.arange(len(y)), y], 1e-15, 1)).mean())
            record[f"{split}_ece_{when}"] = rel.ece
            record[f"{split}_reliability_{when}"] = rel.to_json()
    return record
