"""LogisticHead: multinomial L2-regularised logistic regression on CPU (numpy) or GPU (torch).

The objective is scikit-learn's ``LogisticRegression`` (lbfgs, l2) exactly, on standardised
features when ``standardize=True``::

    mean_i CE(x_i W + b, y_i) + ||W||^2 / (2 C n)          (binary: one logit, as scikit-learn)

(with sample or class weights ``w``: ``sum_i w_i CE_i / sum_i w_i + ||W||^2 / (2 C sum_i w_i)``,
scikit-learn's weighted objective)

with the same stopping rule (largest gradient component ``<= tol``, or L-BFGS-B's relative
decrease ``ftol``), so ``C``, ``tol`` and ``max_iter`` mean what they mean there. What differs
is how it gets there:

- every evaluation is one float32 pass over the data on the chosen device (numpy/OpenBLAS in
  cache-sized row blocks on the CPU, torch on CUDA), with the standardisation folded into the
  weights (the raw feature matrix is never copied or centred);
- L-BFGS runs on preconditioned weights ``W = Z P``, where ``P`` shrinks the top principal
  directions of the standardised features (estimated once from a random sketch of a few
  thousand rows) to the level of the rest. Those few large directions are what makes the
  problem ill-conditioned; with them flattened, L-BFGS needs several times fewer passes
  (README's benchmark table has the measured figures);
- ``coef_`` and ``intercept_`` are in raw-feature space, so prediction is one affine map, and a
  whole regularisation path shares one prepared problem, one preconditioner and warm starts.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data

from .._io import (NON_NEGATIVE_FLOAT, NON_NEGATIVE_INT, POSITIVE_FLOAT, POSITIVE_INT,
                   resolve_device)
from ..rows import StreamedRows, is_streamed
from ._base import (LinearPredictMixin, ProbaMixin, affine_to_torch, check_classes,
                    fold_standardization, on_device, principal_directions, row_weights,
                    standardization)
from ._lbfgs import lbfgs_many

__all__ = ["LogisticHead", "logistic_path"]

_SKETCH_ROWS = 4096  # rows sampled to estimate the principal directions
_CHECK_EVERY = 10  # iterations between two validation checks of a path's running problem


def _one_hot(y: np.ndarray, k: int) -> np.ndarray:
    """``(len(y), k)`` float32 targets; binary (``k = 1``): whether the label is 1."""
    return (y[:, None] == (np.arange(k) if k > 1 else 1)).astype(np.float32)


def _scores_grad_numpy(X, Wr, br, y, k, binary, w=None, block=256):
    """Loss sums ``(m,)``, score gradient ``(m k, d)`` and bias gradient ``(m k,)`` of ``m``
    problems that share the features ``X`` and the labels ``y`` (class indices), each row's
    loss weighted by ``w`` (float32, or None: all 1), in float32 numpy (the CPU path). Rows of
    ``Wr`` and ``br`` are problem 0's ``k``, then problem 1's...

    ``X`` is an array, or a :class:`StreamedRows` read from disk chunk by chunk. Several
    problems make one product of ``m k`` columns instead of ``m`` products of ``k``: OpenBLAS
    runs wide products much nearer its peak. Row blocks keep each block of X in cache for both
    of its products (256 rows was the fastest block size measured; docs/design.md).
    """
    m = Wr.shape[0] // k
    gW = np.zeros(Wr.shape, dtype=np.float64)  # float64 sums of float32 block products
    gb = np.zeros(Wr.shape[0], dtype=np.float64)
    loss = np.zeros(m)
    WrT = np.ascontiguousarray(Wr.T)
    blocks = (X.blocks(block) if isinstance(X, StreamedRows)
              else ((s, X[s:s + block]) for s in range(0, X.shape[0], block)))  # in memory
    for s, Xb in blocks:
        Tb = _one_hot(y[s:s + len(Xb)], k)[:, None, :]
        z = Xb @ WrT
        z += br
        z = z.reshape(len(Xb), m, k)
        # each row's loss in float32, their sum in float64: a float32 sum over a block
        # resolves the objective to ~1e-6 only, and L-BFGS then stops short of the optimum
        if binary:  # log(1 + e^z) - y z, as scikit-learn's binary model
            rows = (np.logaddexp(0, z) - Tb * z)[..., 0]
            G = 1 / (1 + np.exp(-z)) - Tb
        else:  # log sum e^(z - max) - (z_y - max): no large terms to cancel
            z -= z.max(2, keepdims=True)
            e = np.exp(z)
            ssum = e.sum(2, keepdims=True)
            rows = np.log(ssum[..., 0]) - (z * Tb).sum(2)
            G = e / ssum - Tb
        G = G.reshape(len(Xb), m * k)
        if w is not None:  # weighted rows: their losses and gradients scaled alike
            wb = w[s:s + len(Xb), None]
            rows *= wb
            G *= wb
        loss += rows.sum(0, dtype=np.float64)
        gW += G.T @ Xb
        gb += G.sum(0, dtype=np.float64)
    return loss, gW, gb


def _scores_grad_torch(X, Wr, br, y, k, binary, w=None, block=1 << 16):
    """The same in torch (the CUDA path), over row blocks of ``block``; ``X`` may be stored in
    float16, each block's products run in float32."""
    if X.dtype != torch.float32 or len(X) > block:
        parts = [_scores_grad_torch(X[s:s + block].float(), Wr, br, y[s:s + block], k, binary,
                                    None if w is None else w[s:s + block])
                 for s in range(0, len(X), block)]
        return tuple(sum(p[i] for p in parts) for i in range(3))
    z = torch.nn.functional.linear(X, Wr, br).reshape(len(X), -1, k)
    Tb = (y[:, None] == (torch.arange(k, device=y.device) if k > 1 else 1)).float()[:, None, :]
    if binary:
        rows = (torch.nn.functional.softplus(z) - Tb * z)[..., 0]
        G = torch.sigmoid(z) - Tb
    else:
        rows = torch.logsumexp(z, 2) - (z * Tb).sum(2)
        G = torch.softmax(z, 2) - Tb
    G = G.reshape(len(X), -1)
    if w is not None:
        rows, G = rows * w[:, None], G * w[:, None]
    loss = rows.sum(0, dtype=torch.float64)
    return (loss.cpu().numpy(), (G.T @ X).double().cpu().numpy(),
            G.sum(0).double().cpu().numpy())


