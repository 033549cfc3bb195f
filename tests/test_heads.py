import warnings

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, RidgeClassifier
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from conftest import blobs
from featurebank import FeatureBank, ParameterError
from featurebank.heads import (LogisticHead, MLPHead, get_head, get_head_spec, is_graftable,
                               list_heads, logistic_path, to_torch)
from featurebank.heads.mlp import _project


@pytest.fixture(scope="module")
def data():
    X, y = blobs(600, d=40, n_classes=4, spread=0.6)
    X[:, 0] *= 50  # badly scaled columns: standardisation has work to do
    X[:, 1] += 20
    return X[:450], y[:450], X[450:], y[450:]


def _objective(Xs, y, coef, intercept, C):
    """scikit-learn's lbfgs objective in float64, standardised space."""
    z = Xs @ coef.T + intercept
    if z.shape[1] == 1:
        z = z[:, 0]
        loss = np.logaddexp(0, z) - (y == y.max()) * z
    else:
        loss = logsumexp(z, 1) - z[np.arange(len(y)), y]
    return loss.mean() + (coef ** 2).sum() / (2 * C * len(y))


def _head_objective(head, Xs, y, C):
    """The objective of a fitted head, its raw-space coef_/intercept_ taken back to ``Xs``."""
    return _objective(Xs, y, head.coef_ * head.scale_, head.intercept_ + head.coef_ @ head.mean_,
                      C)


@pytest.mark.parametrize("preconditioner_rank", [0, 128])
@pytest.mark.parametrize("n_classes", [2, 4])
def test_logistic_head_matches_scikit_learn(n_classes, preconditioner_rank):
    X, y = blobs(500, d=30, n_classes=n_classes, spread=0.5)
    sk = make_pipeline(StandardScaler(), LogisticRegression(C=0.3, tol=1e-8, max_iter=5000))
    sk.fit(X, y)
    with warnings.catch_warnings():  # tol=1e-6 is past float32 precision on some of these
        warnings.simplefilter("ignore", ConvergenceWarning)
        head = LogisticHead(C=0.3, tol=1e-6, max_iter=5000, random_state=0,
                            preconditioner_rank=preconditioner_rank).fit(X, y)
        Xs = StandardScaler().fit_transform(X.astype(np.float64))
        raw = LogisticHead(C=0.3, standardize=False, tol=1e-6, max_iter=5000, random_state=0,
                           preconditioner_rank=preconditioner_rank).fit(Xs, y)
    # the same objective, minimised as far as scikit-learn's float64 solver gets it (the
    # optimum is flat: 1e-8 of objective moves decision values by 1e-3)
    best = _objective(Xs, y, sk[-1].coef_, sk[-1].intercept_, 0.3)
    assert _head_objective(head, Xs, y, 0.3) <= best * (1 + 1e-6)
    np.testing.assert_allclose(head.decision_function(X), sk.decision_function(X), atol=2e-2)
    np.testing.assert_allclose(head.predict_proba(X), sk.predict_proba(X), atol=2e-3)
    assert (head.predict(X) == sk.predict(X)).mean() >= 0.998
    assert head.coef_.shape == ((1 if n_classes == 2 else n_classes), 30)
    # standardize=False is a bare LogisticRegression
    assert _head_objective(raw, Xs, y, 0.3) <= best * (1 + 1e-6)
    np.testing.assert_allclose(raw.decision_function(Xs), sk.decision_function(X), atol=2e-2)
    np.testing.assert_allclose(raw.mean_, 0) and np.testing.assert_allclose(raw.scale_, 1)


