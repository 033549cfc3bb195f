"""Several processes launched by torchrun (or any launcher that sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``): extraction's shards and
barriers, and the fine-tune's data-parallel collectives (each rank's part of a batch, sums,
gathers, rank 0's decisions given to all).

Each rank takes whole batches of every split (:func:`featurebank.data.shard_rows`), writes
them as an ordinary bank ``BANK.h5.shards/rank-RRRRR-of-NNNNN.h5`` (resumable on its own), and
once every shard is complete rank 0 writes ``BANK.h5``, whose datasets are HDF5 virtual
datasets over the shards (:func:`featurebank.bank.write_virtual_bank`). Barriers are
``monitored_barrier``s on a gloo group with a time limit, so a rank that died is named in the
error of the others instead of leaving them waiting in a collective.

The fine-tune (``finetuning/``) trains under DistributedDataParallel: every rank takes its
:func:`part_of` each global batch, validation rows are split the same way and the logits
gathered (:func:`gather_parts`), and what one process decides and writes is rank 0's
(:func:`on_rank_zero`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from .exceptions import FeatureBankError

__all__ = ["Rank", "all_sum", "barrier", "current_rank", "gather_parts", "on_rank_zero", "part_of",
           "process_group", "shard_path", "sync"]

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


# -- collectives of a data-parallel run (the fine-tune) ----------------------------------------
def part_of(n: int, rank: Rank | None) -> slice:
    """This rank's contiguous part of ``n`` items (as ``np.array_split``: the first
    ``n % world`` ranks take one more); all of them for a single process."""
    if rank is None:
        return slice(0, n)
    q, r = divmod(n, rank.world)
    start = rank.rank * q + min(rank.rank, r)
    return slice(start, start + q + (rank.rank < r))


def all_sum(values, rank: Rank | None):
    """The sum of a tensor over the ranks (itself for a single process)."""
    if rank is None:
        return values
    import torch.distributed as dist

    values = values.clone()
    dist.all_reduce(values)
    return values


def gather_parts(part, n: int, rank: Rank | None):
    """The ``n`` rows every rank holds a :func:`part_of` (its ``part``), in order, on every
    rank."""
    if rank is None:
        return part
    import torch
    import torch.distributed as dist

    longest = part_of(n, Rank(0, rank.world, 0)).stop  # rank 0's part is never shorter
    padded = part.new_zeros((longest, *part.shape[1:]))
    padded[:len(part)] = part
    parts = [torch.empty_like(padded) for _ in range(rank.world)]
    dist.all_gather(parts, padded)
    sizes = [len(range(n)[part_of(n, Rank(r, rank.world, 0))]) for r in range(rank.world)]
    return torch.cat([p[:s] for p, s in zip(parts, sizes)])


def on_rank_zero(fn, rank: Rank | None):
    """``fn()`` run by rank 0 alone, its result given to every rank; an error it raises is
    raised on every rank (FeatureBankError with its message), so all stop together."""
    if rank is None:
        return fn()
    import torch.distributed as dist

    box: list = [None]
    if rank.rank == 0:
        try:
            box[0] = ("ok", fn())
        except FeatureBankError as e:
            box[0] = ("error", (type(e), str(e)))
    dist.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "error":
        raise value[0](value[1])
    return value


def sync(rank: Rank | None) -> None:
    """Every rank waits here for the others (nothing for a single process)."""
    if rank is not None:
        import torch.distributed as dist

        dist.barrier()
