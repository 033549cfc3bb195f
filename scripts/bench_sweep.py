"""Benchmark the whole sweep: ``featurebank fit --heads logreg,mlp`` against scikit-learn's.

Times, in one run on the same data: the whole ``fit_heads`` call (bank read, validation split,
every setting of every grid, scoring, saving), each head's sweep and selected test accuracy,
and scikit-learn's sweep over the same C grid (StandardScaler + LogisticRegression(lbfgs,
warm_start=True), C ascending, max_iter high enough that no fit stops early) on the same train
rows, selected on the same validation rows. Data: a bank, or random ReLU-like features of the
benchmark's shape written to a temporary float16 bank. Examples::

    python scripts/bench_sweep.py                               # 50,000 x 4,096, 10 classes
    python scripts/bench_sweep.py --bank cifar10_vgg19_default_224px.h5 --tap fc7
    python scripts/bench_sweep.py --heads logreg --skip-sklearn
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

import featurebank
from bench_heads import add_data_arguments, write_relu_bank
from featurebank import FeatureBank, fit_heads
from featurebank.heads import get_head_spec


def sklearn_sweep(bank: FeatureBank, tap: str, runs: Path) -> dict:
    """scikit-learn's sweep over the logreg grid, on fit_heads' own train/validation rows."""
    split = np.load(runs / "split.npz")
    train, val = split["train_rows"], split["val_rows"]
    X, y = bank.load("train", tap)
    Xt, yt = bank.load("test", tap)
    t = time.perf_counter()
    scaler = StandardScaler().fit(X[train])
    Xs, Xv, Xts = scaler.transform(X[train]), scaler.transform(X[val]), scaler.transform(Xt)
    model = LogisticRegression(max_iter=2000, warm_start=True)
    best, iters = None, []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        for C in sorted(get_head_spec("logreg").grid["C"]):
            model.set_params(C=C).fit(Xs, y[train])
            iters.append(int(model.n_iter_[0]))
            acc = float(model.score(Xv, y[val]))
            if best is None or acc > best[1]:
                best = (C, acc, float(model.score(Xts, yt)))
    return {"seconds": time.perf_counter() - t, "C": best[0], "val_accuracy": best[1],
            "test_accuracy": best[2], "iterations": iters,
            "hit_max_iter": any(issubclass(w.category, ConvergenceWarning) for w in caught)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_arguments(p)
    p.add_argument("--heads", default="logreg,mlp")
    p.add_argument("--device", default="auto")
    p.add_argument("--skip-sklearn", action="store_true")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.bank:
            bank, source = FeatureBank(args.bank), f"bank {args.bank}"
        else:
            bank = write_relu_bank(tmp / "bench.h5", {"train": args.n_train,
                                                      "test": args.n_test}, args.dim,
                                   args.classes)
            source = "random ReLU-like features (float16 bank)"
        tap = args.tap or bank.taps[0]
        print(f"featurebank {featurebank.__version__}, torch {torch.__version__}, numpy "
              f"{np.__version__}, {platform.machine()}, {torch.get_num_threads()} torch "
              f"threads, device {args.device}"
              + (f" ({torch.cuda.get_device_name()})" if torch.cuda.is_available() else ""))
        print(f"{source}: train {bank.shape('train', tap)}, test {bank.shape('test', tap)}, "
              f"{len(bank.classes)} classes, tap {tap}")
        heads = args.heads.split(",")
        t = time.perf_counter()
        board = fit_heads(bank, tap=tap, heads=heads, out=tmp / "runs", device=args.device,
                          progress=False)
        total = time.perf_counter() - t
        print(f"featurebank fit --heads {args.heads}: {total:.2f} s in all "
              f"({board['n_train']} train rows, {board['n_val']} validation rows)")
        for r in board["rows"]:
            print(f"  {r['head']:<7} sweep {r['sweep_seconds']:7.2f} s over {len(r['tried'])} "
                  f"settings, chosen {json.dumps(r['params'])}: val {r['val_accuracy']:.4f}, "
                  f"test {r['test_accuracy']:.4f}")
        if "logreg" in heads and not args.skip_sklearn:
            sk = sklearn_sweep(bank, tap, tmp / "runs")
            ours = next(r for r in board["rows"] if r["head"] == "logreg")
            print(f"  sklearn sweep {sk['seconds']:7.2f} s (StandardScaler + LogisticRegression "
                  f"lbfgs, warm_start, iterations {sk['iterations']}"
                  f"{', hit max_iter' if sk['hit_max_iter'] else ''}), chosen C={sk['C']:g}: "
                  f"val {sk['val_accuracy']:.4f}, test {sk['test_accuracy']:.4f}")
            print(f"  logreg sweep speed-up {sk['seconds'] / ours['sweep_seconds']:.2f}x, "
                  f"selected test accuracy {100 * (ours['test_accuracy'] - sk['test_accuracy']):+.2f}"
                  f" points")


if __name__ == "__main__":
    main()