class _Preconditioner:
    """``P = I + V diag(s) V^T`` (symmetric): weights ``W = Z P`` for L-BFGS variables ``Z``.

    ``V`` holds the top ``r`` principal directions of the standardised features and
    ``1 + s = sqrt(floor / eigenvalue)``, so the data term's curvature along them drops to the
    ``floor`` (the ``r+1``-th eigenvalue) while every other direction is left as it is.
    """

    def __init__(self, V: np.ndarray, s: np.ndarray):
        self.V, self.s = V, s

    def apply(self, M: np.ndarray) -> np.ndarray:
        return M + ((M @ self.V) * self.s) @ self.V.T

    def inverse(self, M: np.ndarray) -> np.ndarray:
        return M - ((M @ self.V) * (self.s / (1 + self.s))) @ self.V.T

    @classmethod
    def from_sketch(cls, X, mean: np.ndarray, scale: np.ndarray, rank: int,
                    rng: np.random.RandomState, sample_weight: np.ndarray | None = None
                    ) -> _Preconditioner | None:
        """From the principal directions of a row sample of standardised X (its rows
        weighted by ``sample_weight``, as the standardisation weighs them)."""
        r = min(rank, X.shape[1] - 1)
        if r < 1:
            return None
        V, ev, mean_square = principal_directions(X, mean, scale, r, rng, _SKETCH_ROWS,
                                                  sample_weight)
        # never stretch a direction, and keep P well away from singular on degenerate data
        floor = max(ev[r], 1e-2 * mean_square, 1e-12)
        s = np.sqrt(floor / np.maximum(ev[:r], floor)) - 1.0
        return cls(V, s)


