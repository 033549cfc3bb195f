"""Sample and class weights in the heads: scikit-learn's weighted objective, its meanings of
``class_weight``, the streamed and batched paths, and what weights do on an imbalanced set."""

import warnings

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import recall_score
from sklearn.preprocessing import StandardScaler
from sklearn.utils.class_weight import compute_class_weight

from conftest import blobs
from featurebank import ParameterError
from featurebank.heads import LogisticHead, MLPHead, logistic_path
from featurebank.heads._base import class_weight_vector


def _imbalanced(n=600, d=20, n_classes=3, seed=0, minority=0.05):
    """Class 0 the majority; the others share ``minority`` of the rows each."""
    rng = np.random.default_rng(seed)
    y = np.where(rng.random(n) < 1 - minority * (n_classes - 1), 0,
                 rng.integers(1, n_classes, n))
    X = rng.standard_normal((n, d)) + y[:, None] * 0.6
    return X.astype(np.float32), y


def _weighted_objective(Xs, y, coef, intercept, C, w):
    """scikit-learn's weighted lbfgs objective in float64, standardised space:
    sum w CE / sum w + ||W||^2 / (2 C sum w)."""
    z = Xs @ coef.T + intercept
    if z.shape[1] == 1:
        loss = np.logaddexp(0, z[:, 0]) - (y == y.max()) * z[:, 0]
    else:
        loss = logsumexp(z, 1) - z[np.arange(len(y)), y]
    return (w * loss).sum() / w.sum() + (coef ** 2).sum() / (2 * C * w.sum())


def _in(head, scaler):
    """A fitted head's raw-space coef_/intercept_ taken to the coordinates of ``scaler``."""
    return head.coef_ * scaler.scale_, head.intercept_ + head.coef_ @ scaler.mean_


