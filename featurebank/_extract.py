"""The extraction engine: images through a frozen backbone, once, into a feature bank.

One straight line per batch: uint8 images (prefetched, pinned on CUDA) -> device -> resize and
normalise there -> backbone under inference mode (channels_last; bf16/fp16 autocast on CUDA) ->
features cast to the bank dtype and copied back asynchronously -> written by a writer thread,
so the HDF5 writes of one batch overlap the compute of the next.
"""

from __future__ import annotations

import contextlib
import os
import queue
import sys
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from ._decode import DECODERS, FILES, Decoding, jpeg_decoder
from ._distributed import Rank, barrier, current_rank, process_group, shard_path
from ._io import (IMAGE_SIZE, NON_NEGATIVE_INT, POSITIVE_INT, OutputLock, amp_dtype,
                  check_choice, resolve_device)
from .backbones import get_backbone
from .bank import BankWriter, FeatureBank, bank_fingerprint, write_virtual_bank
from .data import ImageBatch, ImageSource, open_source
from .exceptions import BankError, FeatureBankError, ParameterError

__all__ = ["extract"]

DTYPES = ("float16", "float32")


def _default_out(dataset: str, model: str, weights: Any, image_size: int) -> Path:
    kind, _, arg = str(dataset).partition(":")
    data = Path(arg).stem or kind if arg else kind
    w = "none" if weights is None else Path(str(weights)).stem.lower()
    return Path(f"{data}_{model.replace(':', '-')}_{w}_{image_size}px.h5")


