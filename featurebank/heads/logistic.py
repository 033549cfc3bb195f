"""LogisticHead: multinomial L2-regularised logistic regression on CPU (numpy) or GPU (torch).

The objective is scikit-learn's ``LogisticRegression`` (lbfgs, l2) exactly, on standardised
features when ``standardize=True``::

    mean_i CE(x_i W + b, y_i) + ||W||^2 / (2 C n)          (binary: one logit, as scikit-learn)

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
from sklearn.utils.validation import check_is_fitted, validate_data

from .._io import NON_NEGATIVE_FLOAT, NON_NEGATIVE_INT, POSITIVE_FLOAT, POSITIVE_INT, resolve_device
from ._base import (LinearPredictMixin, ProbaMixin, affine_to_torch, check_classes,
                    fold_standardization, standardization)
from ._lbfgs import lbfgs

__all__ = ["LogisticHead", "logistic_path"]

_SKETCH_ROWS = 4096  # rows sampled to estimate the principal directions


def _scores_grad_numpy(X, Wr, br, T, binary, block=256):
    """Loss sum, score gradient (k, d) and bias gradient (k,) in float32 numpy (the CPU path).

    Row blocks keep each block of X in cache for both of its products (256 rows was the
    fastest block size measured; docs/design.md).
    """
    gW = np.zeros(Wr.shape, dtype=np.float64)  # float64 sums of float32 block products
    gb = np.zeros(Wr.shape[0], dtype=np.float64)
    loss = 0.0
    WrT = np.ascontiguousarray(Wr.T)
    for s in range(0, X.shape[0], block):
        Xb, Tb = X[s:s + block], T[s:s + block]
        z = Xb @ WrT
        z += br
        # each row's loss in float32, their sum in float64: a float32 sum over a block
        # resolves the objective to ~1e-6 only, and L-BFGS then stops short of the optimum
        if binary:  # log(1 + e^z) - y z, as scikit-learn's binary model
            loss += float(np.sum(np.logaddexp(0, z) - Tb * z, dtype=np.float64))
            G = 1 / (1 + np.exp(-z)) - Tb
        else:  # log sum e^(z - max) - (z_y - max): no large terms to cancel
            z -= z.max(1, keepdims=True)
            e = np.exp(z)
            ssum = e.sum(1, keepdims=True)
            loss += float(np.sum(np.log(ssum[:, 0]) - (z * Tb).sum(1), dtype=np.float64))
            G = e / ssum - Tb
        gW += G.T @ Xb
        gb += G.sum(0, dtype=np.float64)
    return loss, gW, gb


def _scores_grad_torch(X, Wr, br, T, binary):
    """The same in torch, in one block (the CUDA path)."""
    z = torch.nn.functional.linear(X, Wr, br)
    if binary:
        loss = (torch.nn.functional.softplus(z) - T * z).sum(dtype=torch.float64)
        G = torch.sigmoid(z) - T
    else:
        loss = (torch.logsumexp(z, 1) - (z * T).sum(1)).sum(dtype=torch.float64)
        G = torch.softmax(z, 1) - T
    return (float(loss), (G.T @ X).double().cpu().numpy(),
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
                    rng: np.random.RandomState) -> _Preconditioner | None:
        """Randomised range finder (one power iteration) on a row sample of standardised X."""
        n, d = X.shape
        r = min(rank, d - 1)
        if r < 1:
            return None
        Xt = torch.as_tensor(X)
        rows = np.sort(rng.choice(n, size=min(n, _SKETCH_ROWS), replace=False))
        dev = Xt.device
        mu, sd = (torch.from_numpy(v).float().to(dev) for v in (mean, scale))
        S = (Xt[torch.from_numpy(rows).to(dev)] - mu) / sd  # float32: plenty for a preconditioner
        omega = torch.from_numpy(rng.standard_normal((d, min(d, r + 16)))).float().to(dev)
        Q = torch.linalg.qr(S.T @ (S @ omega)).Q
        Q = torch.linalg.qr(S.T @ (S @ Q)).Q
        B = S @ Q
        ev, U = torch.linalg.eigh((B.T @ B).double() / len(rows))
        ev, U = ev.flip(0).cpu().numpy(), U.flip(1)
        V = (Q.double() @ U[:, :r]).cpu().numpy()
        # never stretch a direction, and keep P well away from singular on degenerate data
        floor = max(ev[r], 1e-2 * float((S * S).sum()) / (len(rows) * d), 1e-12)
        s = np.sqrt(floor / np.maximum(ev[:r], floor)) - 1.0
        return cls(V, s)


class _Problem:
    """Training data prepared once (on the device, with its standardisation and
    preconditioner) for many fits.

    On the CPU the products run in numpy (OpenBLAS runs these tall, narrow shapes faster than
    torch's MKL, and mixing the two thread pools slows both); on CUDA they run in torch.
    """

    def __init__(self, X: np.ndarray, y_idx: np.ndarray, n_classes: int, *, standardize: bool,
                 fit_intercept: bool, device: torch.device, preconditioner_rank: int,
                 random_state=None, torch_kernels: bool | None = None):
        # torch tensors and kernels on CUDA (tests run them on CPU tensors), numpy otherwise
        self.use_torch = device.type == "cuda" if torch_kernels is None else torch_kernels
        X = np.ascontiguousarray(X, dtype=np.float32)
        self.n, self.d = X.shape
        self.k = 1 if n_classes == 2 else n_classes
        self.fit_intercept = fit_intercept
        T = (y_idx[:, None] == (np.arange(self.k) if self.k > 1 else 1)).astype(np.float32)
        self.X = torch.from_numpy(X).to(device) if self.use_torch else X
        self.T = torch.from_numpy(T).to(device) if self.use_torch else T
        self.mean, self.scale = standardization(self.X, standardize)
        self.precond = None
        if preconditioner_rank > 0:
            self.precond = _Preconditioner.from_sketch(
                self.X, self.mean, self.scale, preconditioner_rank,
                check_random_state(random_state))

    def raw(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Parameters (standardised space) to raw-feature-space ``coef`` (k, d), ``intercept``."""
        k, d = self.k, self.d
        W = theta[: k * d].reshape(k, d)
        b = theta[k * d:] if self.fit_intercept else np.zeros(k)
        return fold_standardization(W, b, self.mean, self.scale)

    def loss_grad(self, theta: np.ndarray, C: float) -> tuple[float, np.ndarray]:
        k, d, n = self.k, self.d, self.n
        W = theta[: k * d].reshape(k, d)
        Wr, br = self.raw(theta)
        if self.use_torch:
            dev = self.X.device
            loss, gWr, gbr = _scores_grad_torch(self.X, torch.from_numpy(Wr).float().to(dev),
                                                torch.from_numpy(br).float().to(dev), self.T,
                                                k == 1)
        else:
            loss, gWr, gbr = _scores_grad_numpy(self.X, Wr.astype(np.float32),
                                                br.astype(np.float32), self.T, k == 1)
        gWr /= n
        gbr /= n
        # chain rule through Wr = W / scale and br = b - Wr @ mean
        gW = (gWr - gbr[:, None] * self.mean) / self.scale + W / (C * n)
        gb = gbr if self.fit_intercept else np.zeros(k)
        value = loss / n + float((W * W).sum()) / (2 * C * n)
        return value, np.concatenate([gW.ravel(), gb])

    def _map(self, theta: np.ndarray, f) -> np.ndarray:
        """Apply ``f`` to the weight block of a parameter vector (the intercept passes through)."""
        kd = self.k * self.d
        return np.concatenate([f(theta[:kd].reshape(self.k, self.d)).ravel(), theta[kd:]])

    def solve(self, C: float, theta0: np.ndarray, max_iter: int, tol: float):
        P = self.precond
        if P is None:
            res = lbfgs(lambda th: self.loss_grad(th, C), theta0, max_iter=max_iter, gtol=tol)
            return res.x, res.n_iter, res.status

        def fun(z):  # the objective in preconditioned variables: W = Z P, dL/dZ = dL/dW P
            value, g = self.loss_grad(self._map(z, P.apply), C)
            return value, self._map(g, P.apply)

        # stop on the gradient in the original variables, as scikit-learn does
        res = lbfgs(fun, self._map(theta0, P.inverse), max_iter=max_iter, gtol=tol,
                    grad_norm=lambda g: float(np.abs(self._map(g, P.inverse)).max()))
        return self._map(res.x, P.apply), res.n_iter, res.status

    def zeros(self) -> np.ndarray:
        return np.zeros(self.k * self.d + self.k)


class LogisticHead(ProbaMixin, LinearPredictMixin, ClassifierMixin, BaseEstimator):
    """Multinomial logistic regression on cached features, on the CPU or a CUDA GPU.

    Same objective and meaning of ``C`` as scikit-learn's
    ``make_pipeline(StandardScaler(), LogisticRegression(C=C))`` (or of a bare
    ``LogisticRegression`` with ``standardize=False``), fitted with the same L-BFGS-B.

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
                 preconditioner_rank: int = 128, random_state=0, device: str = "auto"):
        self.C = C
        self.standardize = standardize
        self.fit_intercept = fit_intercept
        self.max_iter = max_iter
        self.tol = tol
        self.warm_start = warm_start
        self.preconditioner_rank = preconditioner_rank
        self.random_state = random_state
        self.device = device

    def _check_params(self) -> None:
        POSITIVE_FLOAT.check("C", self.C)
        POSITIVE_INT.check("max_iter", self.max_iter)
        NON_NEGATIVE_FLOAT.check("tol", self.tol)
        NON_NEGATIVE_INT.check("preconditioner_rank", self.preconditioner_rank)

    def _prepare(self, X, y) -> tuple[_Problem, np.ndarray]:
        self._check_params()
        X, y = validate_data(self, X, y, dtype=[np.float32, np.float64], order="C")
        classes, y_idx = check_classes(y, type(self).__name__)
        problem = _Problem(X, y_idx, len(classes), standardize=self.standardize,
                           fit_intercept=self.fit_intercept, device=resolve_device(self.device),
                           preconditioner_rank=self.preconditioner_rank,
                           random_state=self.random_state)
        return problem, classes

    def fit(self, X, y) -> LogisticHead:
        """Fit on features ``X`` (n_samples, n_features) and labels ``y``."""
        problem, classes = self._prepare(X, y)
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


def logistic_path(X, y, Cs, **params) -> list[LogisticHead]:
    """Fit one :class:`LogisticHead` per ``C``, warm-starting each from the previous.

    The data are validated, moved to the device, standardised and preconditioned once for the
    whole path, and each fit starts from the last solution, so a path costs far less than
    ``len(Cs)`` independent fits. ``Cs`` are visited in increasing order (strong
    regularisation first, where the solution is cheapest), and the heads are returned in
    the order given.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features)
    y : array-like of shape (n_samples,)
    Cs : sequence of float
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
    problem, classes = template._prepare(X, y)
    theta = problem.zeros()
    heads: dict[float, LogisticHead] = {}
    for C in sorted(set(Cs)):
        head = LogisticHead(**{**template.get_params(), "C": C})
        head._check_params()
        theta, n_iter, status = problem.solve(C, theta, head.max_iter, head.tol)
        head.n_features_in_ = template.n_features_in_
        if hasattr(template, "feature_names_in_"):
            head.feature_names_in_ = template.feature_names_in_
        head._set_solution(problem, classes, theta, n_iter, status)
        heads[C] = head
    return [heads[C] for C in Cs]
