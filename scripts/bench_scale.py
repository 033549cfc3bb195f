"""Benchmark heads on a bank larger than memory: fit time, passes and peak memory.

Writes (once, then reuses) a synthetic float16 bank of ``--rows`` x ``--dim`` random ReLU-like
features (ImageNet-1k's 1.28 M x 4,096 by default: ~10.5 GB), then fits each head in a fresh
process, streaming the train split from the bank (``StreamedRows``: one chunk in memory at a
time), and prints its fit time, passes over the data, test accuracy and peak resident memory
(``VmHWM``, else ``resource.getrusage``), with the conditions. Examples::

    python scripts/bench_scale.py                      # 1.28 M rows (writes ~10.5 GB)
    python scripts/bench_scale.py --rows 256000        # a smaller run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def peak_rss_gib() -> float:
    """This process's peak resident memory: ``VmHWM`` where /proc has it. ``ru_maxrss`` is
    kept across ``execve`` on Linux, so a child started by a parent that had just written the
    bank would report the parent's peak (it did: 2.79 GiB at any bank size)."""
    try:
        with open("/proc/self/status") as f:
            kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 2**20


def child(bank_path: str, head: str, C: float) -> None:
    """One fit, streamed, in this fresh process; prints a JSON line."""
    import featurebank.heads.logistic as logistic
    from featurebank import FeatureBank, LogisticHead, MLPHead
    from featurebank.rows import StreamedRows

    bank = FeatureBank(bank_path)
    y = bank.labels("train")
    passes = []
    real = logistic._scores_grad_numpy
    logistic._scores_grad_numpy = lambda *a, **k: passes.append(1) or real(*a, **k)
    est = (LogisticHead(C=C, random_state=0) if head == "logreg"
           else MLPHead(hidden_layer_sizes=(512,), dropout=0.2, n_components=256,
                        random_state=0, device="cpu"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = time.perf_counter()
        est.fit(StreamedRows(bank.features("train")), y)
        secs = time.perf_counter() - t
    test = StreamedRows(bank.features("test"))
    yt = bank.labels("test")
    correct = sum(int((est.predict(c) == yt[s:s + len(c)]).sum()) for s, c in test.chunks())
    peak = peak_rss_gib()
    print(json.dumps({"head": head, "seconds": secs, "passes": len(passes) or None,
                      "iterations": int(np.ravel(est.n_iter_)[0]),
                      "test_accuracy": correct / len(yt), "peak_rss_gib": peak}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=1_280_000)
    p.add_argument("--dim", type=int, default=4096)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--test-rows", type=int, default=10000)
    p.add_argument("--heads", default="logreg,mlp")
    p.add_argument("--C", type=float, default=1e-3)
    p.add_argument("--bank", default=None, help="where the synthetic bank is kept "
                                                "(default: the temp folder)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    bank = Path(args.bank or Path(tempfile.gettempdir()) /
                f"featurebank_scale_{args.rows}x{args.dim}.h5")
    if args.child:
        return child(str(bank), args.child, args.C)
    import featurebank

    if not bank.exists():
        t = time.perf_counter()
        sys.path.insert(0, str(HERE))
        from bench_heads import write_relu_bank

        write_relu_bank(bank, {"train": args.rows, "test": args.test_rows}, args.dim,
                        args.classes)
        print(f"wrote {bank} in {time.perf_counter() - t:.0f} s")
    gib = bank.stat().st_size / 2**30
    print(f"featurebank {featurebank.__version__}, numpy {np.__version__}, "
          f"{platform.machine()}, {os.cpu_count()} CPUs, "
          f"{os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.0f} GiB memory")
    print(f"bank {bank}: {args.rows} x {args.dim} float16 train rows, {args.classes} classes, "
          f"{gib:.1f} GiB on disk; each head fitted in a fresh process, streamed")
    for head in args.heads.split(","):
        proc = subprocess.run([sys.executable, __file__, "--child", head, "--rows",
                               str(args.rows), "--dim", str(args.dim), "--C", str(args.C),
                               "--bank", str(bank)], capture_output=True, text=True)
        if proc.returncode:
            print(f"{head}: failed\n{proc.stderr[-2000:]}")
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        what = f"C={args.C:g}" if head == "logreg" else "(512,), n_components=256"
        print(f"{head:<7} {what:<26} fit {r['seconds']:8.1f} s  "
              + (f"passes {r['passes']:4d}  " if r["passes"] else f"epochs {r['iterations']:3d}  ")
              + f"test acc {r['test_accuracy']:.4f}  peak RSS {r['peak_rss_gib']:.2f} GiB")


if __name__ == "__main__":
    main()
