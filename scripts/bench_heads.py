"""Benchmark heads against scikit-learn on the same features.

LogisticHead vs scikit-learn's LogisticRegression (lbfgs) at the same C on standardised inputs
(scikit-learn gets them pre-standardised; LogisticHead standardises inside its timed fit), and
MLPHead vs scikit-learn's MLPClassifier with the same hidden size and early stopping. Prints fit
seconds, test accuracy and the speed ratios, with the conditions. Examples::

    python scripts/bench_heads.py                          # random ReLU-like 50,000 x 4,096
    python scripts/bench_heads.py --bank cifar10_vgg19_default_224px.h5 --tap fc7
    python scripts/bench_heads.py --n-train 10000 --skip-mlp
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


def timed(fit):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always", ConvergenceWarning)
        t = time.perf_counter()
        est = fit()
        secs = time.perf_counter() - t
    return est, secs, any(issubclass(x.category, ConvergenceWarning) for x in w)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bank", default=None)
    p.add_argument("--tap", default=None)
    p.add_argument("--n-train", type=int, default=50000)
    p.add_argument("--n-test", type=int, default=10000)
    p.add_argument("--dim", type=int, default=4096)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--C", type=float, default=1.0)
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

    scaler = StandardScaler().fit(X)
    Xs, Xts = scaler.transform(X), scaler.transform(Xt)
    if not args.skip_logistic:
        bench_logistic(args, X, y, Xt, yt, Xs, Xts)
    if not args.skip_mlp:
        bench_mlp(args, X, y, Xt, yt, Xs, Xts)


def bench_logistic(args, X, y, Xt, yt, Xs, Xts) -> None:
    ours, t_ours, w_ours = timed(lambda: LogisticHead(C=args.C, max_iter=args.max_iter,
                                                      device=args.device).fit(X, y))
    sk, t_sk, w_sk = timed(lambda: LogisticRegression(C=args.C, max_iter=args.max_iter)
                           .fit(Xs, y))
    a_ours, a_sk = ours.score(Xt, yt), sk.score(Xts, yt)
    print(f"LogisticHead        C={args.C}: fit {t_ours:8.2f} s  iters {ours.n_iter_[0]:4d}  "
          f"test acc {a_ours:.4f}{'  (hit max_iter)' if w_ours else ''}")
    print(f"sklearn LogReg      C={args.C}: fit {t_sk:8.2f} s  iters {sk.n_iter_[0]:4d}  "
          f"test acc {a_sk:.4f}{'  (hit max_iter)' if w_sk else ''}")
    print(f"  speed-up {t_sk / t_ours:.2f}x, accuracy difference {100 * (a_ours - a_sk):+.2f} "
          f"points")


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
