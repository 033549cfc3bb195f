"""Fine-tune from the best head: ``python scripts/finetune.py BANK.h5 --runs runs``.

A thin wrapper of ``featurebank finetune`` (same arguments); the work is in
``featurebank.finetune``.
"""

import sys

from featurebank.cli import main

if __name__ == "__main__":
    sys.exit(main(["finetune", *sys.argv[1:]]))
