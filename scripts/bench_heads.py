"""Benchmark heads against scikit-learn on the same features.

LogisticHead vs scikit-learn's LogisticRegression (lbfgs) at the same C on standardised inputs
(scikit-learn gets them pre-standardised; LogisticHead standardises inside its timed fit), and
MLPHead vs scikit-learn's MLPClassifier with the same hidden size and early stopping. Prints fit
seconds, iterations, the objective both minimise (float64, so how far each got is comparable),
test accuracy and the speed ratios, with the conditions. Examples::

    python scripts/bench_heads.py                          # random ReLU-like 50,000 x 4,096
    python scripts/bench_heads.py --bank cifar10_vgg19_default_224px.h5 --tap fc7
    python scripts/bench_heads.py --skip-mlp --C 1 0.01 --preconditioner-rank 0 128
    python scripts/bench_heads.py --bank real.h5 --long-tail 100   # CIFAR-10-LT style

``--long-tail RATIO`` keeps, of the bank's train split, class sizes decaying geometrically from
the largest class's to RATIO times fewer (classes in index order, rows drawn with a seed; the
test split stays as it is, balanced for CIFAR-10), then runs ``fit`` as it is and with
``class_weight="balanced", metric="balanced_accuracy"``, and ``--calibrate`` on top: test
accuracy, balanced accuracy, macro F1 and ECE of what each selects; and the weighted
logistic path's time per pass against the unweighted one's (the same number of passes).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import warnings

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import StandardScaler

import featurebank
from featurebank import FeatureBank, LogisticHead, MLPHead


def relu_features(n: int, d: int, k: int, seed: int):
    """ReLU-like features with class structure in a 64-d latent space (test acc ~0.8)."""
    rng = np.random.default_rng(seed)
    means = np.random.default_rng(42).standard_normal((k, 64)).astype(np.float32) * 0.35
    A = np.random.default_rng(43).standard_normal((64, d)).astype(np.float32) / 8
    y = rng.integers(0, k, n)
    Z = (means[y] + rng.standard_normal((n, 64), dtype=np.float32)) @ A
    return np.maximum(Z + 0.5 * rng.standard_normal((n, d), dtype=np.float32), 0), y


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    """The data options the benchmarks share: a bank and tap, or synthetic features' shape."""
    p.add_argument("--bank", default=None)
    p.add_argument("--tap", default=None)
    p.add_argument("--n-train", type=int, default=50000)
    p.add_argument("--n-test", type=int, default=10000)
    p.add_argument("--dim", type=int, default=4096)
    p.add_argument("--classes", type=int, default=10)