class _Pruner:
    """Ends the problems of a path that trail on validation (the median stopping rule of
    Google Vizier, against the best finished problem instead of the median).

    Every ``_CHECK_EVERY`` iterations a running problem's iterate is scored (accuracy) on the
    validation rows; one whose last ``patience`` scores are all below the best score of a
    problem that has ended (converged, or at ``max_iter``) stops there: on features where
    the weakly regularised problems run to ``max_iter`` and lose on validation, most of the
    path's passes go to them.
    """

    def __init__(self, problem: _Problem, validation, classes: np.ndarray, patience: int):
        X_val, y_val = validation
        self.problem, self.patience = problem, patience
        # read once (a streamed bank's validation rows are a tenth of its train rows, which
        # are streamed at a quarter of memory): every check scores them again
        self.X = np.asarray(np.concatenate([c for _, c in X_val.chunks()])
                            if is_streamed(X_val) else X_val, dtype=np.float32)
        y_val = np.asarray(y_val)
        at = np.clip(np.searchsorted(classes, y_val), 0, len(classes) - 1)
        self.y = np.where(classes[at] == y_val, at, -1)  # a class train lacks: always wrong
        self.best, self.scores = -np.inf, {}

    def score(self, z: np.ndarray) -> float:
        W, b = self.problem.raw(self.problem.weights(z))
        pred = ((self.X @ W.T.astype(np.float32) + b).argmax(1) if len(W) > 1
                else (self.X @ W[0] + b[0] > 0).astype(int))
        return float((pred == self.y).mean())

    def stop(self, C: float):
        """The ``stop(x, iteration)`` of the problem of ``C``."""
        history = self.scores.setdefault(C, [])

        def check(z: np.ndarray, it: int) -> bool:
            if it % _CHECK_EVERY:
                return False
            history.append(self.score(z))
            return (len(history) >= self.patience
                    and max(history[-self.patience:]) < self.best)
        return check

    def done(self, C: float, result) -> None:
        if result.status != 3:
            self.best = max(self.best, self.score(result.x))