def _prefetch(it: Iterator[ImageBatch], pin: bool, depth: int = 3) -> Iterator[ImageBatch]:
    """Run ``it`` in a background thread, ``depth`` batches ahead (pinned when ``pin``)."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def fill() -> None:
        try:
            for b in it:
                if pin and not b.images.is_cuda:  # the gpu decoder's are there already
                    b.images = b.images.pin_memory()
                while not stop.is_set():
                    try:
                        q.put(b, timeout=0.1)
                        break
                    except queue.Full:
                        pass
                if stop.is_set():
                    return
            q.put(done)
        except BaseException as e:  # handed to the consumer, raised there
            q.put(e)

    t = threading.Thread(target=fill, daemon=True, name="featurebank-prefetch")
    t.start()
    try:
        while (item := q.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


@contextlib.contextmanager
def _same_cudnn_algorithms() -> Iterator[None]:
    """cuDNN chooses its convolution algorithms by heuristics (deterministic ones), not by
    timing them: timing can pick another algorithm in another process, and a resumed
    extraction must compute the rows an uninterrupted one would. The caller's settings are
    restored afterwards."""
    cudnn = torch.backends.cudnn
    saved = cudnn.benchmark, cudnn.deterministic
    cudnn.benchmark, cudnn.deterministic = False, True
    try:
        yield
    finally:
        cudnn.benchmark, cudnn.deterministic = saved


def extract(dataset: str | ImageSource = "cifar10", *, data_root: str | os.PathLike = "data",
            download: bool = False, model: str = "vgg19",
            weights: str | os.PathLike | None = "DEFAULT",
            taps: str | list[str] | None = None, image_size: int = 224,
            batch_size: int | None = None, device: str = "auto", dtype: str = "float16",
            out: str | os.PathLike | None = None, resume: bool = True, overwrite: bool = False,
            skip_bad: bool = False, num_workers: int | None = None, decode: str = "pil",
            token_pool: str = "cls", progress: bool = True) -> FeatureBank:
    """Run a frozen backbone once over an image dataset and write a feature bank.

    Parameters
    ----------
    dataset : str or ImageSource, default="cifar10"
        ``"cifar10"``, ``"cifar100"``, ``"folder:PATH"``, ``"npz:PATH"``, or an
        :class:`ImageSource` (e.g. :func:`featurebank.from_arrays`; then ``out`` is required).
    data_root : path-like, default="data"
        Folder holding (or receiving, with ``download``) the CIFAR files.
    download : bool, default=False
        Download CIFAR when it is not under ``data_root`` (needs a network).
    model : str, default="vgg19"
        Backbone name; see :func:`featurebank.list_backbones`.
    weights : str, path-like or None, default="DEFAULT"
        ``"DEFAULT"``, a weights name, ``"none"``/``None`` or a local state_dict file.
    taps : str or list of str, optional
        Taps to store (all from one forward pass). Default ``fc7`` for VGG, else
        ``penultimate``.
    image_size : int, default=224
        Images are resized to ``image_size`` x ``image_size``.
    batch_size : int, optional
        Images per forward pass; default 256 on CUDA, 64 on the CPU.
    device : {"auto", "cpu", "cuda"}, default="auto"
    dtype : {"float16", "float32"}, default="float16"
        Storage dtype of the features.
    out : path-like, optional
        Bank file; default ``<dataset>_<model>_<weights>_<size>px.h5`` in the working folder.
    resume : bool, default=True
        Continue an unfinished extraction of the same arguments (``<out>.partial``).
    overwrite : bool, default=False
        Replace an existing complete bank at ``out`` (it stays until the new one is complete).
    skip_bad : bool, default=False
        Leave unreadable image files out (each logged, and listed in the bank) instead of
        failing on the first one.
    num_workers : int, optional
        DataLoader workers that decode image files; default ``min(8, cpu_count)``.
    decode : {"pil", "tensor", "gpu"}, default="pil"
        How image files (not CIFAR or npz arrays) are decoded and resized: PIL in the workers;
        JPEGs to tensors and torch's resize in the workers (about twice PIL's rate on large
        JPEGs); or JPEGs in batches on the CUDA device (nvJPEG), resized there. Pixels agree
        with PIL's to within 2 levels (bilinear, bicubic); the bank records the decoder.
    token_pool : {"cls", "mean"}, default="cls"
        How a tap that gives transformer tokens ``(N, T, D)`` (a vision transformer's blocks)
        becomes one vector: the class token, or the mean over tokens.
    progress : bool, default=True
        Show a progress bar with images/s and ETA on stderr.

    Returns
    -------
    FeatureBank
        The complete bank at ``out``.
    """
    image_size = IMAGE_SIZE.check("image_size", image_size)
    dev = resolve_device(device)
    batch_size = POSITIVE_INT.check("batch_size", batch_size if batch_size is not None
                                    else 256 if dev.type == "cuda" else 64)
    check_choice("dtype", dtype, DTYPES)
    _check_decode(decode, dev)
    workers = (min(8, os.cpu_count() or 1) if num_workers is None
               else NON_NEGATIVE_INT.check("num_workers", num_workers))
    out = _output_path(dataset, out, overwrite, model, weights, image_size)
    kw = dict(data_root=data_root, download=download, model=model, weights=weights, taps=taps,
              image_size=image_size, batch_size=batch_size, dev=dev, dtype=dtype,
              workers=workers, skip_bad=skip_bad, resume=resume, token_pool=token_pool,
              decode=decode, progress=progress)
    rank = current_rank()
    if rank is not None:  # launched by torchrun: this process writes its shard
        return _extract_distributed(dataset, out, rank, overwrite=overwrite, **kw)
    with OutputLock(out):  # before any slow work, so a second writer fails fast
        source, backbone, spec = _prepare(dataset, **kw)
        return _write(out, source, backbone, spec, source.describe(), **kw)


def _check_decode(decode: str, dev: torch.device) -> None:
    check_choice("decode", decode, DECODERS)
    if decode == "gpu" and dev.type != "cuda":
        raise ParameterError(
            f"the 'decode' parameter is 'gpu' (--decode gpu: JPEGs decoded on a CUDA device), "
            f"but this extraction runs on {dev}; use 'tensor' (the same decoding on the "
            f"CPU) or 'pil'.")


def _output_path(dataset, out, overwrite: bool, model: str, weights: Any,
                 image_size: int) -> Path:
    """The bank's path (``out``, or the default name); an existing bank needs ``overwrite``."""
    if isinstance(dataset, ImageSource) and out is None:
        raise FeatureBankError("out= is required when dataset is an ImageSource.")
    out = Path(out) if out is not None else _default_out(dataset, model, weights, image_size)
    if out.exists() and not overwrite:
        raise BankError(f"feature bank {str(out)!r} exists already; pass overwrite=True "
                        f"(--overwrite) to replace it, or choose another out= path.")
    return out


def _prepare(dataset, *, data_root, download, model, weights, taps, image_size, dev, dtype,
             token_pool, decode, **_):
    """The source, the backbone on its device, and the spec of the bank they make."""
    source = (dataset if isinstance(dataset, ImageSource)
              else open_source(dataset, data_root=data_root, download=download))
    if source.resize != FILES and decode != "pil":
        raise ParameterError(
            f"the 'decode' parameter (--decode) applies to image files, and {source.name!r} "
            f"holds decoded images (arrays); leave it at 'pil', got {decode!r}.")
    if decode != "pil":  # a missing JPEG decoder fails here, on this rank's device
        jpeg_decoder(dev.type if decode == "gpu" else "cpu")
    backbone = get_backbone(model, weights=weights, taps=taps, token_pool=token_pool)
    backbone.requires_grad_(False).to(dev).to(memory_format=torch.channels_last)
    tap_info = backbone.probe(image_size, dev)
    return source, backbone, _spec(backbone, tap_info, source, image_size, dtype, decode)


def _write(out: Path, source: ImageSource, backbone, spec: dict[str, Any],
           dataset: dict[str, Any], *, resume, dev, batch_size, dtype, workers,
           skip_bad, progress, **_) -> FeatureBank:
    """Run the source through the backbone into the bank ``out`` (resumed when asked)."""
    writer = BankWriter(out, spec=spec, dataset=dataset,
                        split_sizes={k: len(v) for k, v in source.splits.items()},
                        tap_dims={t: v["dim"] for t, v in spec["tap_layers"].items()},
                        resume=resume)
    try:
        _run(backbone, source, writer, dev=dev, decoding=Decoding.from_spec(spec),
             batch_size=batch_size, dtype=dtype, workers=workers, skip_bad=skip_bad,
             progress=progress)
        writer.commit(_skipped(source, writer))
    finally:
        writer.close()
    return FeatureBank(out)


def _extract_distributed(dataset, out: Path, rank: Rank, *, overwrite: bool,
                         **kw: Any) -> FeatureBank:
    """This rank's shard of every split into ``BANK.h5.shards/``, then (rank 0) the bank
    over all shards once every rank is done."""
    if kw["dev"].type == "cuda":
        kw["dev"] = torch.device("cuda", rank.local)
        torch.cuda.set_device(kw["dev"])
    kw["progress"] = kw["progress"] and rank.rank == 0  # one bar, not one per rank
    with process_group(rank, kw["dev"].type == "cuda") as group:
        shard = shard_path(out, rank.rank, rank.world)
        with OutputLock(shard, what=f"extraction ({rank})"):
            source, backbone, spec = _prepare(dataset, **kw)
            part = source.shard(rank.rank, rank.world, kw["batch_size"])
            whole = source.describe()  # its fingerprint reads every image: once
            described = {**whole, "splits": {k: len(v) for k, v in
                                                         part.splits.items()},
                         "shard": {"rank": rank.rank, "world": rank.world,
                                   "rows": {k: [v.start, v.stop]
                                            for k, v in part.splits.items()}}}
            if not _complete_shard(shard, spec, described, overwrite):
                _write(shard, part, backbone, spec, described, **kw)
        barrier(group, rank, "every rank's shard")
        if rank.rank == 0:
            with OutputLock(out):
                write_virtual_bank(out, [shard_path(out, r, rank.world)
                                         for r in range(rank.world)],
                                   spec=spec, dataset=whole)
        barrier(group, rank, "rank 0 to write the bank")
    return FeatureBank(out)


def _complete_shard(shard: Path, spec, dataset, overwrite: bool) -> bool:
    """Whether ``shard`` is already this rank's finished shard (a rerun after another rank
    failed); a shard of other arguments is replaced only with ``overwrite``."""
    if not shard.exists():
        return False
    if FeatureBank(shard).fingerprint == bank_fingerprint(spec, dataset):
        return True
    if not overwrite:
        raise BankError(f"shard {str(shard)!r} holds another extraction (its fingerprint "
                        f"differs); pass overwrite=True (--overwrite) to replace it.")
    return False


def _spec(backbone, tap_info: dict, source: ImageSource, image_size: int, dtype: str,
          decode: str) -> dict[str, Any]:
    """The bank's ``spec``: everything about the network and preprocessing its rows depend on."""
    prep = backbone.preprocessing
    spec = {
        "model": backbone.name, "weights": str(backbone.weights),
        "weights_path": backbone.weights_path, "taps": backbone.taps,
        "tap_layers": tap_info, "image_size": image_size, "resize": source.resize,
        "interpolation": prep.interpolation, "antialias": prep.interpolation != "nearest",
        "mean": list(prep.mean), "std": list(prep.std),
        "preprocessing_source": prep.source, "dtype": dtype,
    }
    if decode != "pil":  # absent means PIL, as in every bank before the field existed: their
        spec["decode"] = decode  # fingerprints (and the heads that record them) stay valid
    return spec


def _skipped(source: ImageSource, writer: BankWriter) -> dict[str, list[str]]:
    """Per split, the source rows that did not become bank rows (unreadable, skip_bad)."""
    out = {}
    for name, split in source.splits.items():
        kept = set(writer.f[name]["index"][: writer.progress(name)[0]].tolist())
        out[name] = [split.describe_row(i) for i in split.positions() if i not in kept]
    return out


@_same_cudnn_algorithms()
def _run(backbone, source, writer, *, dev, decoding, batch_size, dtype, workers, skip_bad,
         progress) -> None:
    from tqdm.auto import tqdm

    cuda = dev.type == "cuda"
    amp = amp_dtype(dev)
    store = getattr(torch, dtype)
    total = sum(len(s) for s in source.splits.values())
    done = sum(writer.progress(name)[1] for name in source.splits)
    bar = tqdm(total=total, initial=done, unit="img", disable=not progress, dynamic_ncols=True,
               desc="extract", file=sys.stderr, smoothing=0.1)
    if writer.resumed and done and progress:
        bar.write(f"resuming {writer.partial}: {done} of {total} images already done",
                  file=sys.stderr)
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="featurebank-writer")
    pending: deque = deque()
    failed = threading.Event()
    n_skipped = 0

    def write(split: str, batch: ImageBatch, feats: dict[str, torch.Tensor], event) -> None:
        if failed.is_set():  # rows must land in order: nothing after a failed write
            return
        if event is not None:
            event.synchronize()
        try:
            writer.write(split, features={t: v.numpy() for t, v in feats.items()},
                         labels=batch.labels, index=batch.positions, sources_done=batch.stop)
        except BaseException:
            failed.set()
            raise

    try:
        for name, split in source.splits.items():
            bar.set_description(f"extract {name}")
            start = writer.progress(name)[1]
            batches = split.batches(start, batch_size, decoding=decoding, device=dev,
                                    num_workers=workers, skip_bad=skip_bad)
            for batch in _prefetch(batches, pin=cuda):
                for path in batch.skipped:  # logged even when quiet: the bank lacks these
                    bar.write(f"skipped unreadable image: {path}", file=sys.stderr)
                    n_skipped += 1
                feats, event = {}, None
                if len(batch.labels):
                    with torch.inference_mode(), torch.autocast(dev.type, dtype=amp,
                                                                enabled=amp is not None):
                        x = backbone.preprocess(batch.images.to(dev, non_blocking=True),
                                                decoding.image_size)
                        out = backbone(x)
                    feats = {t: v.to(store).to("cpu", non_blocking=True) for t, v in out.items()}
                    if cuda:
                        event = torch.cuda.Event()
                        event.record()
                pending.append(pool.submit(write, name, batch, feats, event))
                while len(pending) > 2:
                    pending.popleft().result()
                bar.update(batch.stop - batch.start)
        while pending:
            pending.popleft().result()
        if n_skipped:
            bar.write(f"skipped {n_skipped} unreadable images (listed in the bank: "
                      f"FeatureBank.skipped(split))", file=sys.stderr)
    finally:
        for fut in pending:  # let rows already computed reach the disk, even on Ctrl-C
            try:
                fut.result()
            except Exception:
                pass
        pool.shutdown(wait=True)
        bar.close()