@pytest.mark.parametrize("binary", [True, False])
def test_cuda_kernel_equals_the_cpu_kernel(binary):
    # The torch kernel serves CUDA; on CPU tensors it must give the numpy kernel's numbers.
    from featurebank.heads.logistic import _scores_grad_numpy, _scores_grad_torch

    rng = np.random.default_rng(0)
    X = rng.standard_normal((3000, 20)).astype(np.float32)
    k = 1 if binary else 4
    y = rng.integers(0, max(k, 2), 3000)
    W = rng.standard_normal((k, 20)).astype(np.float32)
    b = rng.standard_normal(k).astype(np.float32)
    a = _scores_grad_numpy(X, W, b, y, k, binary)
    t = _scores_grad_torch(*map(torch.from_numpy, (X, W, b, y)), k, binary)
    assert a[0] == pytest.approx(t[0], rel=1e-5)
    np.testing.assert_allclose(a[1], t[1], rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(a[2], t[2], rtol=1e-4, atol=1e-3)


def test_preconditioner_cuts_iterations_on_ill_conditioned_features():
    # A few dominant directions (as in CNN features) make plain L-BFGS crawl; the sketched
    # preconditioner flattens them and reaches the same objective in far fewer iterations.
    rng = np.random.default_rng(0)
    n, d = 3000, 200
    y = rng.integers(0, 3, n)
    latent = rng.standard_normal((n, 8)) * 10 + y[:, None]
    X = (latent @ rng.standard_normal((8, d)) + rng.standard_normal((n, d))).astype(np.float32)
    Xs = StandardScaler().fit_transform(X.astype(np.float64))
    plain = LogisticHead(C=1.0, preconditioner_rank=0, max_iter=1000).fit(X, y)
    pre = LogisticHead(C=1.0, preconditioner_rank=16, max_iter=1000, random_state=0).fit(X, y)
    assert pre.n_iter_[0] <= plain.n_iter_[0] / 2
    f = [_head_objective(h, Xs, y, 1.0) for h in (plain, pre)]
    assert f[1] <= f[0] * (1 + 1e-4)
    # the sketch is seeded: the same random_state gives the same model, bit for bit
    again = LogisticHead(C=1.0, preconditioner_rank=16, max_iter=1000, random_state=0).fit(X, y)
    np.testing.assert_array_equal(again.coef_, pre.coef_)


@pytest.mark.parametrize("as_torch", [False, True])
def test_standardisation_statistics_match_standard_scaler(as_torch):
    # numpy blocks (the CPU path, h5py streams) and torch blocks (CUDA, the fine-tune) give
    # StandardScaler's statistics, even with a large offset and a constant feature
    from featurebank.heads._base import blockwise_mean_scale

    rng = np.random.default_rng(0)
    X = (rng.standard_normal((5000, 6)) * [1, 10, 0.01, 1, 1, 0] + [0, 1e4, 3, -7, 0, 5])
    X = X.astype(np.float32)
    blocks = [X[s:s + 700] for s in range(0, 5000, 700)] + [X[:0]]
    if as_torch:
        blocks = [torch.from_numpy(b) for b in blocks]
    mean, scale = blockwise_mean_scale(blocks)
    ref = StandardScaler().fit(X.astype(np.float64))
    np.testing.assert_allclose(mean, ref.mean_, rtol=1e-6)
    np.testing.assert_allclose(scale, ref.scale_, rtol=1e-4)
    assert scale[5] == 1.0


@pytest.mark.parametrize("as_torch", [False, True])
def test_mlp_standardises_its_training_rows_only(as_torch):
    # MLPHead's in-memory statistics cover exactly the rows it trains on (not the early-stopping
    # rows), gathered block by block: numpy on the CPU, the device tensor on CUDA (run here on
    # a CPU tensor)
    from featurebank.heads._base import standardization
    from featurebank.heads.mlp import _MemoryRows

    rng = np.random.default_rng(2)
    X = (rng.standard_normal((20000, 5)) * [1, 3, 0.1, 1, 0] + [5, -1e3, 0, 2, 7])
    X = X.astype(np.float32)
    train = np.sort(rng.choice(len(X), 17000, replace=False))
    if as_torch:
        mean, scale = standardization(torch.from_numpy(X), True, rows=train)
    else:
        mean, scale = (t.numpy() for t in _MemoryRows(X, torch.device("cpu")).standardization(
            train, True))
    ref = StandardScaler().fit(X[train].astype(np.float64))
    np.testing.assert_allclose(mean, ref.mean_, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(scale, ref.scale_, rtol=1e-5)
    assert scale[4] == 1.0


def test_preconditioner_is_invertible():
    from featurebank.heads.logistic import _Preconditioner

    rng = np.random.default_rng(1)
    X = rng.standard_normal((500, 40)).astype(np.float32) @ np.diag(np.geomspace(30, 1, 40))
    X = X.astype(np.float32)
    P = _Preconditioner.from_sketch(X, X.mean(0).astype(np.float64),
                                    X.std(0).astype(np.float64), 10, np.random.RandomState(0))
    assert P.V.shape == (40, 10) and np.all(P.s <= 0) and np.all(P.s > -1)
    np.testing.assert_allclose(P.V.T @ P.V, np.eye(10), atol=1e-6)
    M = rng.standard_normal((3, 40))
    np.testing.assert_allclose(P.inverse(P.apply(M)), M, atol=1e-10)
    # rank 0 / one feature: no preconditioner
    assert _Preconditioner.from_sketch(X[:, :1], np.zeros(1), np.ones(1), 10,
                                       np.random.RandomState(0)) is None


@pytest.mark.parametrize("n_classes", [2, 4])
def test_the_cuda_code_path_solves_the_same_problem_on_cpu_tensors(n_classes):
    # What runs on a GPU (tensors on the device, torch standardisation, sketch and kernels),
    # run on CPU tensors: the same objective as the numpy path reaches.
    from featurebank.heads.logistic import _Problem

    X, y = blobs(800, d=50, n_classes=n_classes, spread=0.5)
    y_idx = np.unique(y, return_inverse=True)[1]
    kw = dict(standardize=True, fit_intercept=True, device=torch.device("cpu"),
              preconditioner_rank=16, random_state=0)
    problems = [_Problem(X, y_idx, n_classes, torch_kernels=t, **kw) for t in (False, True)]
    assert isinstance(problems[1].X, torch.Tensor) and isinstance(problems[0].X, np.ndarray)
    np.testing.assert_allclose(problems[1].mean, problems[0].mean, rtol=1e-6)
    np.testing.assert_allclose(problems[1].scale, problems[0].scale, rtol=1e-5)
    values = []
    for p in problems:
        theta, n_iter, status = p.solve(1.0, p.zeros(), 500, 1e-5)
        assert status == 0
        values.append(p.loss_grad(theta, 1.0)[0])
    assert values[1] == pytest.approx(values[0], rel=1e-5)
    # features a float16 bank gave are held in float16 on the device (lossless), computed
    # in float32 blocks: the same objective again
    X16 = X.astype(np.float16).astype(np.float32)
    half, full = (_Problem(X16, y_idx, n_classes, torch_kernels=t, **kw) for t in (True, False))
    assert half.X.dtype == torch.float16 and problems[1].X.dtype == torch.float32
    th = [p.solve(1.0, p.zeros(), 500, 1e-5)[0] for p in (half, full)]
    assert half.loss_grad(th[0], 1.0)[0] == pytest.approx(full.loss_grad(th[1], 1.0)[0],
                                                          rel=1e-5)
    from featurebank.heads.logistic import _scores_grad_torch

    args = (torch.from_numpy(np.ones((n_classes if n_classes > 2 else 1, 50), np.float32) / 50),
            torch.zeros(n_classes if n_classes > 2 else 1), half.y, half.k, half.k == 1)
    whole, blocks = (_scores_grad_torch(half.X, *args, block=b) for b in (1 << 16, 128))
    for a_, b_ in zip(whole, blocks):  # 800 rows in blocks of 128 sum to the same
        np.testing.assert_allclose(a_, b_, rtol=1e-5, atol=1e-6)
    # the batched path too: three Cs in the same passes, on torch kernels
    Cs = [0.01, 0.1, 1.0]
    solved = [p.solve_many(Cs, [p.zeros()] * 3, 500, 1e-5) for p in problems]
    for C, a, b in zip(Cs, *solved):
        assert a[2] == b[2] == 0
        assert problems[1].loss_grad(b[0], C)[0] == pytest.approx(
            problems[0].loss_grad(a[0], C)[0], rel=1e-5)


def test_regularisation_path_solves_every_C_in_the_same_passes(data, monkeypatch):
    import featurebank.heads.logistic as logistic

    X, y, _, _ = data
    Cs = [3.0, 0.1, 1.0, 0.3]
    real, widths = logistic._scores_grad_numpy, []

    def counting(X, Wr, *args, **kw):  # one call is one pass over X
        widths.append(len(Wr))
        return real(X, Wr, *args, **kw)

    monkeypatch.setattr(logistic, "_scores_grad_numpy", counting)
    path = logistic_path(X, y, Cs, tol=1e-5, max_iter=1000)
    path_passes, path_widths = len(widths), list(widths)
    assert [h.C for h in path] == Cs
    Xs = StandardScaler().fit_transform(X.astype(np.float64))
    alone_passes = []
    for C, h in zip(Cs, path):
        widths.clear()
        alone = LogisticHead(C=C, tol=1e-5, max_iter=1000).fit(X, y)
        alone_passes.append(len(widths))
        # the same problem from the same start and preconditioner: the same iterates
        assert h.n_iter_[0] == alone.n_iter_[0]
        f = [_head_objective(m, Xs, y, C) for m in (h, alone)]
        assert f[0] == pytest.approx(f[1], rel=1e-6)
        assert (h.predict(X) == alone.predict(X)).mean() >= 0.99
    # all four share each pass: as many passes as the longest fit, not the sum of all four;
    # the first passes evaluate 4 problems x 4 classes at once, then converged ones drop out
    assert path_passes == max(alone_passes) < sum(alone_passes)
    assert path_widths[0] == 16 and path_widths[-1] == 4 and path_widths == sorted(
        path_widths, reverse=True)


def test_warm_start_reuses_the_last_solution(data):
    X, y, _, _ = data
    head = LogisticHead(C=1.0, warm_start=True, tol=1e-5, max_iter=1000).fit(X, y)
    first = head.n_iter_[0]
    head.fit(X, y)
    assert head.n_iter_[0] < first


def test_convergence_warning(data):
    X, y, _, _ = data
    with pytest.warns(ConvergenceWarning, match=r"did not converge in max_iter=2"):
        LogisticHead(max_iter=2, tol=0).fit(X, y)


def test_string_labels_pipeline_and_grid_search(data):
    X, y, Xt, yt = data
    names = np.array(["ant", "bee", "cat", "dog"])
    head = LogisticHead().fit(X, names[y])
    assert head.classes_.tolist() == names.tolist()
    assert set(head.predict(Xt)) <= set(names)
    assert head.score(Xt, names[yt]) > 0.8
    grid = GridSearchCV(make_pipeline(StandardScaler(), LogisticHead(standardize=False)),
                        {"logistichead__C": [0.01, 1.0]}, cv=3).fit(X, y)
    assert grid.best_score_ > 0.8
    assert clone(head).get_params() == head.get_params()


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_mlp_head_learns_and_is_deterministic(data):
    X, y, Xt, yt = data
    a = MLPHead(hidden_layer_sizes=(32,), random_state=0, max_iter=60).fit(X, y)
    b = MLPHead(hidden_layer_sizes=(32,), random_state=0, max_iter=60).fit(X, y)
    assert a.score(Xt, yt) > 0.8
    np.testing.assert_array_equal(a.coefs_[0], b.coefs_[0])
    np.testing.assert_array_equal(a.predict_proba(Xt), b.predict_proba(Xt))
    c = MLPHead(hidden_layer_sizes=(32,), random_state=1, max_iter=60).fit(X, y)
    assert not np.array_equal(a.coefs_[0], c.coefs_[0])
    state = torch.random.get_rng_state()
    MLPHead(hidden_layer_sizes=(8,), random_state=0, max_iter=2, dropout=0.5).fit(X, y)
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched


@pytest.mark.parametrize("values, dtype", [([0.5, 1.0, 0.0], torch.float16),
                                           ([0.1, 1.0, 0.0], torch.float32),  # rounds
                                           ([1e5, 1.0, 0.0], torch.float32)])  # overflows
def test_features_go_to_the_device_in_float16_only_when_lossless(values, dtype):
    from featurebank.heads._base import on_device

    X = np.array([values] * 3, np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t = on_device(X, torch.device("cpu"))
    assert t.dtype == dtype
    np.testing.assert_array_equal(t.float().numpy(), X)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_mlp_holds_a_float16_banks_rows_in_float16_on_the_device(data, monkeypatch):
    # what CUDA does (compact storage), forced on the CPU: the same batches, the same head
    import featurebank.heads.mlp as mlp

    X16 = data[0].astype(np.float16).astype(np.float32)  # rows as a float16 bank gives them
    kw = dict(hidden_layer_sizes=(16,), random_state=0, max_iter=5)
    ref = MLPHead(**kw).fit(X16, data[1])
    stored = []
    real = mlp._MemoryRows.__init__

    def compact(self, X, device, compact=None):
        real(self, X, device, compact=True)
        stored.append(self.X.dtype)

    monkeypatch.setattr(mlp._MemoryRows, "__init__", compact)
    half = MLPHead(**kw).fit(X16, data[1])
    np.testing.assert_array_equal(half.coefs_[0], ref.coefs_[0])
    MLPHead(**kw).fit(data[0], data[1])  # float32 values float16 would round: kept float32
    assert stored == [torch.float16, torch.float32]


def test_mlp_early_stopping_restores_the_best_epoch(data):
    X, y, _, _ = data
    head = MLPHead(hidden_layer_sizes=(256, 256), learning_rate=3e-3, weight_decay=0,
                   n_iter_no_change=3, max_iter=200, random_state=0).fit(X, y)
    curve = head.validation_loss_curve_
    assert head.n_iter_ < 200 and len(curve) == head.n_iter_
    assert head.best_loss_ == pytest.approx(min(curve))
    assert int(np.argmin(curve)) == head.n_iter_ - 1 - 3  # stopped 3 epochs after the best


def test_mlp_without_early_stopping_warns_at_max_iter(data):
    X, y, _, _ = data
    with pytest.warns(ConvergenceWarning, match="max_iter=2 epochs"):
        MLPHead(hidden_layer_sizes=(8,), early_stopping=False, max_iter=2,
                random_state=0).fit(X, y)


def _graftables(X, y):
    return [
        LogisticHead().fit(X, y),
        MLPHead(hidden_layer_sizes=(16, 8), activation="gelu", random_state=0).fit(X, y),
        MLPHead(hidden_layer_sizes=(16,), activation="tanh", random_state=0).fit(X, y),
        LogisticRegression(max_iter=2000).fit(X, y),
        make_pipeline(StandardScaler(), LogisticRegression()).fit(X, y),
        make_pipeline(StandardScaler(), LinearSVC()).fit(X, y),
        make_pipeline(StandardScaler(), RidgeClassifier()).fit(X, y),
        make_pipeline(StandardScaler(), LogisticHead(standardize=False)).fit(X, y),
        make_pipeline(StandardScaler(), MLPHead(hidden_layer_sizes=(8,),
                                                random_state=0)).fit(X, y),
    ]


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("n_classes", [2, 4])
def test_to_torch_agrees_with_predict(n_classes):
    X, y = blobs(300, d=20, n_classes=n_classes, spread=0.7)
    X[:, 0] *= 30
    for est in _graftables(X, y):
        assert is_graftable(est)
        net = to_torch(est)
        with torch.no_grad():
            logits = net(torch.from_numpy(X)).double().numpy()
        assert logits.shape == (len(X), n_classes)
        np.testing.assert_array_equal(est.classes_[logits.argmax(1)], est.predict(X),
                                      err_msg=repr(est))
        scores = est.decision_function(X)
        if scores.ndim == 1:
            scores = np.column_stack([np.zeros_like(scores), scores])
        np.testing.assert_allclose(logits, scores, rtol=1e-4, atol=1e-3, err_msg=repr(est))
        if hasattr(est, "to_torch"):
            torch.testing.assert_close(est.to_torch()(torch.from_numpy(X[:5])),
                                       net(torch.from_numpy(X[:5])))


def test_non_graftable_heads_say_so(data):
    X, y, _, _ = data
    knn = get_head("knn").fit(X, y)
    assert not is_graftable(knn)
    with pytest.raises(TypeError, match=r"cannot turn Pipeline into a torch module.*"
                                        r"\['Normalizer', 'KNeighborsClassifier'\]"):
        to_torch(knn)


def test_registry(data):
    X, y, Xt, yt = data
    assert list_heads() == ["logreg", "mlp", "sk-logreg", "linear-svc", "ridge", "knn"]
    for name in list_heads():
        spec = get_head_spec(name)
        assert spec.candidates() and spec.description
        with warnings.catch_warnings():  # what fit relies on: some setting of the grid fits
            warnings.simplefilter("ignore", ConvergenceWarning)
            scores = [spec.build(**params).fit(X, y).score(Xt, yt)
                      for params in spec.candidates()]
        assert max(scores) > 0.6, (name, scores)
    assert len(get_head_spec("mlp").candidates()) == 4
    with pytest.raises(ValueError, match=r"unknown head 'svm'; expected one of \['logreg'"):
        get_head("svm")


@pytest.mark.parametrize("Head", [LogisticHead, MLPHead])
def test_bad_input_is_a_clear_error(Head, data):
    X, y, _, _ = data
    bad = X.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="Input X contains NaN"):
        Head().fit(bad, y)
    bad[3, 2] = np.inf
    with pytest.raises(ValueError, match="Input X contains infinity"):
        Head().fit(bad, y)
    with pytest.raises(ValueError, match="only one class: 'a'"):
        Head().fit(X, np.full(len(y), "a"))
    head = Head(max_iter=5).fit(X, y)
    with pytest.raises(ValueError, match=r"X has 39 features, but \w+Head is expecting 40"):
        head.predict(X[:, :-1])
    with pytest.raises(ValueError, match="Input X contains NaN"):
        head.predict(np.full_like(X[:2], np.nan))


def test_bad_parameters_name_the_parameter(data):
    X, y, _, _ = data
    # one message format for every parameter: name, allowed values, what was received
    with pytest.raises(ParameterError, match="the 'C' parameter must be a positive float, got -1"):
        LogisticHead(C=-1).fit(X, y)
    with pytest.raises(ValueError, match="the 'preconditioner_rank' parameter must be an int "
                                         ">= 0, got -3"):
        LogisticHead(preconditioner_rank=-3).fit(X, y)
    with pytest.raises(ValueError, match=r"the 'activation' parameter must be one of "
                                         r"\['gelu', 'relu', 'tanh'\], got 'swish'"):
        MLPHead(activation="swish").fit(X, y)
    with pytest.raises(ValueError, match=r"the 'dropout' parameter must be a float in \[0, 1\), "
                                         r"got 1.5"):
        MLPHead(dropout=1.5).fit(X, y)
    with pytest.raises(ValueError, match="the 'batch_size' parameter must be a positive int, "
                                         "got 0"):
        MLPHead(batch_size=0).fit(X, y)
    with pytest.raises(ValueError, match="'hidden_layer_sizes' parameter must be a tuple of "
                                         "positive ints"):
        MLPHead(hidden_layer_sizes=(0,)).fit(X, y)
    with pytest.raises(ValueError, match="the 'device' parameter must be 'auto', 'cpu', 'cuda' "
                                         "or 'cuda:N', got 'tpu'"):
        LogisticHead(device="tpu").fit(X, y)


def test_mlp_streams_a_bank_in_blocks(tmp_path, monkeypatch):
    import h5py

    from conftest import write_feature_bank

    bank = write_feature_bank(tmp_path / "b.h5", n_train=10000, n_test=500, d=16)
    reads = []
    original = h5py.Dataset.__getitem__

    def counting(self, key):
        out = original(self, key)
        if self.ndim == 2:
            reads.append(len(out))
        return out

    monkeypatch.setattr(h5py.Dataset, "__getitem__", counting)
    kw = dict(hidden_layer_sizes=(16,), random_state=0, max_iter=5, batch_size=64)
    with pytest.warns(ConvergenceWarning):
        a = MLPHead(**kw).fit(bank.features("train"), bank.labels("train"))
    assert max(reads) <= 4096 and len(reads) > 3  # blocks, never the whole split
    with pytest.warns(ConvergenceWarning):
        b = MLPHead(**kw).fit(bank.features("train"), bank.labels("train"))
    np.testing.assert_array_equal(a.coefs_[0], b.coefs_[0])
    Xt, yt = bank.load("test")
    assert a.score(Xt, yt) > 0.8 and a.n_features_in_ == 16
    bank.close()
    with h5py.File(bank.path, "r+") as f:
        f["train/features/fc7"][5000, 2] = np.inf
    with pytest.raises(ValueError, match=r"contains NaN or infinity \(row 5000 of "
                                         r"/train/features/fc7\)"):
        MLPHead(**kw).fit(FeatureBank(bank.path).features("train"), bank.labels("train"))


def test_mlp_on_principal_directions_takes_raw_features(data):
    X, y, Xt, yt = data
    head = MLPHead(hidden_layer_sizes=(32,), n_components=8, random_state=0, max_iter=300)
    head.fit(X, y)
    V = head.components_
    assert V.shape == (40, 8) and head.coefs_[0].shape == (40, 32)
    np.testing.assert_allclose(V.T @ V, np.eye(8), atol=1e-6)  # orthonormal directions
    # folded: the first layer on raw x equals the trained layer on ((x - mean) / scale) @ V
    proj = ((Xt - head.mean_) / head.scale_) @ V
    W = (V / head.scale_[:, None]) @ np.linalg.lstsq(V / head.scale_[:, None], head.coefs_[0],
                                                     rcond=None)[0]
    np.testing.assert_allclose(W, head.coefs_[0], atol=1e-8)  # its columns lie in span(V)
    assert proj.shape == (len(Xt), 8)
    assert head.score(Xt, yt) > 0.8 and (to_torch(head)(torch.from_numpy(Xt)).argmax(1).numpy()
                                         == np.searchsorted(head.classes_, head.predict(Xt))).all()
    # decision_function runs through the trained layer (projected_coef_): the folded map
    np.testing.assert_allclose((V / head.scale_[:, None]) @ head.projected_coef_,
                               head.coefs_[0], rtol=1e-12, atol=1e-12)
    hidden = np.maximum(Xt.astype(np.float64) @ head.coefs_[0] + head.intercepts_[0], 0)
    np.testing.assert_allclose(head.decision_function(Xt),
                               hidden @ head.coefs_[1] + head.intercepts_[1], atol=1e-9)
    # same seed, same sketch: a grid can share one projection (and the projected rows) and
    # get the same head
    shared = head._projection(X)
    again = MLPHead(hidden_layer_sizes=(32,), n_components=8, random_state=0, max_iter=300)
    again._fit(X, y, projection=shared)
    np.testing.assert_allclose(again.coefs_[0], head.coefs_[0], atol=1e-6)
    rows = MLPHead(hidden_layer_sizes=(32,), n_components=8, random_state=0, max_iter=300)
    rows._fit(X, y, projection=shared, projected=_project(X, *shared))
    np.testing.assert_array_equal(rows.coefs_[0], again.coefs_[0])


def test_logistic_head_streams_a_bank_larger_than_memory_to_the_same_optimum(tmp_path,
                                                                            monkeypatch):
    import h5py

    from featurebank.rows import StreamedRows

    X, y = blobs(3000, d=24, n_classes=4, spread=0.6)
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["x"] = X.astype(np.float16)  # float16 on disk, as banks store them
    X16 = X.astype(np.float16).astype(np.float32)
    Xs = StandardScaler().fit_transform(X16.astype(np.float64))
    memory = LogisticHead(C=0.5, tol=1e-6, max_iter=1000).fit(X16, y)
    with h5py.File(tmp_path / "x.h5", "r") as f:
        reads = []
        real = h5py.Dataset.__getitem__

        def counting(self, key):
            out = real(self, key)
            reads.append(out.nbytes)
            return out

        monkeypatch.setattr(h5py.Dataset, "__getitem__", counting)
        streamed = LogisticHead(C=0.5, tol=1e-6, max_iter=1000).fit(
            StreamedRows(f["x"], chunk=500), y)
        monkeypatch.undo()
        assert max(reads) <= 500 * 24 * 2 + 4096 * 24 * 2  # a chunk (or the sketch's sample)
        f_mem, f_str = (_head_objective(h, Xs, y, 0.5) for h in (memory, streamed))
        assert f_str == pytest.approx(f_mem, rel=1e-6)
        assert (streamed.predict(X16) == memory.predict(X16)).mean() >= 0.995
        # a row subset (what fit streams: the train rows outside the validation split)
        rows = np.flatnonzero(np.arange(3000) % 10 != 3)
        part = LogisticHead(C=0.5, tol=1e-6, max_iter=1000).fit(StreamedRows(f["x"], rows, 700),
                                                                 y[rows])
        whole = LogisticHead(C=0.5, tol=1e-6, max_iter=1000).fit(X16[rows], y[rows])
        Xr = StandardScaler().fit_transform(X16[rows].astype(np.float64))
        assert _head_objective(part, Xr, y[rows], 0.5) == pytest.approx(
            _head_objective(whole, Xr, y[rows], 0.5), rel=1e-6)
        path = logistic_path(f["x"], y, [0.1, 0.5])  # the path takes a dataset too
        assert path[1].score(X16, y) == pytest.approx(memory.score(X16, y), abs=0.01)


def test_a_path_started_from_related_solutions_ends_at_its_own_optimum(data):
    X, y, _, _ = data
    Cs = [0.01, 0.1, 1.0]
    rng = np.random.default_rng(0)
    noisy = X + 0.3 * rng.standard_normal(X.shape).astype(X.dtype)  # "views" of the rows
    Xv, yv = np.concatenate([X, noisy]), np.concatenate([y, y])
    centre = logistic_path(X, y, Cs, tol=1e-6, max_iter=1000)
    cold = logistic_path(Xv, yv, Cs, tol=1e-6, max_iter=1000)
    warm = logistic_path(Xv, yv, Cs, tol=1e-6, max_iter=1000, init=centre)
    Xs = StandardScaler().fit_transform(Xv.astype(np.float64))
    for C, a, b in zip(Cs, cold, warm):
        assert _head_objective(b, Xs, yv, C) == pytest.approx(_head_objective(a, Xs, yv, C),
                                                              rel=1e-6)
    # the start is the head's function, mapped into this problem's standardisation: started
    # from its own optimum, a path has next to nothing left to do
    again = logistic_path(X, y, [0.1], tol=1e-6, max_iter=1000, init=[centre[1]])[0]
    assert again.n_iter_[0] <= 3 < centre[1].n_iter_[0]  # a step or two, not a solve
    np.testing.assert_allclose(again.decision_function(X), centre[1].decision_function(X),
                               atol=2e-3)  # the flat optimum's width at tol=1e-6
    # a head fitted where a feature had 1/1000 of its scale here puts 1000x the weight on it
    # in this problem's standardisation: a start far worse than zero, so the path starts at
    # zero, exactly as without init
    shrunk = X.copy()
    shrunk[:, 0] *= 1e-3
    odd = logistic_path(shrunk, y, [0.1], tol=1e-6, max_iter=1000)
    started = logistic_path(X, y, [0.1], tol=1e-6, max_iter=1000, init=odd)[0]
    cold = logistic_path(X, y, [0.1], tol=1e-6, max_iter=1000)[0]
    assert started.n_iter_[0] == cold.n_iter_[0]
    np.testing.assert_array_equal(started.coef_, cold.coef_)
    with pytest.raises(ValueError, match="init holds 1 heads for 3 values of C"):
        logistic_path(Xv, yv, Cs, init=centre[:1])
    with pytest.raises(ValueError, match="cannot start"):
        logistic_path(Xv[:, :5], yv, [0.1], init=[centre[1]])


def test_mlp_early_stopping_holds_out_whole_groups(data):
    X, y, _, _ = data
    groups = np.repeat(np.arange(len(y) // 3 + 1), 3)[:len(y)]
    head = MLPHead(random_state=0)
    train, val = head._holdout(y, len(np.unique(y)), 0, groups)
    assert not set(groups[train]) & set(groups[val])
    assert len(val) == pytest.approx(0.1 * len(y), abs=6)
    plain = head._holdout(y, len(np.unique(y)), 0)  # without groups: rows, as before
    assert set(plain[0]).isdisjoint(plain[1]) and len(plain[0]) + len(plain[1]) == len(y)


def test_mlp_can_visit_one_view_of_each_image_an_epoch(data):
    X, y, Xt, yt = data
    rng = np.random.default_rng(0)
    views = np.concatenate([X, X + 0.1 * rng.standard_normal(X.shape).astype(X.dtype)])
    yv, groups = np.concatenate([y, y]), np.tile(np.arange(len(y)), 2)
    head = MLPHead(sample_groups=True, random_state=0)
    visit = head._epoch_rows(np.arange(len(yv)), groups, torch.Generator().manual_seed(0))
    assert len(visit) == len(y) and len(np.unique(groups[visit])) == len(y)
    assert 0 < (visit >= len(y)).mean() < 1  # centre rows and views both drawn
    fitted = MLPHead(sample_groups=True, random_state=0, max_iter=30).fit(views, yv,
                                                                          groups=groups)
    assert fitted.score(Xt, yt) > 0.8
    every = MLPHead(random_state=0, max_iter=30).fit(views, yv, groups=groups)
    assert not np.allclose(every.coefs_[0], fitted.coefs_[0])  # every row, every epoch
    with pytest.raises(ParameterError, match="'sample_groups' parameter must be True or"):
        MLPHead(sample_groups="yes").fit(X, y)
    with pytest.raises(ValueError, match="groups has 3 entries"):
        MLPHead().fit(X, y, groups=[0, 1, 2])


def test_an_mlp_epoch_visits_at_least_min_epoch_rows(data, monkeypatch):
    X, y, _, _ = data
    steps, real = [], torch.optim.AdamW.step

    def counting(self, *args, **kw):
        steps.append(1)
        return real(self, *args, **kw)

    monkeypatch.setattr(torch.optim.AdamW, "step", counting)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        head = MLPHead(max_iter=1, early_stopping=False, batch_size=32, min_epoch_rows=320,
                       random_state=0).fit(X[:64], y[:64])
        assert len(steps) == 10 and len(head.loss_curve_) == 1  # 5 passes of 2 batches
        steps.clear()
        MLPHead(max_iter=1, early_stopping=False, batch_size=32, min_epoch_rows=1,
                random_state=0).fit(X[:64], y[:64])
        assert len(steps) == 2  # one pass
    with pytest.raises(ParameterError, match="'min_epoch_rows' parameter must be a positive"):
        MLPHead(min_epoch_rows=0).fit(X, y)


def test_a_path_stops_the_settings_that_trail_on_validation(monkeypatch):
    import featurebank.heads.logistic as logistic

    # 100 rows of 100 features: every problem runs for dozens of iterations, and the most
    # regularised one (C=1e-3, the slowest) trails the others on validation throughout
    X, y = blobs(200, d=100, n_classes=3, spread=0.3, seed=3)
    Xt, yt, Xv, yv = X[:100], y[:100], X[100:], y[100:]
    Cs = [1e-3, 1e-2, 1e-1, 1.0, 10.0]
    real, passes = logistic._scores_grad_numpy, []

    def counting(*args, **kw):
        passes.append(1)
        return real(*args, **kw)

    monkeypatch.setattr(logistic, "_scores_grad_numpy", counting)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        full = logistic_path(Xt, yt, Cs, max_iter=300)
        n_full = len(passes)
        passes.clear()
        pruned = logistic_path(Xt, yt, Cs, max_iter=300, validation=(Xv, yv))
    n_pruned = len(passes)
    stopped = [h for h in pruned if h.pruned_]
    assert stopped and not any(h.pruned_ for h in full) and n_pruned < n_full
    ended = [h.score(Xv, yv) for h in pruned if not h.pruned_]
    Xs = StandardScaler().fit_transform(Xt.astype(np.float64))
    for h, alone in zip(pruned, full):
        if h.pruned_:  # stopped at a check, below a problem that had ended
            assert h.n_iter_[0] % 10 == 0 and h.n_iter_[0] < alone.n_iter_[0]
            assert h.score(Xv, yv) < max(ended)
        else:  # the others run as without pruning, to the same point (to float32 rounding:
            # once a problem stops, the shared products have fewer columns, which can move
            # the stopping test by an iteration on some CPUs' BLAS kernels)
            assert abs(int(h.n_iter_[0]) - int(alone.n_iter_[0])) <= 2
            assert _head_objective(h, Xs, yt, h.C) == pytest.approx(
                _head_objective(alone, Xs, yt, alone.C), rel=1e-6)
            np.testing.assert_allclose(h.coef_, alone.coef_,  # within the flat optimum
                                       atol=2e-3 * np.abs(alone.coef_).max())
    with pytest.raises(ParameterError, match="'patience' parameter"):
        logistic_path(Xt, yt, Cs, validation=(Xv, yv), patience=0)


def test_cpu_dropout_keeps_each_unit_with_probability_1_minus_p_scaled():
    from torch import nn

    from featurebank.heads.mlp import _forward, _keep_mask

    x, net = torch.ones(1000, 1000), nn.Sequential(nn.Linear(1000, 1000), nn.Dropout(0.3))
    torch.manual_seed(0)
    y = _forward(net[1:].train(), x)  # the dropout alone, as training runs it on the CPU
    kept = y != 0
    assert kept.float().mean().item() == pytest.approx(0.7, abs=0.002)  # 4 standard errors
    assert torch.unique(y[kept]).tolist() == pytest.approx([1 / 0.7], rel=1e-4)
    assert y.mean().item() == pytest.approx(1.0, abs=0.005)  # inverted dropout: same mean
    torch.manual_seed(0)
    assert torch.equal(_forward(net[1:], x), y)  # drawn from the seeded global generator
    assert torch.equal(_forward(net[1:].eval(), x), x)  # evaluation: the module, identity
    net.train()
    torch.manual_seed(1)
    out = _forward(net, x)  # the whole network: its other layers run as the modules do
    torch.manual_seed(1)
    hidden = net[0](x)
    torch.testing.assert_close(out, hidden * _keep_mask(hidden, 0.3), rtol=0, atol=0)
