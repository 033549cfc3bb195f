"""The L-BFGS behind LogisticHead (featurebank/heads/_lbfgs.py)."""

import numpy as np
import pytest
from scipy.optimize import minimize, rosen, rosen_der

from featurebank.heads._lbfgs import lbfgs


def _logistic(seed=0, n=400, d=12):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)) * np.geomspace(5, 0.5, d)
    y = (X @ rng.standard_normal(d) + rng.standard_normal(n) > 0).astype(float)

    def fun(w):
        z = X @ w
        return (np.mean(np.logaddexp(0, z) - y * z) + 1e-3 * w @ w / 2,
                X.T @ (1 / (1 + np.exp(-z)) - y) / n + 1e-3 * w)

    return fun, d


def test_minimises_rosenbrock():
    res = lbfgs(lambda x: (rosen(x), rosen_der(x)), np.array([-1.2, 1.0, -0.5, 0.8]),
                max_iter=500, gtol=1e-8, ftol=0)
    assert res.status == 0
    np.testing.assert_allclose(res.x, 1, atol=1e-6)
    assert res.n_eval >= res.n_iter


def test_takes_scipys_path_on_a_smooth_problem():
    # Same algorithm and stopping rules as L-BFGS-B without bounds: the same solution in
    # about the same number of iterations.
    fun, d = _logistic()
    ours = lbfgs(fun, np.zeros(d), max_iter=200, gtol=1e-6)
    ref = minimize(fun, np.zeros(d), jac=True, method="L-BFGS-B",
                   options={"maxiter": 200, "gtol": 1e-6, "ftol": 64 * np.finfo(float).eps})
    assert ours.status == 0 and np.abs(fun(ours.x)[1]).max() <= 1e-6
    np.testing.assert_allclose(ours.x, ref.x, atol=1e-5)
    assert abs(ours.n_iter - ref.nit) <= 3


def test_iteration_limit_and_custom_gradient_norm():
    fun, d = _logistic()
    res = lbfgs(fun, np.zeros(d), max_iter=3, gtol=1e-10)
    assert (res.status, res.n_iter) == (1, 3)
    # the stopping test reads grad_norm: a huge scale on it keeps the run going to max_iter
    loose = lbfgs(fun, np.zeros(d), max_iter=200, gtol=1e-3)
    strict = lbfgs(fun, np.zeros(d), max_iter=200, gtol=1e-3,
                   grad_norm=lambda g: 1e6 * np.abs(g).max(), ftol=0)
    assert strict.n_iter > loose.n_iter


def test_a_wrong_gradient_ends_with_status_2_not_a_loop():
    res = lbfgs(lambda x: (float(x @ x), -2 * x), np.ones(3), max_iter=100, gtol=1e-8)
    assert res.status == 2 and res.n_iter == 0
    np.testing.assert_array_equal(res.x, np.ones(3))  # nothing worse than the start


@pytest.mark.parametrize("x0", [np.zeros(5), np.full(5, 3.0)])
def test_starting_at_the_optimum_returns_at_once(x0):
    res = lbfgs(lambda x: (float(((x - x0) ** 2).sum()), 2 * (x - x0)), x0, max_iter=10,
                gtol=1e-8)
    assert (res.n_iter, res.n_eval, res.status) == (0, 1, 0)


def test_stop_ends_a_run_at_the_iterate_it_was_shown_and_on_done_hears_of_it():
    from featurebank.heads._lbfgs import lbfgs_many

    fun, d = _logistic()
    seen = []

    def stop(x, it):
        seen.append((it, x.copy()))
        return it == 4

    res = lbfgs(fun, np.zeros(d), max_iter=200, gtol=1e-10, stop=stop)
    assert (res.status, res.n_iter) == (3, 4) and [it for it, _ in seen] == [1, 2, 3, 4]
    np.testing.assert_array_equal(res.x, seen[-1][1])
    free = lbfgs(fun, np.zeros(d), max_iter=4, gtol=1e-10)  # the same four iterations
    np.testing.assert_array_equal(res.x, free.x)
    ended = []
    results = lbfgs_many(lambda points, keys: [fun(x) for x in points], [np.zeros(d)] * 2,
                         [{"max_iter": 200, "gtol": 1e-6, "stop": stop},
                          {"max_iter": 200, "gtol": 1e-6}], ["stopped", "free"],
                         on_done=lambda key, r: ended.append((key, r.status)))
    assert ended == [("stopped", 3), ("free", 0)] and results[1].status == 0
