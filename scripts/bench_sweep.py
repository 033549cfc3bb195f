"""Benchmark the whole sweep: ``featurebank fit --heads logreg,mlp`` against scikit-learn's.

Times, in one run on the same data: the whole ``fit_heads`` call (bank read, validation split,
every setting of every grid, scoring, saving), each head's sweep and selected test accuracy,
the logistic path without fit's pruning (every C to its optimum or max_iter), and
scikit-learn's sweep over the same C grid (StandardScaler + LogisticRegression(lbfgs,
warm_start=True), C ascending, max_iter high enough that no fit stops early) on the same train
rows, selected on the same validation rows. Data: a bank, or random ReLU-like features of the
benchmark's shape written to a temporary float16 bank. Examples::

    python scripts/bench_sweep.py                               # 50,000 x 4,096, 10 classes
    python scripts/bench_sweep.py --bank cifar10_vgg19_default_224px.h5 --tap fc7
    python scripts/bench_sweep.py --heads logreg --skip-sklearn
    python scripts/bench_sweep.py --bank views.h5 --views 4 --skip-sklearn  # + 4 views

With ``--views N`` (a bank extracted with ``--views``) the whole fit runs again with views none /
N and the mirror average on offer (``fit --views N --tta``), against the centre-only fit, and
the logistic path's passes over the data are counted: on the centre rows, on the rows with
views from zero, and warm-started from the centre solutions as ``fit`` does.
"""

from __future__ import annotations

import argparse
import json
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
from bench_heads import add_data_arguments, cpu_model, write_relu_bank
from featurebank import FeatureBank, fit_heads
from featurebank.heads import get_head_spec, logistic_path
from featurebank.rows import ViewRows


class Passes:
    """Counts the logistic kernels' calls: one call is one pass over the rows."""

    def __init__(self):
        import featurebank.heads.logistic as logistic

        self.module, self.count = logistic, 0
        self.real = {name: getattr(logistic, name)
                     for name in ("_scores_grad_numpy", "_scores_grad_torch")}

    def __enter__(self):
        for name, real in self.real.items():
            setattr(self.module, name, self._counting(real))
        return self

    def _counting(self, real):
        def counted(*args, **kw):
            self.count += 1
            return real(*args, **kw)
        return counted

    def __exit__(self, *exc):
        for name, real in self.real.items():
            setattr(self.module, name, real)


def timed_fit(bank: FeatureBank, tap: str, heads: list[str], device: str, **kw):
    """``fit_heads`` timed; prints each head's sweep, choice and scores."""
    t = time.perf_counter()
    board = fit_heads(bank, tap=tap, heads=heads, device=device, progress=False, **kw)
    seconds = time.perf_counter() - t
    print(f"{seconds:.2f} s in all ({board['n_train']} train rows, {board['n_val']} "
          f"validation rows)")
    for r in board["rows"]:
        chose = (f", views {r['views']}, mirror average {r['tta']}"
                 if r["views"] or r["tta"] or kw.get("tta") else "")
        print(f"  {r['head']:<7} sweep {r['sweep_seconds']:7.2f} s over {len(r['tried'])} "
              f"settings, chose {json.dumps(r['params'])}{chose}: val "
              f"{r['val_accuracy']:.4f}, test {r['test_accuracy']:.4f}")
    return board, seconds


def view_passes(bank: FeatureBank, tap: str, runs: Path, views: int) -> str:
    """Passes and seconds of the logistic path (fit's grid) on the centre train rows, on them
    with ``views`` views each from zero (what ``fit`` does), and warm-started from the centre
    solutions: of the same C, and of the C whose penalty per row is nearest (C x (1 + views))."""
    split = np.load(runs / "split.npz")
    train = split["train_rows"]
    X, y = bank.load("train", tap)
    rows = ViewRows(X, bank.views("train", tap), train, range(1, views + 1))
    Xv, yv = rows.array(), np.repeat(y[train], 1 + views)
    Cs = list(get_head_spec("logreg").grid["C"])
    nearest = [int(np.argmin(np.abs(np.log(Cs) - np.log(C * (1 + views))))) for C in Cs]
    out, centre = [], None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for name, data, labels, start in (
                ("centre rows", X[train], y[train], None),
                (f"+{views} views from zero", Xv, yv, None),
                (f"+{views} views from the same C", Xv, yv, "same"),
                (f"+{views} views from the nearest penalty", Xv, yv, "nearest")):
            init = (None if start is None else centre if start == "same"
                    else [centre[i] for i in nearest])
            with Passes() as passes:
                t = time.perf_counter()
                heads = logistic_path(data, labels, Cs, max_iter=200, random_state=0, init=init)
                seconds = time.perf_counter() - t
            centre = heads if centre is None else centre
            out.append(f"{name}: {passes.count} passes ({sum(int(h.n_iter_[0]) for h in heads)}"
                       f" iterations over the {len(Cs)} Cs), {seconds:.1f} s")
    return "; ".join(out)