def write_relu_bank(path, sizes: dict[str, int], dim: int, k: int, chunk: int = 32768):
    """A float16 bank of :func:`relu_features` (split -> rows), written ``chunk`` rows at a
    time (never whole in memory); returns it as a FeatureBank."""
    from featurebank.bank import BankWriter
    from featurebank.records import BankSpec, DatasetInfo

    spec = {"model": "synthetic", "weights": "none", "weights_path": None, "taps": ["fc7"],
            "tap_layers": {"fc7": {"module": "fc7", "where": "output", "activation_shape": [dim],
                                   "pool": "none", "dim": dim}},
            "image_size": 224, "resize": "device", "interpolation": "bilinear",
            "antialias": True, "mean": [0.5] * 3, "std": [0.25] * 3,
            "preprocessing_source": "bench", "dtype": "float16"}
    dataset = {"name": "npz", "source": "bench", "classes": [str(c) for c in range(k)],
               "splits": sizes, "resize": "device", "fingerprint": f"{sum(sizes.values()):064d}"}
    w = BankWriter(path, spec=BankSpec.from_json(spec), dataset=DatasetInfo.from_json(dataset),
                   resume=False)
    for i, (split, n) in enumerate(sizes.items()):
        for s in range(0, n, chunk):
            m = min(chunk, n - s)
            X, y = relu_features(m, dim, k, seed=2 * (s // chunk) + i)
            w.write(split, features={"fc7": X.astype(np.float16)}, labels=y,
                    index=np.arange(s, s + m), sources_done=s + m)
    w.commit({})
    w.close()
    return FeatureBank(path)


def cpu_model() -> str:
    """The CPU's model name (Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def timed(fit):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always", ConvergenceWarning)
        t = time.perf_counter()
        est = fit()
        secs = time.perf_counter() - t
    return est, secs, any(issubclass(x.category, ConvergenceWarning) for x in w)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_arguments(p)
    p.add_argument("--C", type=float, nargs="+", default=[1.0],
                   help="one or more C values; each is fitted by both libraries")
    p.add_argument("--preconditioner-rank", type=int, nargs="+", default=[128],
                   help="LogisticHead preconditioner_rank values to time (0: plain L-BFGS)")
    p.add_argument("--max-iter", type=int, default=100, help="lbfgs iterations, both libraries")
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--device", default="auto")
    p.add_argument("--skip-logistic", action="store_true")
    p.add_argument("--skip-mlp", action="store_true")
    p.add_argument("--long-tail", type=float, default=None, metavar="RATIO",
                   help="with --bank: the long-tailed case (largest / smallest class size)")
    p.add_argument("--val-fraction", type=float, default=0.2,
                   help="fit's validation fraction in the long-tailed case (default 0.2)")
    args = p.parse_args()
    if args.long_tail:
        return bench_long_tail(args)

    if args.bank:
        bank = FeatureBank(args.bank)
        X, y = bank.load("train", args.tap)
        Xt, yt = bank.load("test", args.tap)
        source = f"bank {args.bank} tap {args.tap or bank.taps[0]}"
    else:
        X, y = relu_features(args.n_train, args.dim, args.classes, 0)
        Xt, yt = relu_features(args.n_test, args.dim, args.classes, 1)
        source = "random ReLU-like features"
    print(f"featurebank {featurebank.__version__}, torch {torch.__version__}, "
          f"{platform.machine()}, {torch.get_num_threads()} torch threads, device {args.device}"
          + (f" ({torch.cuda.get_device_name()})" if torch.cuda.is_available() else ""))
    print(f"{source}: train {X.shape} {X.dtype}, test {Xt.shape}, "
          f"{len(np.unique(y))} classes")

    if args.device != "cpu" and torch.cuda.is_available():  # CUDA context, cuBLAS handles
        LogisticHead(device=args.device).fit(X[:1000], y[:1000])
        MLPHead(device=args.device, max_iter=1).fit(X[:1000], y[:1000])
        print("CUDA warmed up by one small fit of each head (not timed)")
    scaler = StandardScaler().fit(X)
    Xs, Xts = scaler.transform(X), scaler.transform(Xt)
    if not args.skip_logistic:
        bench_logistic(args, X, y, Xt, yt, Xs, Xts)
    if not args.skip_mlp:
        bench_mlp(args, X, y, Xt, yt, Xs, Xts)


def objective(Xs, y, coef, intercept, C) -> float:
    """scikit-learn's lbfgs objective (standardised space, float64, blocks of 4,096 rows)."""
    classes = np.unique(y)
    yi = np.searchsorted(classes, y)
    coef, total = np.asarray(coef, dtype=np.float64), 0.0
    for s in range(0, len(y), 4096):
        z = Xs[s:s + 4096].astype(np.float64) @ coef.T + intercept
        if z.shape[1] == 1:
            total += float((np.logaddexp(0, z[:, 0]) - (yi[s:s + 4096] == 1) * z[:, 0]).sum())
        else:
            top = z.max(1, keepdims=True)
            lse = np.log(np.exp(z - top).sum(1)) + top[:, 0]
            total += float((lse - z[np.arange(len(z)), yi[s:s + 4096]]).sum())
    return total / len(y) + float((coef ** 2).sum()) / (2 * C * len(y))


def bench_logistic(args, X, y, Xt, yt, Xs, Xts) -> None:
    print("objective: scikit-learn's, on the standardised train features, in float64")
    for C in args.C:
        sk, t_sk, w_sk = timed(lambda: LogisticRegression(C=C, max_iter=args.max_iter)
                               .fit(Xs, y))
        a_sk = sk.score(Xts, yt)
        print(f"sklearn LogReg   C={C:<6g}       : fit {t_sk:8.2f} s  iters "
              f"{sk.n_iter_[0]:4d}  objective {objective(Xs, y, sk.coef_, sk.intercept_, C):.6f}"
              f"  test acc {a_sk:.4f}{'  (hit max_iter)' if w_sk else ''}")
        for rank in args.preconditioner_rank:
            ours, t_ours, w_ours = timed(lambda: LogisticHead(
                C=C, max_iter=args.max_iter, preconditioner_rank=rank, random_state=0,
                device=args.device).fit(X, y))
            a_ours = ours.score(Xt, yt)
            f = objective(Xs, y, ours.coef_ * ours.scale_,
                          ours.intercept_ + ours.coef_ @ ours.mean_, C)
            print(f"LogisticHead     C={C:<6g} rank {rank:3d}: fit {t_ours:8.2f} s  iters "
                  f"{ours.n_iter_[0]:4d}  objective {f:.6f}  test acc {a_ours:.4f}"
                  f"{'  (hit max_iter)' if w_ours else ''}   speed-up {t_sk / t_ours:.2f}x, "
                  f"accuracy {100 * (a_ours - a_sk):+.2f} points")


def bench_mlp(args, X, y, Xt, yt, Xs, Xts) -> None:
    mlp, t_mlp, _ = timed(lambda: MLPHead(hidden_layer_sizes=(args.hidden,), random_state=0,
                                          device=args.device).fit(X, y))
    skm, t_skm, _ = timed(lambda: MLPClassifier(hidden_layer_sizes=(args.hidden,),
                                                early_stopping=True, random_state=0).fit(Xs, y))
    a_mlp, a_skm = mlp.score(Xt, yt), skm.score(Xts, yt)
    print(f"MLPHead       ({args.hidden},): fit {t_mlp:8.2f} s  epochs {mlp.n_iter_:4d}  "
          f"test acc {a_mlp:.4f}")
    print(f"sklearn MLP   ({args.hidden},): fit {t_skm:8.2f} s  epochs {skm.n_iter_:4d}  "
          f"test acc {a_skm:.4f}")
    print(f"  speed-up {t_skm / t_mlp:.2f}x, accuracy difference {100 * (a_mlp - a_skm):+.2f} "
          f"points")


def long_tail_bank(bank: FeatureBank, tap: str, ratio: float, path, seed: int = 0):
    """A bank of ``bank``'s test split and a long-tailed draw of its train split: class ``i``
    of ``K`` keeps ``n_max * ratio ** (-i / (K - 1))`` rows (``n_max``: the smallest class's
    count in the bank, so every class can give its share)."""
    from featurebank.bank import BankWriter
    from featurebank.records import DatasetInfo

    X, y = bank.load("train", tap)
    k, rng = len(bank.classes), np.random.default_rng(seed)
    n_max = np.bincount(y, minlength=k).min()
    sizes = [max(1, int(round(n_max * ratio ** (-i / (k - 1))))) for i in range(k)]
    rows = np.sort(np.concatenate([rng.choice(np.flatnonzero(y == c), n, replace=False)
                                   for c, n in enumerate(sizes)]))
    Xt, yt = bank.load("test", tap)
    info = bank.dataset.to_json()
    info.update(splits={"train": len(rows), "test": len(yt)},
                fingerprint=f"{int(ratio * 1000):032d}{seed:032d}", source=f"{info['source']} "
                f"long-tailed 1:{ratio:g}")
    spec = bank.spec
    w = BankWriter(path, spec=spec, dataset=DatasetInfo.from_json(info), resume=False)
    for split, (F, labels) in (("train", (X[rows], y[rows])), ("test", (Xt, yt))):
        w.write(split, features={tap: F.astype(spec.dtype)}, labels=labels,
                index=np.arange(len(labels)), sources_done=len(labels))
    w.commit({})
    w.close()
    return FeatureBank(path), sizes


def _passes_and_seconds(X, y, Cs, **params):
    """The logistic path with ``params``: its seconds and its passes over X."""
    import featurebank.heads.logistic as logistic

    real, passes = logistic._scores_grad_numpy, [0]

    def counted(*a, **kw):
        passes[0] += 1
        return real(*a, **kw)

    logistic._scores_grad_numpy = counted
    try:
        t = time.perf_counter()
        logistic.logistic_path(X, y, Cs, **params)
        return time.perf_counter() - t, passes[0]
    finally:
        logistic._scores_grad_numpy = real


def bench_long_tail(args) -> None:
    import tempfile

    from featurebank import fit_heads

    source = FeatureBank(args.bank)
    tap = args.tap or source.taps[0]
    tmp = tempfile.mkdtemp(prefix="fb-lt-")
    bank, sizes = long_tail_bank(source, tap, args.long_tail, f"{tmp}/lt.h5")
    print(f"featurebank {featurebank.__version__}, torch {torch.__version__}, "
          f"{cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} "
          f"torch threads, device {args.device}")
    print(f"bank {args.bank} tap {tap} ({source.spec.model}, {source.shape('train', tap)[1]} "
          f"features): long-tailed train 1:{args.long_tail:g}, class sizes {sizes} "
          f"({sum(sizes)} rows), test {bank.num_rows('test')} rows as in the bank; "
          f"val_fraction {args.val_fraction}")
    heads = [h for h, skip in (("logreg", args.skip_logistic), ("mlp", args.skip_mlp))
             if not skip]
    runs = {"plain (accuracy)": {},
            "plain + calibrate": dict(calibrate=True),
            "balanced weights, balanced accuracy": dict(class_weight="balanced",
                                                        metric="balanced_accuracy"),
            "balanced + calibrate": dict(class_weight="balanced", metric="balanced_accuracy",
                                         calibrate=True)}
    print(f"{'run':<38} {'head':<7} {'chosen':<52} {'test acc':>8} {'bal acc':>8} "
          f"{'F1 macro':>8} {'ECE val, test':>27} {'sweep s':>8}")
    for name, kw in runs.items():
        board = fit_heads(bank, heads=heads, out=None, device=args.device, progress=False,
                          val_fraction=args.val_fraction, **kw)
        for r in sorted(board["rows"], key=lambda r: r["head"]):
            t, c = r["test_scores"], r.get("calibration")
            ece = (f"{c['val_ece_before']:.3f}->{c['val_ece_after']:.3f} "
                   f"{c['test_ece_before']:.3f}->{c['test_ece_after']:.3f}" if c else "")
            print(f"{name:<38} {r['head']:<7} {str(r['params']):<52} {t['accuracy']:8.4f} "
                  f"{t['balanced_accuracy']:8.4f} {t['f1_macro']:8.4f} {ece:>27} "
                  f"{r['sweep_seconds']:8.2f}")
    X, y = bank.load("train", tap)
    Cs = [1e-4, 1e-3, 1e-2, 1e-1, 1.0]
    common = dict(tol=0.0, max_iter=args.max_iter, device=args.device)  # every C runs max_iter
    timings = {}
    for name, kw in (("unweighted", {}), ("class_weight='balanced'", {"class_weight": "balanced"})):
        few = np.random.default_rng(0).choice(len(y), 500, replace=False)
        _passes_and_seconds(X[few], y[few], Cs[:1], **common, **kw)  # warm-up, not timed
        timings[name] = _passes_and_seconds(X, y, Cs, **common, **kw)
    (t0, p0), (t1, p1) = timings.values()
    for name, (secs, passes) in timings.items():
        print(f"logistic path, 5 Cs, tol=0, max_iter={args.max_iter}, {name:<24}: "
              f"{secs:7.2f} s, {passes} passes, {1000 * secs / passes:7.1f} ms per pass")
    print(f"weighted / unweighted time per pass: {(t1 / p1) / (t0 / p0):.3f}")


if __name__ == "__main__":
    main()
