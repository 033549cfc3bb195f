"""What every head shares: input checks, the standardisation statistics, linear prediction,
probabilities, and the export of affine layers to torch."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.utils.extmath import softmax
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import nn

from .._io import as_float32
from ..exceptions import ParameterError
from ..rows import StreamedRows


def check_classes(y: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """``classes_`` and integer targets; refuses a single class with a clear message."""
    check_classification_targets(y)  # "Unknown label type" for continuous targets
    classes, y_idx = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        raise ValueError(
            f"{name} needs samples of at least 2 classes in the data, but the data contain only "
            f"one class: {classes[0].item()!r}.")
    return classes, y_idx.astype(np.int64)


def check_sample_weight(sample_weight, n: int) -> np.ndarray | None:
    """``sample_weight`` as a float64 ``(n,)`` array (a scalar: every row that weight), or None;
    ValueError naming the problem for a wrong shape, negative or non-finite weights, or weights
    that are all zero."""
    if sample_weight is None:
        return None
    sw = np.asarray(sample_weight, dtype=np.float64)
    sw = np.full(n, float(sw)) if sw.ndim == 0 else sw
    if sw.shape != (n,):
        raise ValueError(f"sample_weight must have shape ({n},), one weight per row of X; got "
                         f"shape {sw.shape}.")
    if not np.isfinite(sw).all() or (sw < 0).any():
        raise ValueError("sample_weight must hold finite, non-negative numbers; got "
                         f"{'negative' if (sw < 0).any() else 'NaN or infinite'} values.")
    if not sw.any():
        raise ValueError("sample_weight must contain at least one non-zero weight; all the "
                         f"{n} weights are zero.")
    return sw.copy()


def check_class_weight(class_weight):
    """``class_weight`` if it is None, ``"balanced"`` or a dict; else ParameterError."""
    if class_weight is None or class_weight == "balanced" or isinstance(class_weight, dict):
        return class_weight
    raise ParameterError(f"class_weight must be None, 'balanced' or a dict of class weights; "
                         f"got {class_weight!r}.")


def class_weight_vector(class_weight, classes: np.ndarray, y_idx: np.ndarray,
                        sample_weight: np.ndarray | None) -> np.ndarray | None:
    """One weight per class of ``classes``, with scikit-learn's meanings: ``"balanced"`` is
    ``sum(w) / (n_classes * w_c)`` (``w_c`` the class's summed sample weights: its row count
    without them), a dict maps class labels to weights (others 1); None: no class weights."""
    if check_class_weight(class_weight) is None:
        return None
    if class_weight == "balanced":
        counts = np.bincount(y_idx, weights=sample_weight, minlength=len(classes))
        with np.errstate(divide="ignore"):
            return np.where(counts > 0, counts.sum() / (len(classes) * counts), 0.0)
    known = {c.item() if hasattr(c, "item") else c for c in classes}
    unknown = [c for c in class_weight if c not in known]
    if unknown:
        raise ParameterError(f"class_weight names classes {unknown} that are not in y "
                             f"(classes {sorted(known, key=str)}).")
    weights = np.array([float(class_weight.get(c.item() if hasattr(c, "item") else c, 1.0))
                        for c in classes])
    if not np.isfinite(weights).all() or (weights < 0).any():
        raise ParameterError(f"class_weight values must be finite and non-negative; got "
                             f"{class_weight!r}.")
    return weights


def row_weights(sample_weight, class_weight, classes: np.ndarray, y_idx: np.ndarray
                ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """``(sample weights, loss weights)`` per row: the checked ``sample_weight`` (what the
    standardisation weighs, as a ``StandardScaler`` given them would), and those times the class
    weights (what the loss weighs, as scikit-learn's classifiers fold ``class_weight`` into
    ``sample_weight``). None where all are 1."""
    sw = check_sample_weight(sample_weight, len(y_idx))
    cw = class_weight_vector(class_weight, classes, y_idx, sw)
    loss_w = sw if cw is None else (np.ones(len(y_idx)) if sw is None else sw) * cw[y_idx]
    if loss_w is not None and not loss_w.any():
        raise ValueError("the class weights times sample_weight are zero on every row; give "
                         "some row of a class with a non-zero class_weight a positive weight.")
    return sw, loss_w


def blockwise_mean_scale(blocks, weights: np.ndarray | None = None
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Mean and scale over row blocks (numpy arrays or torch tensors on any device), each row
    weighted by ``weights`` (aligned with the blocks' rows in order) when given, as scikit-
    learn's ``StandardScaler.fit(X, sample_weight=)`` weighs them.

    Within a block, its mean and centred sum of squares in float32 (cache-sized, so the
    block is read from memory once); across blocks, Chan et al.'s exact pairwise update in
    float64. No full-size or float64 copy is ever made, and there is no cancellation from
    ``E[x^2] - E[x]^2``. A constant feature gets scale 1, as in scikit-learn's StandardScaler.
    """
    n, mean, m2, offset = 0.0, 0.0, 0.0, 0
    for block in blocks:
        if isinstance(block, torch.Tensor):
            parts = [block.float()]
        else:  # numpy / h5py: 256-row pieces stay in cache for both passes
            block = np.asarray(block)
            parts = [block[s:s + 256] for s in range(0, len(block), 256)]
        for part in parts:
            w = None if weights is None else weights[offset:offset + len(part)]
            offset += len(part)
            nb = len(part) if w is None else float(w.sum())
            if nb == 0:
                continue
            if isinstance(part, torch.Tensor):
                wt = None if w is None else torch.as_tensor(w, device=part.device).float()
                bmean = part.mean(0) if wt is None else (wt @ part) / nb
                c = part - bmean
                c = c * c
                bm2 = c.sum(0) if wt is None else wt @ c
                bmean, bm2 = bmean.double().cpu().numpy(), bm2.double().cpu().numpy()
            else:
                part = part.astype(np.float32, copy=False)
                wv = np.ones(len(part), np.float32) if w is None else w.astype(np.float32)
                bmean = (wv @ part) / np.float32(nb)  # BLAS: faster than a column reduction
                c = part - bmean
                np.multiply(c, c, out=c)
                bmean, bm2 = bmean.astype(np.float64), (wv @ c).astype(np.float64)
            total = n + nb
            delta = bmean - mean
            mean = mean + delta * (nb / total)
            m2 = m2 + bm2 + delta * delta * (n * nb / total)
            n = total
    scale = np.sqrt(m2 / n)
    scale[scale < 10 * np.finfo(np.float64).eps * np.maximum(np.abs(mean), 1)] = 1.0
    return np.asarray(mean, dtype=np.float64), scale


