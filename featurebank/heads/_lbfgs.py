"""A small L-BFGS in numpy, for objectives whose every evaluation is one pass over the data.

SciPy's L-BFGS-B spends a large share of such a pass on its own bookkeeping (docs/design.md has
the figures) and cannot be told to stop on a gradient other than the one it is given, which a
preconditioned problem needs. This one is the
textbook algorithm (Nocedal & Wright, Alg. 7.4 with the strong-Wolfe line search of Alg.
3.5/3.6, cubic interpolation), with L-BFGS-B's stopping rules: the largest gradient component
``<= gtol``, or a relative decrease of the objective ``<= ftol``. Unpreconditioned, it takes the
same number of iterations as SciPy's on logistic regression.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import numpy as np

_C1, _C2 = 1e-4, 0.9  # sufficient decrease and curvature constants (L-BFGS-B's)


class LbfgsResult(NamedTuple):
    x: np.ndarray
    fun: float
    n_iter: int
    n_eval: int
    status: int  # 0 converged, 1 iteration limit, 2 line search found no decrease, 3 stop()


def _cubic_min(a, fa, da, b, fb, db):
    """Minimiser of the cubic through (a, fa, da), (b, fb, db), safeguarded inside [a, b]."""
    d1 = da + db - 3 * (fa - fb) / (a - b)
    rad = d1 * d1 - da * db
    lo, hi = min(a, b), max(a, b)
    if rad >= 0:
        d2 = np.copysign(np.sqrt(rad), b - a)
        t = b - (b - a) * (db + d2 - d1) / (db - da + 2 * d2)
        if lo + 0.1 * (hi - lo) <= t <= hi - 0.1 * (hi - lo):
            return t
    return (a + b) / 2


def _line_search(x, d, f0, dg0, t, maxls):
    """Strong-Wolfe step from ``x`` along the descent direction ``d`` (a generator: it yields
    the points to evaluate and is sent back ``(f, g)``).

    Near the optimum a float32 objective stops resolving the decrease a step makes, so a
    step with the slope condition is also accepted when ``f`` is within round-off of ``f0``
    (Hager & Zhang's approximate Wolfe condition).
    Returns ``(t, f, g)``, or None when ``maxls`` evaluations found no acceptable step or the
    bracket collapsed (each further trial would be a wasted pass over the data).
    """
    best = None
    prev = (0.0, f0, dg0)
    lo = hi = None
    noise = 1e-7 * abs(f0)  # LogisticHead's float32 objective: 1e-8 to 1e-7 relative error
    for i in range(maxls):
        f, g = yield x + t * d
        dg = float(d @ g)
        armijo = f <= f0 + _C1 * t * dg0
        if abs(dg) <= -_C2 * dg0 and (armijo or f <= f0 + noise):
            return t, f, g
        if armijo and (best is None or f < best[1]):
            best = (t, f, g)
        if lo is None:  # still bracketing
            if not armijo or (i > 0 and f >= prev[1]):
                lo, hi = prev, (t, f, dg)
            elif dg >= 0:
                lo, hi = (t, f, dg), prev
            else:
                prev = (t, f, dg)
                t *= 4
                continue
        else:  # zooming inside [lo, hi]
            if not armijo or f >= lo[1]:
                hi = (t, f, dg)
            else:
                if dg * (hi[0] - lo[0]) >= 0:
                    hi = lo
                lo = (t, f, dg)
        t_next = _cubic_min(*lo, *hi)
        if abs(hi[0] - lo[0]) <= 1e-10 * max(lo[0], hi[0]) or t_next == t:  # collapsed
            break
        t = t_next
    return best


def _direction(g: np.ndarray, S: list, Y: list) -> np.ndarray:
    """The two-loop recursion: ``-H g`` with ``H0 = (s'y / y'y) I``."""
    d = -g
    alphas = []
    for s, y in zip(reversed(S), reversed(Y)):
        a = (s @ d) / (s @ y)
        alphas.append(a)
        d = d - a * y
    if S:
        d = d * ((S[-1] @ Y[-1]) / (Y[-1] @ Y[-1]))
    for s, y, a in zip(S, Y, reversed(alphas)):
        d = d + (a - (y @ d) / (s @ y)) * s
    return d


def lbfgs_steps(x0: np.ndarray, *, max_iter: int, gtol: float,
                ftol: float = 64 * np.finfo(float).eps, m: int = 10, maxls: int = 50,
                grad_norm: Callable[[np.ndarray], float] | None = None,
                stop: Callable[[np.ndarray, int], bool] | None = None):
    """L-BFGS as a generator: it yields each point to evaluate, is sent ``(f, g)`` back, and
    returns an :class:`LbfgsResult` (``StopIteration.value``). Several of them can then share
    one pass over the data (:func:`lbfgs_many`). ``stop(x, iteration)``, asked after each
    iteration that did not end the run, ends it there when true (status 3)."""
    grad_norm = grad_norm or (lambda g: float(np.abs(g).max()))
    x = np.array(x0, dtype=np.float64)
    f, g = yield x
    n_eval = 1
    S: list[np.ndarray] = []
    Y: list[np.ndarray] = []
    if grad_norm(g) <= gtol:
        return LbfgsResult(x, f, 0, n_eval, 0)
    for it in range(1, max_iter + 1):
        d = _direction(g, S, Y)
        dg = float(d @ g)
        if not dg < 0:  # lost descent (round-off): restart from steepest descent
            S, Y, d, dg = [], [], -g, -float(g @ g)
        # the first step of a fresh memory has unit length (L-BFGS-B's rule); later, t = 1
        t0 = 1.0 if S else min(1.0, 1.0 / np.sqrt(float(g @ g)))
        search = _line_search(x, d, f, dg, t0, maxls)
        step, sent = None, None
        try:
            while True:
                point = search.send(sent)
                sent = yield point
                n_eval += 1
        except StopIteration as done:
            step = done.value
        if step is None:
            if S:  # stale curvature pairs: forget them and try steepest descent once more
                S, Y = [], []
                continue
            return LbfgsResult(x, f, it - 1, n_eval, 2)
        t, f_new, g_new = step
        s, y = t * d, g_new - g
        if s @ y > np.finfo(float).eps * (y @ y):  # keep H positive definite
            S.append(s)
            Y.append(y)
            if len(S) > m:
                S.pop(0)
                Y.pop(0)
        x, f_old, f, g = x + s, f, f_new, g_new
        # L-BFGS-B's rules; a step accepted within round-off that leaves f as it was ends
        # the run too, since the objective can no longer tell better from worse
        if grad_norm(g) <= gtol or f_old - f <= ftol * max(abs(f_old), abs(f), 1.0):
            return LbfgsResult(x, f, it, n_eval, 0)
        if stop is not None and it < max_iter and stop(x, it):
            return LbfgsResult(x, f, it, n_eval, 3)
    return LbfgsResult(x, f, max_iter, n_eval, 1)


def lbfgs(fun: Callable[[np.ndarray], tuple[float, np.ndarray]], x0: np.ndarray,
          **options) -> LbfgsResult:
    """Minimise ``fun`` (returning value and gradient) from ``x0``.

    ``options`` are :func:`lbfgs_steps`'s: ``max_iter``, ``gtol``, ``ftol``, ``m``, ``maxls``,
    ``stop(x, iteration)`` and ``grad_norm(g)``, the quantity compared with ``gtol``
    (default: ``max |g|``); a preconditioned problem passes the norm of the gradient in the
    original variables.
    """
    return lbfgs_many(lambda points, _: [fun(x) for x in points], [x0], [options], [None])[0]


def lbfgs_many(fun_many: Callable[[list[np.ndarray], list[Any]],
                                  list[tuple[float, np.ndarray]]],
               x0s: list[np.ndarray], options: list[dict], keys: list[Any],
               on_done: Callable[[Any, LbfgsResult], Any] | None = None
               ) -> list[LbfgsResult]:
    """Minimise several problems in lockstep: each round, ``fun_many(points, keys)``
    evaluates the next point of every problem still running (one pass over the data for all;
    ``keys`` say which problems they are), each problem keeping its own L-BFGS memory, line
    search and stopping test; a problem that has ended drops out of the rounds (and is
    given to ``on_done(key, result)``)."""
    runs = [lbfgs_steps(x0, **o) for x0, o in zip(x0s, options)]
    points = {i: next(r) for i, r in enumerate(runs)}
    results: dict[int, LbfgsResult] = {}
    while points:
        active = list(points)
        values = fun_many([points[i] for i in active], [keys[i] for i in active])
        for i, value in zip(active, values):
            try:
                points[i] = runs[i].send(value)
            except StopIteration as done:
                results[i] = done.value
                del points[i]
                if on_done is not None:
                    on_done(keys[i], done.value)
    return [results[i] for i in range(len(runs))]
