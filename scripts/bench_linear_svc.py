"""Benchmark scikit-learn's LinearSVC (the ``linear-svc`` head) against ``logreg`` on a bank.

On ``--rows`` train rows of a bank (a seeded random subset) (standardised, as the head's pipeline does), fits
the registry's C grid with the dual and the primal solver, and LogisticHead's whole C path, and
prints each fit's seconds, iterations, convergence and test accuracy. Use a bank of real
images' features: synthetic features converge far faster. Example::

    python scripts/bench_linear_svc.py quick/bank.h5 --rows 1800
"""

from __future__ import annotations

import argparse
import platform
import time
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from featurebank import FeatureBank
from featurebank.heads import get_head_spec
from featurebank.heads.logistic import logistic_path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bank")
    p.add_argument("--tap", default=None)
    p.add_argument("--rows", type=int, default=1800,
                   help="train rows fitted, drawn at random (default: 1800)")
    args = p.parse_args()
    bank = FeatureBank(args.bank)
    X, y = bank.load("train", args.tap)
    Xt, yt = bank.load("test", args.tap)
    rows = np.sort(np.random.default_rng(0).permutation(len(y))[:args.rows])  # banks of
    X, y = X[rows], y[rows]  # folders are sorted by class: a random subset, not the first rows
    scaler = StandardScaler().fit(X)
    Xs, Xts = scaler.transform(X), scaler.transform(Xt)
    Cs = get_head_spec("linear-svc").grid["C"]
    print(f"{platform.processor() or platform.machine()}; bank {args.bank} ({bank.spec.model}, "
          f"tap {args.tap or bank.taps[0]}); {X.shape[0]} x {X.shape[1]} train rows, "
          f"{len(yt)} test rows; LinearSVC(dual='auto') picks "
          f"{'dual' if X.shape[0] < X.shape[1] else 'primal'} here")
    for dual in (True, False):
        total = 0.0
        for C in Cs:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ConvergenceWarning)
                t = time.perf_counter()
                m = LinearSVC(C=C, dual=dual, random_state=0).fit(Xs, y)
                seconds = time.perf_counter() - t
            total += seconds
            print(f"  LinearSVC dual={dual!s:<5} C={C:<6g} {seconds:7.2f} s  n_iter "
                  f"{int(np.max(m.n_iter_)):5d}  test {m.score(Xts, yt):.4f}"
                  + ("  (not converged)" if caught else ""))
        print(f"  LinearSVC dual={dual!s:<5} whole grid {total:7.2f} s")
    t = time.perf_counter()
    heads = logistic_path(X, y, get_head_spec("logreg").grid["C"])
    seconds = time.perf_counter() - t
    best = max(heads, key=lambda h: h.score(Xt, yt))
    print(f"  logreg whole C path {seconds:7.2f} s  best test {best.score(Xt, yt):.4f} "
          f"(C={best.C:g}; chosen on test here, for scale only)")


if __name__ == "__main__":
    main()
