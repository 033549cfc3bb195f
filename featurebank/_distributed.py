"""Extraction over several processes launched by torchrun (or any launcher that sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``).

Each rank takes whole batches of every split (:func:`featurebank.data.shard_rows`), writes
them as an ordinary bank ``BANK.h5.shards/rank-RRRRR-of-NNNNN.h5`` (resumable on its own), and
once every shard is complete rank 0 writes ``BANK.h5``, whose datasets are HDF5 virtual
datasets over the shards (:func:`featurebank.bank.write_virtual_bank`). Barriers are
``monitored_barrier``s on a gloo group with a time limit, so a rank that died is named in the
error of the others instead of leaving them waiting in a collective.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from .exceptions import FeatureBankError

__all__ = ["Rank", "barrier", "current_rank", "process_group", "shard_path"]

# how long a rank waits for the others at a barrier (the slowest shard may take this long
# longer than the fastest); FEATUREBANK_BARRIER_TIMEOUT (seconds) changes it
_TIMEOUT = float(os.environ.get("FEATUREBANK_BARRIER_TIMEOUT", 4 * 3600))


@dataclass(frozen=True)
class Rank:
    """This process's place in a distributed run."""

    rank: int
    world: int
    local: int

    def __str__(self) -> str:
        return f"rank {self.rank} of {self.world}"


def current_rank() -> Rank | None:
    """The distributed run this process belongs to (torchrun's environment), or None."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    return Rank(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def shard_path(out: Path, rank: int, world: int) -> Path:
    """``BANK.h5.shards/rank-RRRRR-of-NNNNN.h5``."""
    return Path(f"{out}.shards") / f"rank-{rank:05d}-of-{world:05d}.h5"


@contextlib.contextmanager
def process_group(rank: Rank, cuda: bool) -> Iterator[object]:
    """The default process group (NCCL on CUDA, gloo on the CPU) and a gloo group for the
    barriers; yields the barrier group. A group someone else set up is used as it is."""
    import torch.distributed as dist

    own = not dist.is_initialized()
    if own:
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=_TIMEOUT))
    group = dist.new_group(backend="gloo", timeout=timedelta(seconds=_TIMEOUT))
    try:
        yield group
    finally:
        if own:
            dist.destroy_process_group()


def barrier(group: object, rank: Rank, waiting_for: str) -> None:
    """Wait until every rank arrives; FeatureBankError naming the ranks that did not."""
    import torch.distributed as dist

    try:
        dist.monitored_barrier(group=group, timeout=timedelta(seconds=_TIMEOUT),
                               wait_all_ranks=True)
    except RuntimeError as e:
        raise FeatureBankError(
            f"{rank}: waiting for {waiting_for}, another rank failed or stopped "
            f"({str(e).splitlines()[0]}). Each rank's finished rows are kept in its shard: fix "
            f"the cause and rerun the same command to resume.") from None
