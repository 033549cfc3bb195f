"""Time the command line's start: ``featurebank --help``, ``--version`` and a command's help.

Each is run in a fresh interpreter ``--repeat`` times; prints the median and the fastest wall
time with the conditions. ``featurebank --help`` imports neither torch nor the command modules,
so it should take well under a second::

    python scripts/bench_cli.py
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    print(f"python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs; "
          f"each command in a fresh interpreter, {args.repeat} runs")
    for argv in (["--help"], ["--version"], ["fit", "--help"], ["finetune", "--help"]):
        times = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "featurebank", *argv], env=env, check=True,
                           stdout=subprocess.DEVNULL)
            times.append(time.perf_counter() - t)
        print(f"featurebank {' '.join(argv):<16} median {statistics.median(times):6.3f} s   "
              f"fastest {min(times):6.3f} s")


if __name__ == "__main__":
    main()