def sklearn_sweep(bank: FeatureBank, tap: str, runs: Path) -> dict:
    """scikit-learn's sweep over the logreg grid, on fit_heads' own train/validation rows,
    and the seconds of the logistic path over the same grid and rows without fit's pruning
    (every C to its optimum or max_iter, as scikit-learn's sweep runs): its like-for-like
    peer."""
    split = np.load(runs / "split.npz")
    train, val = split["train_rows"], split["val_rows"]
    X, y = bank.load("train", tap)
    Xt, yt = bank.load("test", tap)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        t = time.perf_counter()
        logistic_path(X[train], y[train], list(get_head_spec("logreg").grid["C"]),
                      max_iter=200, random_state=0)
        path_seconds = time.perf_counter() - t
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
    return {"seconds": time.perf_counter() - t, "path_seconds": path_seconds,
            "C": best[0], "val_accuracy": best[1],
            "test_accuracy": best[2], "iterations": iters,
            "hit_max_iter": any(issubclass(w.category, ConvergenceWarning) for w in caught)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_arguments(p)
    p.add_argument("--heads", default="logreg,mlp")
    p.add_argument("--device", default="auto")
    p.add_argument("--skip-sklearn", action="store_true")
    p.add_argument("--views", type=int, default=0, help="also fit with N views and the mirror")
    p.add_argument("--skip-passes", action="store_true",
                   help="with --views: without the logistic path's passes (4 more paths)")
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
              f"{np.__version__}, {cpu_model()}, {torch.get_num_threads()} torch "
              f"threads, device {args.device}"
              + (f" ({torch.cuda.get_device_name()})" if torch.cuda.is_available() else ""))
        print(f"{source}: train {bank.shape('train', tap)}, test {bank.shape('test', tap)}, "
              f"{len(bank.classes)} classes, tap {tap}")
        heads = args.heads.split(",")
        print(f"featurebank fit --heads {args.heads}:", end=" ")
        board, total = timed_fit(bank, tap, heads, args.device, out=tmp / "runs",
                                 views="none")
        if "logreg" in heads and not args.skip_sklearn:
            sk = sklearn_sweep(bank, tap, tmp / "runs")
            ours = next(r for r in board["rows"] if r["head"] == "logreg")
            print(f"  sklearn sweep {sk['seconds']:7.2f} s (StandardScaler + LogisticRegression "
                  f"lbfgs, warm_start, iterations {sk['iterations']}"
                  f"{', hit max_iter' if sk['hit_max_iter'] else ''}), chosen C={sk['C']:g}: "
                  f"val {sk['val_accuracy']:.4f}, test {sk['test_accuracy']:.4f}")
            full = sk["path_seconds"]
            print(f"  logistic path without pruning {full:7.2f} s: speed-up "
                  f"{sk['seconds'] / full:.2f}x over scikit-learn's sweep (fit's pruned sweep: "
                  f"{sk['seconds'] / ours['sweep_seconds']:.2f}x), selected test accuracy "
                  f"{100 * (ours['test_accuracy'] - sk['test_accuracy']):+.2f} points")
        if args.views:
            print(f"featurebank fit --views {args.views} --tta:", end=" ")
            _, seconds = timed_fit(bank, tap, heads, args.device, out=None, views=args.views,
                                   tta=True)
            print(f"  ({seconds / total:.2f}x the centre-only fit)")
            if "logreg" in heads and not args.skip_passes:
                print(f"  logistic path: {view_passes(bank, tap, tmp / 'runs', args.views)}")


if __name__ == "__main__":
    main()