@pytest.mark.parametrize("class_weight", [None, "balanced", {0: 1.0, 1: 5.0}])
@pytest.mark.parametrize("n_classes", [2, 3])
def test_weighted_objective_is_scikit_learns(n_classes, class_weight):
    X, y = _imbalanced(n_classes=n_classes)
    sw = np.random.default_rng(1).random(len(y)) * 3
    scaler = StandardScaler().fit(X, sample_weight=sw)  # the pipeline's scaler, weighted too
    Xs = scaler.transform(X.astype(np.float64))
    sk = LogisticRegression(C=0.5, class_weight=class_weight, tol=1e-10, max_iter=10000)
    sk.fit(Xs, y, sample_weight=sw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        head = LogisticHead(C=0.5, class_weight=class_weight, tol=1e-6, max_iter=5000)
        head.fit(X, y, sample_weight=sw)
    np.testing.assert_allclose(head.mean_, scaler.mean_, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(head.scale_, scaler.scale_, rtol=1e-4)
    cw = compute_class_weight(class_weight, classes=np.unique(y), y=y, sample_weight=sw)
    w = sw * cw[y]  # scikit-learn folds class weights into the sample weights
    best = _weighted_objective(Xs, y, sk.coef_, sk.intercept_, 0.5, w)
    assert _weighted_objective(Xs, y, *_in(head, scaler), 0.5, w) <= best * (1 + 1e-6)
    np.testing.assert_allclose(head.predict_proba(X), sk.predict_proba(Xs), atol=2e-3)


def test_balanced_class_weights_are_scikit_learns():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 200) ** 2  # labels 0, 1, 4, 9, unequal counts
    sw = rng.random(200)
    classes, y_idx = np.unique(y, return_inverse=True)
    for weights in (None, sw):
        np.testing.assert_allclose(
            class_weight_vector("balanced", classes, y_idx, weights),
            compute_class_weight("balanced", classes=classes, y=y, sample_weight=weights))
    np.testing.assert_allclose(class_weight_vector({4: 3.0}, classes, y_idx, None),
                               [1.0, 1.0, 3.0, 1.0])


def test_a_weight_of_two_is_the_row_twice():
    # the weighted and the repeated problems are one objective: each fit's solution is optimal
    # for the other's data, to the precision either reaches
    X, y = blobs(300, d=12, n_classes=3, spread=0.5)
    counts = np.random.default_rng(0).integers(0, 4, len(y))
    Xr, yr = X.repeat(counts, 0), y.repeat(counts)
    weighted = LogisticHead(C=0.3, tol=1e-6, max_iter=2000).fit(X, y, sample_weight=counts)
    repeated = LogisticHead(C=0.3, tol=1e-6, max_iter=2000).fit(Xr, yr)
    scaler = StandardScaler().fit(Xr)
    np.testing.assert_allclose(weighted.mean_, scaler.mean_, rtol=1e-5)
    np.testing.assert_allclose(weighted.scale_, scaler.scale_, rtol=1e-4)
    Xs, ones = scaler.transform(Xr.astype(np.float64)), np.ones(len(yr))
    f = [_weighted_objective(Xs, yr, *_in(h, scaler), 0.3, ones) for h in (weighted, repeated)]
    assert f[0] == pytest.approx(f[1], rel=1e-6)
    np.testing.assert_allclose(weighted.predict_proba(X), repeated.predict_proba(X), atol=1e-3)
    # zero weights are rows left out
    keep = counts > 0
    dropped = LogisticHead(C=0.3, tol=1e-6, max_iter=2000).fit(X[keep], y[keep],
                                                               sample_weight=counts[keep])
    np.testing.assert_allclose(dropped.predict_proba(X), weighted.predict_proba(X), atol=1e-3)


def test_the_path_and_the_stream_take_weights(tmp_path):
    import h5py

    from featurebank.rows import StreamedRows

    X, y = _imbalanced(1500, d=16)
    X = X.astype(np.float16).astype(np.float32)  # what a float16 bank gives
    sw = np.random.default_rng(2).random(len(y)) + 0.5
    alone = [LogisticHead(C=C, class_weight="balanced", tol=1e-6, max_iter=2000).fit(
        X, y, sample_weight=sw) for C in (0.1, 1.0)]
    path = logistic_path(X, y, [0.1, 1.0], sample_weight=sw, class_weight="balanced",
                         tol=1e-6, max_iter=2000)
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["x"] = X.astype(np.float16)
    with h5py.File(tmp_path / "x.h5", "r") as f:
        streamed = LogisticHead(C=1.0, class_weight="balanced", tol=1e-6, max_iter=2000).fit(
            StreamedRows(f["x"], chunk=200), y, sample_weight=sw)
    for a, b in [(alone[0], path[0]), (alone[1], path[1]), (alone[1], streamed)]:
        np.testing.assert_allclose(a.mean_, b.mean_, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(a.predict_proba(X), b.predict_proba(X), atol=2e-3)


def test_the_cuda_kernel_weighs_rows_as_the_cpu_kernel():
    from featurebank.heads.logistic import _scores_grad_numpy, _scores_grad_torch

    rng = np.random.default_rng(0)
    X = rng.standard_normal((2000, 10)).astype(np.float32)
    y, w = rng.integers(0, 3, 2000), rng.random(2000).astype(np.float32)
    W, b = rng.standard_normal((3, 10)).astype(np.float32), np.zeros(3, np.float32)
    a = _scores_grad_numpy(X, W, b, y, 3, False, w)
    t = _scores_grad_torch(*map(torch.from_numpy, (X, W, b, y)), 3, False,
                           torch.from_numpy(w))
    unweighted = _scores_grad_numpy(X, W, b, y, 3, False)
    assert a[0] == pytest.approx(t[0], rel=1e-5) and a[0] != pytest.approx(unweighted[0])
    np.testing.assert_allclose(a[1], t[1], rtol=1e-4, atol=1e-3)
    # weights of 2 double the sums exactly
    twice = _scores_grad_numpy(X, W, b, y, 3, False, np.full(2000, 2, np.float32))
    np.testing.assert_allclose(twice[0], 2 * unweighted[0], rtol=1e-12)


@pytest.mark.parametrize("Head", [
    lambda cw: LogisticHead(C=1.0, class_weight=cw),
    lambda cw: MLPHead((32,), class_weight=cw, max_iter=60, random_state=0)])
def test_balanced_weights_raise_minority_recall(Head):
    # 95 / 5: the unweighted head mostly answers the majority; balanced weights find the rest
    X, y = _imbalanced(4000, d=10, n_classes=2, seed=3, minority=0.05)
    Xt, yt = _imbalanced(4000, d=10, n_classes=2, seed=4, minority=0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        plain, balanced = Head(None).fit(X, y), Head("balanced").fit(X, y)
    r_plain = recall_score(yt, plain.predict(Xt), pos_label=1)
    r_bal = recall_score(yt, balanced.predict(Xt), pos_label=1)
    assert r_bal > r_plain + 0.2, (r_plain, r_bal)


def test_mlp_weights_scale_free_and_in_the_loss():
    X, y = blobs(400, d=8, n_classes=3, spread=0.8)
    kw = dict(hidden_layer_sizes=(16,), max_iter=20, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        plain = MLPHead(**kw).fit(X, y)
        ones = MLPHead(**kw).fit(X, y, sample_weight=np.full(len(y), 3.0))
        skewed = MLPHead(**kw).fit(X, y, sample_weight=np.where(y == 0, 10.0, 1.0))
    # weights are relative: all 3 trains the unweighted network (up to float32 rounding)
    np.testing.assert_allclose(ones.predict_proba(X), plain.predict_proba(X), atol=1e-4)
    # weighing class 0 up moves probability towards it
    assert skewed.predict_proba(X)[:, 0].mean() > plain.predict_proba(X)[:, 0].mean() + 0.02
    # the weighted loss is the weighted mean of each row's cross-entropy
    net = torch.nn.Linear(8, 3)
    x, t = torch.from_numpy(X[:50]), torch.from_numpy(y[:50])
    w = torch.rand(50)
    with torch.no_grad():
        rows = torch.nn.functional.cross_entropy(net(x), t, reduction="none")
        got = MLPHead._loss(net, x, t, torch.zeros(8), torch.ones(8), 3, w)
    assert float(got) == pytest.approx(float((rows * w).mean()), rel=1e-6)


@pytest.mark.parametrize("Head", [LogisticHead, lambda **kw: MLPHead((8,), **kw)])
def test_bad_weights_are_clear_errors(Head):
    X, y = blobs(60, d=4, n_classes=3)
    with pytest.raises(ValueError, match=r"sample_weight must have shape \(60,\)"):
        Head().fit(X, y, sample_weight=np.ones(59))
    with pytest.raises(ValueError, match="finite, non-negative.*negative"):
        Head().fit(X, y, sample_weight=-np.ones(60))
    with pytest.raises(ValueError, match="at least one non-zero weight"):
        Head().fit(X, y, sample_weight=np.zeros(60))
    with pytest.raises(ParameterError, match="class_weight must be None, 'balanced' or a dict"):
        Head(class_weight="balance").fit(X, y)
    with pytest.raises(ParameterError, match=r"names classes \[7\] that are not in y"):
        Head(class_weight={7: 2.0}).fit(X, y)
    with pytest.raises(ValueError, match="zero on every row"):
        Head(class_weight={0: 0.0, 1: 0.0, 2: 0.0}).fit(X, y)