class _Problem:
    """Training data prepared once (on the device, with its standardisation and
    preconditioner) for many fits.

    On the CPU the products run in numpy (OpenBLAS runs these tall, narrow shapes faster than
    torch's MKL, and mixing the two thread pools slows both); on CUDA they run in torch.
    """

    def __init__(self, X: np.ndarray, y_idx: np.ndarray, n_classes: int, *, standardize: bool,
                 fit_intercept: bool, device: torch.device, preconditioner_rank: int,
                 random_state=None, torch_kernels: bool | None = None,
                 standardization_: tuple[np.ndarray, np.ndarray] | None = None,
                 sample_weight: np.ndarray | None = None,
                 loss_weight: np.ndarray | None = None):
        # torch tensors and kernels on CUDA (tests run them on CPU tensors), numpy otherwise
        self.use_torch = device.type == "cuda" if torch_kernels is None else torch_kernels
        self.streamed = isinstance(X, StreamedRows)
        if not self.streamed:
            X = np.ascontiguousarray(X, dtype=np.float32)
        self.n, self.d = X.shape
        self.k = 1 if n_classes == 2 else n_classes
        self.fit_intercept = fit_intercept
        self.X = on_device(X, device) if self.use_torch else X
        self.y = torch.from_numpy(y_idx).to(device) if self.use_torch else y_idx
        # the objective's rows: sum_i w_i CE_i / sum_i w_i (scikit-learn's, w = sample times
        # class weights), and the penalty over the same sum
        self.w, self.w_sum = None, float(self.n)
        if loss_weight is not None:
            self.w_sum = float(loss_weight.sum())
            w = loss_weight.astype(np.float32)
            self.w = torch.from_numpy(w).to(device) if self.use_torch else w
        # statistics a caller already has (fit's shared ones) are not computed again
        self.mean, self.scale = (
            standardization_ if standardize and standardization_ is not None
            and sample_weight is None
            else standardization(X if self.streamed else self.X, standardize,
                                 sample_weight=sample_weight))
        self.precond = None
        if preconditioner_rank > 0:
            rng = check_random_state(random_state)
            picked = (np.sort(rng.choice(self.n, min(self.n, _SKETCH_ROWS), replace=False))
                      if self.streamed else None)
            sample = X.take(picked) if self.streamed else self.X  # read from disk, or all rows
            self.precond = _Preconditioner.from_sketch(
                sample, self.mean, self.scale, preconditioner_rank, rng,
                None if sample_weight is None
                else sample_weight[picked] if self.streamed else sample_weight)

    def raw(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Parameters (standardised space) to raw-feature-space ``coef`` (k, d), ``intercept``."""
        k, d = self.k, self.d
        W = theta[: k * d].reshape(k, d)
        b = theta[k * d:] if self.fit_intercept else np.zeros(k)
        return fold_standardization(W, b, self.mean, self.scale)

    def loss_grad(self, theta: np.ndarray, C: float) -> tuple[float, np.ndarray]:
        return self.loss_grad_many([theta], [C])[0]

    def loss_grad_many(self, thetas: list[np.ndarray], Cs: list[float]
                       ) -> list[tuple[float, np.ndarray]]:
        """Objective and gradient of several parameter vectors (each with its C), from one
        pass over the data."""
        k, d, n = self.k, self.d, self.w_sum
        raws = [self.raw(theta) for theta in thetas]
        Wr = np.concatenate([w for w, _ in raws])
        br = np.concatenate([b for _, b in raws])
        if self.use_torch:
            dev = self.X.device
            loss, gWr, gbr = _scores_grad_torch(self.X, torch.from_numpy(Wr).float().to(dev),
                                                torch.from_numpy(br).float().to(dev), self.y,
                                                k, k == 1, self.w)
        else:
            loss, gWr, gbr = _scores_grad_numpy(self.X, Wr.astype(np.float32),
                                                br.astype(np.float32), self.y, k, k == 1,
                                                self.w)
        out = []
        for i, (theta, C) in enumerate(zip(thetas, Cs)):
            W = theta[: k * d].reshape(k, d)
            gw, gb = gWr[i * k:(i + 1) * k] / n, gbr[i * k:(i + 1) * k] / n
            # chain rule through Wr = W / scale and br = b - Wr @ mean
            gW = (gw - gb[:, None] * self.mean) / self.scale + W / (C * n)
            value = loss[i] / n + float((W * W).sum()) / (2 * C * n)
            out.append((float(value), np.concatenate(
                [gW.ravel(), gb if self.fit_intercept else np.zeros(k)])))
        return out

    def _map(self, theta: np.ndarray, f) -> np.ndarray:
        """Apply ``f`` to the weight block of a parameter vector (the intercept passes through)."""
        kd = self.k * self.d
        return np.concatenate([f(theta[:kd].reshape(self.k, self.d)).ravel(), theta[kd:]])

    def solve(self, C: float, theta0: np.ndarray, max_iter: int, tol: float):
        return self.solve_many([C], [theta0], max_iter, tol)[0]

    def solve_many(self, Cs: list[float], theta0s: list[np.ndarray], max_iter: int,
                   tol: float, pruner: _Pruner | None = None
                   ) -> list[tuple[np.ndarray, int, int]]:
        """``(theta, iterations, status)`` for each C: the problems run in lockstep, one pass
        over the data evaluating every problem still running (:func:`lbfgs_many`);
        a :class:`_Pruner` may end some early."""
        P, to_w = self.precond, self.weights
        options = {"max_iter": max_iter, "gtol": tol}
        if P is not None:  # stop on the gradient in the original variables, as scikit-learn
            options["grad_norm"] = lambda g: float(np.abs(self._map(g, P.inverse)).max())

        def fun_many(points, Cs_now):
            # in preconditioned variables: W = Z P, dL/dZ = dL/dW P
            return [(f, to_w(g)) for f, g in self.loss_grad_many([to_w(z) for z in points],
                                                                 Cs_now)]

        starts = [self._map(t, P.inverse) if P is not None else t for t in theta0s]
        results = lbfgs_many(fun_many, starts,
                             [{**options, "stop": pruner.stop(C)} if pruner else options
                              for C in Cs], list(Cs), on_done=pruner and pruner.done)
        return [(to_w(r.x), r.n_iter, r.status) for r in results]

    def weights(self, z: np.ndarray) -> np.ndarray:
        """The parameters (standardised space) of L-BFGS's preconditioned variables ``z``:
        ``W = Z P``."""
        return self._map(z, self.precond.apply) if self.precond is not None else z

    def zeros(self) -> np.ndarray:
        return np.zeros(self.k * self.d + self.k)

    def no_worse_than_zero(self, starts: dict[float, np.ndarray]) -> dict[float, np.ndarray]:
        """Each C's start, or zero where zero's objective is lower (one pass for all): a head
        fitted on rows whose features have other scales has a function that costs a penalty
        in this problem's standardisation that can dwarf the loss (measured: a start at
        636,879 against zero's 2.3), and L-BFGS would spend its first passes undoing it."""
        Cs = list(starts)
        values = self.loss_grad_many([starts[C] for C in Cs] + [self.zeros()], Cs + [Cs[0]])
        zero = values[-1][0]  # no penalty at zero: the same objective for every C
        return {C: starts[C] if f <= zero else self.zeros() for C, (f, _) in zip(Cs, values)}

    def start_from(self, head: LogisticHead) -> np.ndarray:
        """This problem's parameters (its standardised space) of a fitted head's raw-space
        ``coef_`` and ``intercept_``: a warm start from a fit on related rows."""
        if head.coef_.shape != (self.k, self.d):
            raise ValueError(f"init: a head of {head.coef_.shape[0]} score rows on "
                             f"{head.coef_.shape[1]} features cannot start a problem of "
                             f"{self.k} on {self.d}.")
        W = head.coef_ * self.scale  # raw Wr = W / scale, br = b - Wr @ mean
        b = (head.intercept_ + head.coef_ @ self.mean if self.fit_intercept
             else np.zeros(self.k))
        return np.concatenate([W.ravel(), b])


class LogisticHead(ProbaMixin, LinearPredictMixin, ClassifierMixin, BaseEstimator):
    """Multinomial logistic regression on cached features, on the CPU or a CUDA GPU.

    Same objective and meaning of ``C`` as scikit-learn's
    ``make_pipeline(StandardScaler(), LogisticRegression(C=C))`` (or of a bare
    ``LogisticRegression`` with ``standardize=False``), fitted with the same L-BFGS-B. With
    weights, the objective is scikit-learn's weighted one,
    ``sum_i w_i CE_i / sum_i w_i + ||W||^2 / (2 C sum_i w_i)`` with ``w`` the sample weights
    times the class weights, and the standardisation weighs rows by ``sample_weight`` alone:
    the pipeline above fitted with ``sample_weight`` given to both steps and ``class_weight``
    to the ``LogisticRegression``.

    Parameters
    ----------
    C : float, default=1.0
        Inverse regularisation strength, as in scikit-learn.
    standardize : bool, default=True
        Standardise features (mean 0, variance 1) inside the model; ``coef_`` is still in
        raw-feature space.
    fit_intercept : bool, default=True
    max_iter : int, default=100
        L-BFGS-B iterations.
    tol : float, default=1e-4
        Stop when the largest gradient component is below ``tol``.
    warm_start : bool, default=False
        Start from the previous solution (same data), as in scikit-learn.
    class_weight : dict, "balanced" or None, default=None
        Weights of the classes in the loss, as in scikit-learn: ``"balanced"`` weighs each
        class by ``n_samples / (n_classes * class count)`` (counts weighted by
        ``sample_weight``); a dict maps class labels to weights (others 1).
    preconditioner_rank : int, default=128
        Number of top principal directions of the standardised features that L-BFGS sees
        shrunk to the level of the rest (estimated from a random sketch of at most 4,096
        rows). Higher removes more ill-conditioning at a larger one-off cost; 0 runs plain
        L-BFGS on the weights, which takes the iterates of scikit-learn's lbfgs solver.
    random_state : int, RandomState instance or None, default=0
        Seeds the sketch behind the preconditioner, so that by default a fit is repeatable
        like scikit-learn's lbfgs. The optimum does not depend on it; where a fit stops short
        of it does, slightly. None draws from NumPy's global generator.
    device : {"auto", "cpu", "cuda"}, default="auto"

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    coef_ : ndarray of shape (1, n_features) or (n_classes, n_features)
    intercept_ : ndarray of shape (1,) or (n_classes,)
    mean_, scale_ : ndarray of shape (n_features,)
        The standardisation (zeros and ones when ``standardize=False``).
    n_features_in_ : int
    n_iter_ : ndarray of shape (1,)
    """

    def __init__(self, C: float = 1.0, *, standardize: bool = True, fit_intercept: bool = True,
                 max_iter: int = 100, tol: float = 1e-4, warm_start: bool = False,
                 class_weight=None, preconditioner_rank: int = 128, random_state=0,
                 device: str = "auto"):
        self.C = C
        self.standardize = standardize
        self.fit_intercept = fit_intercept
        self.max_iter = max_iter
        self.tol = tol
        self.warm_start = warm_start
        self.class_weight = class_weight
        self.preconditioner_rank = preconditioner_rank
        self.random_state = random_state
        self.device = device

    def _check_params(self) -> None:
        POSITIVE_FLOAT.check("C", self.C)
        POSITIVE_INT.check("max_iter", self.max_iter)
        NON_NEGATIVE_FLOAT.check("tol", self.tol)
        NON_NEGATIVE_INT.check("preconditioner_rank", self.preconditioner_rank)

    def _prepare(self, X, y, standardization_=None, sample_weight=None
                 ) -> tuple[_Problem, np.ndarray]:
        self._check_params()
        if is_streamed(X):  # larger than memory: streamed
            X = X if isinstance(X, StreamedRows) else StreamedRows(X)
            y = column_or_1d(y, warn=True)
            if len(y) != X.shape[0]:
                raise ValueError(f"X has {X.shape[0]} rows but y has {len(y)} labels.")
            self.n_features_in_ = X.shape[1]
        else:
            X, y = validate_data(self, X, y, dtype=[np.float32, np.float64], order="C")
        classes, y_idx = check_classes(y, type(self).__name__)
        sample_weight, loss_weight = row_weights(sample_weight, self.class_weight, classes, y_idx)
        problem = _Problem(X, y_idx, len(classes), standardize=self.standardize,
                           fit_intercept=self.fit_intercept, device=resolve_device(self.device),
                           preconditioner_rank=self.preconditioner_rank,
                           random_state=self.random_state, standardization_=standardization_,
                           sample_weight=sample_weight, loss_weight=loss_weight)
        return problem, classes

    def fit(self, X, y, sample_weight=None) -> LogisticHead:
        """Fit on features ``X`` (n_samples, n_features) and labels ``y``.

        ``X`` may also be an HDF5 dataset (``bank.features("train", "fc7")``): it is then read
        in chunks on every pass, never whole, float16 on disk and float32 in each chunk's
        products (banks larger than memory; the same optimum, one disk read per pass).

        ``sample_weight`` (n_samples,) weighs each row's loss and its part in the
        standardisation, as scikit-learn's does: a weight of 2 is the row twice.
        """
        problem, classes = self._prepare(X, y, sample_weight=sample_weight)
        theta0 = problem.zeros()
        if self.warm_start and getattr(self, "_theta", np.empty(0)).shape == theta0.shape:
            theta0 = self._theta
        theta, n_iter, status = problem.solve(float(self.C), theta0, self.max_iter, self.tol)
        self._set_solution(problem, classes, theta, n_iter, status)
        return self

    def _set_solution(self, problem, classes, theta, n_iter, status) -> None:
        if status == 1:
            warnings.warn(
                f"{type(self).__name__} did not converge in max_iter={self.max_iter} "
                f"iterations (C={self.C}); increase max_iter, or lower C.", ConvergenceWarning,
                stacklevel=3)
        elif status == 2:
            warnings.warn(
                f"{type(self).__name__} stopped after {n_iter} iterations (C={self.C}): the line "
                f"search found no lower objective, so the gradient is at the limit of float32 "
                f"precision before reaching tol={self.tol}; raise tol, or lower C.",
                ConvergenceWarning, stacklevel=3)
        Wr, br = problem.raw(theta)
        self.classes_ = classes
        self.coef_ = Wr
        self.intercept_ = br
        self.mean_ = problem.mean
        self.scale_ = problem.scale
        self.n_iter_ = np.array([n_iter])
        self._theta = theta

    def to_torch(self) -> torch.nn.Module:
        """An ``nn.Linear`` from raw tap features to logits (standardisation folded in).

        ``head.to_torch()(x).argmax(1)`` equals ``head.predict(x)`` as class indices.
        """
        check_is_fitted(self)
        return affine_to_torch(self.coef_, self.intercept_)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = False
        return tags


def logistic_path(X, y, Cs, *, sample_weight=None, standardization_=None, init=None,
                  validation=None, patience: int = 3, **params) -> list[LogisticHead]:
    """Fit one :class:`LogisticHead` per ``C``, all in the same passes over the data.

    The data are validated, moved to the device, standardised and preconditioned once for the
    whole path, and every C is solved at once: each pass computes one product of ``X`` with
    the weights of all the problems still running (``len(Cs) x k`` columns: far nearer the
    BLAS peak than ``k``), while each problem keeps its own L-BFGS history, line search and
    stopping test, and drops out when it has converged. Each ends where its own fit from zero
    ends; the heads are returned in the order given.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features)
    y : array-like of shape (n_samples,)
    Cs : sequence of float
    sample_weight : array-like of shape (n_samples,), optional
        As in :meth:`LogisticHead.fit`.
    standardization_ : tuple of ndarray, optional
        The features' ``(mean, scale)`` when the caller has them already (unweighted: ignored
        with ``sample_weight``).
    init : sequence of LogisticHead, optional
        A fitted head per C to start from (same classes and features; e.g. the solutions on
        the centre rows when ``X`` adds augmented views of them): each problem starts at that
        head's function instead of zero (or at zero, where that has the lower objective) and
        ends at its own optimum, in fewer passes when the start is near it.
    validation : (X_val, y_val), optional
        Rows to stop hopeless problems early on (what a sweep then selects on): every 10
        iterations each problem still running is scored (accuracy) there, and one whose last
        ``patience`` scores are all below the best score of a problem that has ended stops
        there (its head has ``pruned_ = True`` and the iterate it reached). Without it every
        problem runs to its optimum or ``max_iter``.
    patience : int, default=3
        Checks in a row below the best ended problem that stop a problem.
    **params
        Other :class:`LogisticHead` parameters.

    Returns
    -------
    list of LogisticHead
    """
    Cs = [float(c) for c in Cs]
    if not Cs:
        raise ValueError("Cs must hold at least one value of C.")
    template = LogisticHead(**params)
    problem, classes = template._prepare(X, y, standardization_, sample_weight)
    unique = sorted(set(Cs))
    if init is not None and len(init) != len(Cs):
        raise ValueError(f"init holds {len(init)} heads for {len(Cs)} values of C.")
    if init is not None and any(not np.array_equal(h.classes_, classes) for h in init):
        raise ValueError("init: heads fitted on other classes than y's cannot start the path.")
    starts = (problem.no_worse_than_zero({C: problem.start_from(h) for C, h in zip(Cs, init)})
              if init is not None else dict.fromkeys(unique, problem.zeros()))
    POSITIVE_INT.check("patience", patience)
    pruner = None if validation is None else _Pruner(problem, validation, classes, patience)
    solved = problem.solve_many(unique, [starts[C] for C in unique], template.max_iter,
                                template.tol, pruner)
    heads: dict[float, LogisticHead] = {}
    for C, (theta, n_iter, status) in zip(unique, solved):
        head = LogisticHead(**{**template.get_params(), "C": C})
        head._check_params()
        head.n_features_in_ = template.n_features_in_
        if hasattr(template, "feature_names_in_"):
            head.feature_names_in_ = template.feature_names_in_
        head._set_solution(problem, classes, theta, n_iter, status)
        head.pruned_ = status == 3
        heads[C] = head
    return [heads[C] for C in Cs]