def fold_standardization(W: np.ndarray, b: np.ndarray, mean, scale):
    """Weights ``W`` (out, in) and bias ``b`` acting on ``(x - mean) / scale``, rewritten to act
    on raw ``x``: ``(W / scale, b - (W / scale) @ mean)``. ``mean`` and ``scale`` may be
    scalars."""
    W = W / scale
    return W, b - W @ np.broadcast_to(mean, (W.shape[1],))


def standardization(X, standardize: bool, rows: np.ndarray | None = None,
                    sample_weight: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and scale (float64 numpy) of ``X`` (numpy, torch or streamed), or of
    its rows ``rows``, weighted by ``sample_weight`` (one per row of ``X``) when given, read
    8,192 rows at a time (never a copy of the whole); (0, 1) when not standardising."""
    if not standardize:
        return np.zeros(X.shape[1]), np.ones(X.shape[1])
    w = sample_weight if sample_weight is None or rows is None else sample_weight[rows]
    if isinstance(X, StreamedRows):  # read from disk, a chunk at a time
        return blockwise_mean_scale((chunk for _, chunk in X.chunks()), w)
    if rows is None:
        return blockwise_mean_scale((X[s:s + 8192] for s in range(0, X.shape[0], 8192)), w)
    if isinstance(X, torch.Tensor):
        rows = torch.as_tensor(rows, device=X.device)
    return blockwise_mean_scale((X[rows[s:s + 8192]] for s in range(0, len(rows), 8192)), w)


def on_device(X: np.ndarray, device: torch.device) -> torch.Tensor:
    """Features moved to the device once, in float16 when that loses nothing (a float16 bank's
    rows: half the device memory and the transfer), else float32; readers compute in float32
    (``.float()`` per block or batch)."""
    with np.errstate(over="ignore"):  # an overflow (inf) compares unequal below, as NaN does
        half = X.astype(np.float16)
    lossless = all(np.array_equal(as_float32(half[s:s + 65536]), X[s:s + 65536])
                   for s in range(0, len(X), 65536))  # no full-size float32 temporary
    return torch.from_numpy(half if lossless else np.asarray(X, np.float32)).to(device)


def principal_directions(X, mean: np.ndarray, scale: np.ndarray, rank: int,
                         rng: np.random.RandomState, sample: int = 4096,
                         sample_weight: np.ndarray | None = None):
    """The top ``rank`` principal directions of the standardised rows of ``X`` (numpy or a
    torch tensor on any device), from a randomised range finder with one power iteration on
    ``sample`` sampled rows, in float32 (plenty for a preconditioner or a projection); with
    ``sample_weight`` (one per row of ``X``), of the weighted rows.

    Returns ``(V, eigenvalues, mean_square)``: ``V`` (d, rank) float64 with orthonormal
    columns, the leading eigenvalues of the sample covariance (``rank + 16`` of them, largest
    first), and the mean square of the standardised sample.
    """
    n, d = X.shape
    Xt = torch.as_tensor(X)
    dev = Xt.device
    rows = np.sort(rng.choice(n, size=min(n, sample), replace=False))
    mu, sd = (torch.from_numpy(np.asarray(v)).float().to(dev) for v in (mean, scale))
    S = (Xt[torch.from_numpy(rows).to(dev)].float() - mu) / sd
    total = float(len(rows))
    if sample_weight is not None:  # rows scaled by sqrt(w): S^T S is the weighted scatter
        w = np.asarray(sample_weight, np.float64)[rows]
        S = S * torch.from_numpy(np.sqrt(w)).float().to(dev)[:, None]
        total = max(float(w.sum()), 1e-300)
    omega = torch.from_numpy(rng.standard_normal((d, min(d, rank + 16)))).float().to(dev)
    Q = torch.linalg.qr(S.T @ (S @ omega)).Q
    Q = torch.linalg.qr(S.T @ (S @ Q)).Q
    B = S @ Q
    ev, U = torch.linalg.eigh((B.T @ B).double() / total)
    ev, U = ev.flip(0).cpu().numpy(), U.flip(1)
    V = (Q.double() @ U[:, :rank]).cpu().numpy()
    return V, ev, float((S * S).sum()) / (total * d)


class LinearPredictMixin:
    """``decision_function`` / ``predict`` of a linear model with ``coef_``, ``intercept_``,
    ``classes_``, as scikit-learn's linear classifiers compute them: float64 scores, one
    column for two classes (class 1 where it is positive), argmax otherwise. A row's result
    does not depend on the batch it comes in."""

    def decision_function(self, X) -> np.ndarray:
        """Scores, shape (n_samples,) for two classes, else (n_samples, n_classes)."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        scores = X @ self.coef_.T + self.intercept_  # float64: coef_ is float64
        return scores.ravel() if scores.shape[1] == 1 else scores

    def predict(self, X) -> np.ndarray:
        """Predicted class labels."""
        scores = self.decision_function(X)
        idx = (scores > 0).astype(int) if scores.ndim == 1 else scores.argmax(1)
        return self.classes_[idx]


def proba_from_scores(scores: np.ndarray) -> np.ndarray:
    """Probabilities from ``decision_function`` scores: a sigmoid for one binary score, a
    softmax otherwise (scikit-learn's LogisticRegression does the same)."""
    if scores.ndim == 1:
        p1 = 1.0 / (1.0 + np.exp(-scores))
        return np.column_stack([1.0 - p1, p1])
    return softmax(scores.copy())


def class_probabilities(estimator, X) -> np.ndarray:
    """``predict_proba``, or for classifiers without one (LinearSVC, RidgeClassifier) the
    probabilities of their scores; columns in ``classes_`` order."""
    if hasattr(estimator, "predict_proba"):
        return estimator.predict_proba(X)
    return proba_from_scores(estimator.decision_function(X))


class ProbaMixin:
    """``predict_proba`` / ``predict_log_proba`` from ``decision_function``
    (:func:`proba_from_scores`)."""

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities, shape (n_samples, n_classes), columns in ``classes_`` order."""
        return proba_from_scores(self.decision_function(X))

    def predict_log_proba(self, X) -> np.ndarray:
        """Logarithm of :meth:`predict_proba`."""
        return np.log(self.predict_proba(X))


def affine_to_torch(coef: np.ndarray, intercept: np.ndarray, *,
                     two_class_logits: bool = True) -> nn.Linear:
    """A Linear layer from scikit-learn style ``coef_`` (K, D) and ``intercept_`` (K,).

    With ``two_class_logits``, a binary model's single score ``s`` becomes the two logits
    ``(0, s)``: argmax picks class 1 exactly when ``s > 0``, and softmax gives ``sigmoid(s)``,
    as ``predict_proba`` does.
    """
    coef = np.atleast_2d(np.asarray(coef, dtype=np.float64))
    intercept = np.broadcast_to(np.asarray(intercept, dtype=np.float64), (coef.shape[0],))
    if two_class_logits and coef.shape[0] == 1:
        coef = np.vstack([np.zeros_like(coef), coef])
        intercept = np.concatenate([[0.0], intercept])
    layer = nn.Linear(coef.shape[1], coef.shape[0])
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(coef))
        layer.bias.copy_(torch.from_numpy(np.array(intercept)))
    return layer
