"""Benchmark heads against scikit-learn on the same features.

LogisticHead vs scikit-learn's LogisticRegression (lbfgs) at the same C on standardised inputs
(scikit-learn gets them pre-standardised; LogisticHead standardises inside its timed fit), and
MLPHead vs scikit-learn's MLPClassifier with the same hidden size and early stopping. Prints fit
seconds, iterations, the objective both minimise (float64, so how far each got is comparable),
test accuracy and the speed ratios, with the conditions. Examples::

    python scripts/bench_heads.py                          # random ReLU-like 50,000 x 4,096
    python scripts/bench_heads.py --bank cifar10_vgg19_default_224px.h5 --tap fc7
    python scripts/bench_heads.py --skip-mlp --C 1 0.01 --preconditioner-rank 0 128
"""

from __future__ import annotations

import argparse
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
    args = p.parse_args()

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


if __name__ == "__main__":
    main()
