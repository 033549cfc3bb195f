"""The extraction engine: images through a frozen backbone, once, into a feature bank.

One straight line per batch: uint8 images (prefetched, pinned on CUDA) -> device -> resize and
normalise there -> backbone under inference mode (channels_last; bf16/fp16 autocast on CUDA) ->
features cast to the bank dtype and copied back asynchronously -> written by a writer thread,
so the HDF5 writes of one batch overlap the compute of the next.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import queue
import sys
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._decode import DECODERS, jpeg_decoder
from ._distributed import Rank, barrier, current_rank, process_group, shard_path
from ._io import (IMAGE_SIZE, NON_NEGATIVE_INT, POSITIVE_INT, OutputLock, amp_dtype,
                  autocast, progress_bar, resolve_device)
from ._options import Options, option
from .backbones import TOKEN_POOLS, get_backbone
from .bank import BankWriter, FeatureBank, bank_fingerprint, write_virtual_bank
from .data import ImageBatch, ImageSource, open_source
from .exceptions import BackboneError, BankError, FeatureBankError, ParameterError
from .views import VIEW_RECIPES, view_batches
from .records import (BankSpec, DatasetInfo, Resize, ShardInfo, SourceOptions, TapLayer,
                      ViewRecipe)

__all__ = ["ExtractConfig", "extract"]

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


def _parse_model(name: str) -> str:
    """``--model``: a name one of the backbone families takes (argparse's error otherwise)."""
    import argparse

    from .backbones import check_name

    try:
        return check_name(name)
    except BackboneError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


@dataclass(frozen=True)
class ExtractConfig(Options):
    """Settings of an extraction (see :func:`featurebank.extract`): what the bank's rows are
    made of (``result`` options: a partial resumes only with the same ones) and how they are
    computed.

    Every value is checked when the config is made: an out-of-range one raises
    :class:`~featurebank.ParameterError` naming it.
    """

    model: str = option("vgg19", "torchvision model name or timm:NAME", parse=_parse_model,
                        metavar="MODEL")
    weights: str | None = option(
        "DEFAULT", "pretrained weights (DEFAULT), random init (none), a weights name, or a "
        "local state_dict file", metavar="DEFAULT|none|NAME|PATH")
    taps: str | None = option(None, "taps to store: fc6, fc7, pool5 (VGG), penultimate, or any "
                                    "module name (default: fc7 for VGG, else penultimate)",
                              metavar="TAP[,TAP...]")
    image_size: int = option(224, "square input size in pixels", check=IMAGE_SIZE,
                             metavar="PX")
    dtype: str = option("float16", "storage dtype of the features", choices=DTYPES)
    decode: str = option("pil", "how image files are decoded and resized: PIL in the workers; "
                                "JPEGs to tensors and torch's resize in the workers (faster on "
                                "large JPEGs); or JPEGs in batches on the CUDA device (nvJPEG)",
                         choices=DECODERS)
    amp: str = option("auto", "mixed precision of the forward passes: auto (bfloat16 autocast "
                              "on GPUs that have it, else float16; on CPUs with native "
                              "bfloat16, AMX or AVX512-BF16, bfloat16; else float32), or off "
                              "(float32 everywhere); the bank records which ran",
                      choices=("auto", "off"), result=False)
    token_pool: str = option("cls", "how transformer token outputs (N, T, D) become one "
                                    "vector: the class token or the mean",
                             choices=TOKEN_POOLS, flags=("--pool",))
    skip_bad: bool = option(False, "leave unreadable images out (logged and recorded in the "
                                   "bank) instead of failing")
    label_key: str | None = option(None, "wds: read each sample's label from this key of its "
                                         "json member (default: its cls member)",
                                   metavar="KEY")
    classes: str | None = option(None, "wds, csv: a file of class names, one per line, in "
                                       "label order (default: classes.txt beside the shards, "
                                       "else the labels)", metavar="FILE")
    image_column: str | None = option(None, "hf: the image column (default: the Image "
                                            "feature)", metavar="NAME")
    label_column: str | None = option(None, "hf: the label column (default: the ClassLabel "
                                            "feature)", metavar="NAME")
    views: int = option(0, "random augmented views of each image of --view-splits, stored "
                           "beside its row, with the mirror view of every split (0: none)",
                        check=NON_NEGATIVE_INT, metavar="K")
    mirror: bool = option(False, "store the mirror view (the input flipped left to right) of "
                                 "every image, without random views (--views K implies it)")
    view_splits: str = option("train", "the splits that get the --views random views (each "
                                       "split gets the mirror)", metavar="SPLIT[,SPLIT...]")
    view_seed: int = option(0, "seed of the random views (each image's views are drawn from "
                               "it, the image's position and the view number)",
                            check=NON_NEGATIVE_INT, metavar="SEED")
    view_recipe: str = option("auto", "the random views' augmentation: pad_crop_flip (zero "
                                      "padding of 1/8 of the side, a random crop, a flip), "
                                      "resized_crop_flip (a random crop of 35 to 100 percent "
                                      "of the area resized back, a flip), or auto: "
                                      "pad_crop_flip for source images of 64 px or less",
                              choices=VIEW_RECIPES)
    limit: int | None = option(None, "at most N images of each split, stratified by class "
                                     "(the first of each class; recorded in the bank): a first "
                                     "run sized for a laptop", check=POSITIVE_INT, metavar="N")
    batch_size: int | None = option(
        None, "images per forward pass (default: 256 on CUDA, 64 on the CPU; a partial "
              "resumes bit for bit with the same one)",
        check=POSITIVE_INT, result=False)
    num_workers: int | None = option(
        None, "processes decoding image files (folder datasets), a bounded few batches ahead "
              "(default: min(8, cores))", check=NON_NEGATIVE_INT,
        result=False, flags=("--workers", "--num-workers"))

    def source_options(self) -> SourceOptions:
        return SourceOptions(self.label_key, self.classes, self.image_column, self.label_column,
                             self.limit)

    def taps_list(self) -> list[str] | None:
        if isinstance(self.taps, str):
            return [t.strip() for t in self.taps.split(",") if t.strip()]
        return list(self.taps) if self.taps else None


def extract(dataset: str | ImageSource = "cifar10", *, out: str | os.PathLike | None = None,
            data_root: str | os.PathLike = "data", download: bool = False,
            device: str = "auto", resume: bool = True, overwrite: bool = False,
            progress: bool = True, config: ExtractConfig | None = None,
            **options: Any) -> FeatureBank:
    """Run a frozen backbone once over an image dataset and write a feature bank.

    Parameters
    ----------
    dataset : str or ImageSource, default="cifar10"
        ``"cifar10"``, ``"cifar100"``, ``"folder:PATH"``, ``"npz:PATH"``, ``"wds:PATTERN"``,
        ``"hf:NAME_OR_PATH[:CONFIG]"``, ``"csv:FILE"`` (see :func:`featurebank.open_source`),
        or an :class:`ImageSource` (e.g. :func:`featurebank.from_arrays`; then ``out`` is
        required).
    out : path-like, optional
        Bank file; default ``<dataset>_<model>_<weights>_<size>px.h5`` in the working folder.
    data_root : path-like, default="data"
        Folder holding (or receiving, with ``download``) the CIFAR files.
    download : bool, default=False
        Download CIFAR when it is not under ``data_root`` (needs a network).
    device : {"auto", "cpu", "cuda"}, default="auto"
    resume : bool, default=True
        Continue an unfinished extraction of the same arguments (``<out>.partial``).
    overwrite : bool, default=False
        Extract again over an existing bank at ``out`` (it stays until the new one is
        complete). Without it, a bank of the same arguments there is up to date (returned as
        it is) and one of other arguments is an error.
    progress : bool, default=True
        Show a progress bar with images/s and ETA on stderr.
    config : ExtractConfig, optional
        The extraction's settings; ``**options`` override its fields.
    **options
        Any :class:`ExtractConfig` field: ``model`` (default ``"vgg19"``; see
        :func:`featurebank.list_backbones`), ``weights`` (``"DEFAULT"``, a weights name,
        ``"none"``/``None`` or a local state_dict file), ``taps`` (default ``fc7`` for VGG, else
        ``penultimate``; all from one forward pass), ``image_size`` (224), ``dtype``
        (``"float16"`` or ``"float32"``), ``decode`` (``"pil"``, ``"tensor"``: JPEGs to tensors
        and torch's resize in the workers, or ``"gpu"``: nvJPEG on the CUDA device; pixels
        within 2 levels of PIL's, the bank records the decoder), ``token_pool`` (``"cls"`` or
        ``"mean"``: how transformer tokens ``(N, T, D)`` become one vector), ``skip_bad``
        (leave unreadable image files out, each logged and listed in the bank),
        ``batch_size`` (default 256 on CUDA, 64 on the CPU), ``num_workers`` (DataLoader
        workers decoding image files; default ``min(8, cpu_count)``), and the source's
        ``label_key`` (wds), ``classes`` (wds, csv: a class-names file), ``image_column`` and
        ``label_column`` (hf).

    Returns
    -------
    FeatureBank
        The complete bank at ``out``.
    """
    config = ExtractConfig.merged(config, options, "extract")
    dev = resolve_device(device)
    config = dataclasses.replace(
        config, batch_size=config.batch_size or (256 if dev.type == "cuda" else 64),
        num_workers=(min(8, os.cpu_count() or 1) if config.num_workers is None
                     else config.num_workers))
    _check_decode(config.decode, dev)
    out = output_path(dataset, out, config)
    job = _Job(dataset, config, dev, data_root=data_root, download=download, resume=resume,
               progress=progress)
    rank = current_rank()
    if rank is not None:  # launched by torchrun: this process writes its shard
        return _extract_distributed(job, out, rank, overwrite=overwrite)
    with OutputLock(out):  # before any slow work, so a second writer fails fast
        source, backbone, spec = _prepare(job)
        described = source.describe()  # its fingerprint reads every image: once
        if _up_to_date(out, spec, described, overwrite, progress):
            return FeatureBank(out)
        return _write(job, out, source, backbone, spec, described)


@dataclass(frozen=True)
class _Job:
    """One extraction's inputs, as :func:`extract` resolved them (device, batch size)."""

    dataset: str | ImageSource
    config: ExtractConfig
    dev: torch.device
    data_root: str | os.PathLike
    download: bool
    resume: bool
    progress: bool
    label: str = "extract"  # the progress bar's name

    @property
    def amp(self) -> torch.dtype | None:
        """The autocast dtype of the forward passes (None: float32)."""
        return None if self.config.amp == "off" else amp_dtype(self.dev, cpu_bf16=True)


def _check_decode(decode: str, dev: torch.device) -> None:
    if decode == "gpu" and dev.type != "cuda":
        raise ParameterError(
            f"the 'decode' parameter is 'gpu' (--decode gpu: JPEGs decoded on a CUDA device), "
            f"but this extraction runs on {dev}; use 'tensor' (the same decoding on the "
            f"CPU) or 'pil'.")


def output_path(dataset, out, config: ExtractConfig) -> Path:
    """The bank's path: ``out``, or the default name
    (``<dataset>_<model>_<weights>_<size>px.h5``)."""
    if isinstance(dataset, ImageSource) and out is None:
        raise FeatureBankError("out= is required when dataset is an ImageSource.")
    return Path(out) if out is not None else _default_out(dataset, config.model,
                                                          config.weights, config.image_size)


def _up_to_date(out: Path, spec: BankSpec, dataset: DatasetInfo, overwrite: bool,
                progress: bool) -> bool:
    """Whether ``out`` is already the bank these arguments make (same fingerprint: nothing to
    do); ``overwrite`` extracts again whatever is there, without it a bank of other arguments
    is an error."""
    if not out.exists():
        return False
    try:
        found = FeatureBank(out).fingerprint
    except BankError:
        if overwrite:
            return False
        raise
    wanted = bank_fingerprint(spec, dataset)
    if found == wanted and not overwrite:
        if progress:
            print(f"{out} is up to date: a complete bank of the same dataset, model, weights, "
                  f"taps and preprocessing (pass overwrite=True, --overwrite, to extract it "
                  f"again).", file=sys.stderr, flush=True)
        return True
    if not overwrite:
        raise BankError(f"feature bank {str(out)!r} exists already, extracted with other "
                        f"arguments (fingerprint {found[:12]}, these make {wanted[:12]}); "
                        f"pass overwrite=True "
                        f"(--overwrite) to replace it, or choose another out= path.")
    return False


def _prepare(job: _Job) -> tuple[ImageSource, Any, BankSpec]:
    """The source, the backbone on its device, and the spec of the bank they make."""
    c = job.config
    source = (job.dataset if isinstance(job.dataset, ImageSource)
              else open_source(job.dataset, data_root=job.data_root, download=job.download,
                               options=c.source_options()))
    if source.resize != Resize.FILES and c.decode != "pil":
        raise ParameterError(
            f"the 'decode' parameter (--decode) applies to image files, and {source.name!r} "
            f"holds decoded images (arrays); leave it at 'pil', got {c.decode!r}.")
    if c.decode != "pil":  # a missing JPEG decoder fails here, on this rank's device
        jpeg_decoder(job.dev.type if c.decode == "gpu" else "cpu")
    backbone = get_backbone(c.model, weights=c.weights, taps=c.taps_list(),
                            token_pool=c.token_pool)
    backbone.requires_grad_(False).to(job.dev).to(memory_format=torch.channels_last)
    tap_info = backbone.probe(c.image_size, job.dev)
    return source, backbone, _spec(backbone, tap_info, source, c, job.amp)


def _write(job: _Job, out: Path, source: ImageSource, backbone, spec: BankSpec,
           dataset: DatasetInfo) -> FeatureBank:
    """Run the source through the backbone into the bank ``out`` (resumed when asked)."""
    writer = BankWriter(out, spec=spec, dataset=dataset, resume=job.resume)
    try:
        _run(backbone, source, writer, job, decoding=spec.decoding)
        writer.commit(_skipped(source, writer))
    finally:
        writer.close()
    return FeatureBank(out)


def _extract_distributed(job: _Job, out: Path, rank: Rank, *, overwrite: bool) -> FeatureBank:
    """This rank's shard of every split into ``BANK.h5.shards/``, then (rank 0) the bank
    over all shards once every rank is done."""
    if job.dev.type == "cuda":
        job = dataclasses.replace(job, dev=torch.device("cuda", rank.local))
        torch.cuda.set_device(job.dev)
    # one bar, rank 0's: it counts that rank's share, and says so
    job = dataclasses.replace(job, progress=job.progress and rank.rank == 0,
                              label=f"extract (rank 0's share of {rank.world} ranks)")
    with process_group(rank, job.dev.type == "cuda") as group:
        shard = shard_path(out, rank.rank, rank.world)
        with OutputLock(shard, what=f"extraction ({rank})"):
            source, backbone, spec = _prepare(job)
            part = source.shard(rank.rank, rank.world, job.config.batch_size)
            whole = source.describe()  # its fingerprint reads every image: once
            if _up_to_date(out, spec, whole, overwrite, job.progress):
                return FeatureBank(out)
            described = whole.replace(
                splits={k: len(v) for k, v in part.splits.items()},
                shard=ShardInfo(rank.rank, rank.world, {k: (v.start, v.stop)
                                                        for k, v in part.splits.items()}))
            if not _complete_shard(shard, spec, described, overwrite):
                _write(job, shard, part, backbone, spec, described)
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


def _spec(backbone, tap_info: dict[str, TapLayer], source: ImageSource,
          config: ExtractConfig, amp: torch.dtype | None = None) -> BankSpec:
    """The bank's ``spec``: everything about the network and preprocessing its rows depend on."""
    prep = backbone.preprocessing
    return BankSpec(
        model=backbone.name, weights=backbone.weights, weights_path=backbone.weights_path,
        taps=tuple(backbone.taps),
        tap_layers=dict(tap_info),
        image_size=config.image_size, resize=source.resize,
        interpolation=prep.interpolation, antialias=prep.interpolation != "nearest",
        mean=tuple(prep.mean), std=tuple(prep.std), preprocessing_source=prep.source,
        dtype=config.dtype, decode=config.decode, views=_recipe(config, source),
        autocast=None if amp is None else str(amp).removeprefix("torch."))


def _recipe(config: ExtractConfig, source: ImageSource) -> ViewRecipe | None:
    """The views the options ask for, with the kind the source's image size calls for."""
    if not config.views and not config.mirror:
        return None
    splits = tuple(t.strip() for t in config.view_splits.split(",") if t.strip())
    unknown = [t for t in splits if t not in source.splits]
    if unknown:
        raise ParameterError(f"the 'view_splits' parameter names splits {unknown} that the "
                             f"dataset lacks (its splits: {list(source.splits)}).")
    kind = config.view_recipe
    if kind == "auto":
        kind = "pad_crop_flip" if _image_side(source, config) <= 64 else "resized_crop_flip"
    return ViewRecipe(config.views, splits if config.views else (), config.view_seed, kind)


def _image_side(source: ImageSource, config: ExtractConfig) -> int:
    """The side of the source's images, from its first: an array's own (CIFAR's 32), or a
    file's shorter side (read from its header; CIFAR's JPEGs are 32 px however large the bank
    decodes them)."""
    split = next((s for s in source.splits.values() if len(s)), None)
    if split is None:
        return config.image_size
    first = next(iter(split.positions()))
    if source.resize == Resize.DEVICE:
        return int(split.take(np.array([first]), decoding=None).shape[1])
    from PIL import Image

    encoded = split.encoded(first)
    data = encoded if isinstance(encoded, (str, os.PathLike)) else io.BytesIO(
        encoded.read_bytes())
    try:
        with Image.open(data) as im:
            return min(im.size)
    except OSError:  # unreadable: the decoded size decides
        return config.image_size


def _skipped(source: ImageSource, writer: BankWriter) -> dict[str, list[str]]:
    """Per split, the source rows that did not become bank rows (unreadable, skip_bad)."""
    out = {}
    for name, split in source.splits.items():
        kept = set(writer.f[name]["index"][: writer.progress(name)[0]].tolist())
        out[name] = [split.describe_row(i) for i in split.positions() if i not in kept]
    return out


class _OrderedWrites:
    """The bank's writes on one thread, in order, at most two batches in flight, so the HDF5
    writes of one batch overlap the compute of the next. After a failed write nothing more is
    written (rows must land in order); :meth:`close` lets rows already computed reach the disk,
    even on Ctrl-C."""

    def __init__(self, writer: BankWriter):
        self.writer = writer
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="featurebank-writer")
        self.pending: deque = deque()
        self.failed = threading.Event()

    def _write(self, split: str, batch: ImageBatch, feats: dict[str, torch.Tensor],
               views: dict[str, torch.Tensor], event) -> None:
        if self.failed.is_set():
            return
        if event is not None:
            event.synchronize()
        try:
            self.writer.write(split, features={t: v.numpy() for t, v in feats.items()},
                              views={t: v.numpy() for t, v in views.items()},
                              labels=batch.labels, index=batch.positions,
                              sources_done=batch.stop)
        except BaseException:
            self.failed.set()
            raise

    def submit(self, split: str, batch: ImageBatch, feats: dict[str, torch.Tensor],
               views: dict[str, torch.Tensor], event) -> None:
        self.pending.append(self.pool.submit(self._write, split, batch, feats, views, event))
        self.drain(2)

    def drain(self, keep: int = 0) -> None:
        """Wait until at most ``keep`` writes are in flight (raising a failed write's error)."""
        while len(self.pending) > keep:
            self.pending.popleft().result()

    def close(self) -> None:
        for fut in self.pending:
            try:
                fut.result()
            except Exception:
                pass
        self.pool.shutdown(wait=True)


def _forward(backbone, batch: ImageBatch, job: _Job, image_size: int,
             recipe: ViewRecipe | None, split: str):
    """The batch's tap features and, with a recipe, its views' ``(B, V, D)`` (one more
    forward pass each), in the bank's dtype on their way to the CPU, and the CUDA event that
    says when they are there."""
    if not len(batch.labels):
        return {}, {}, None
    with torch.inference_mode(), autocast(job.dev, job.amp):
        images = batch.images.to(job.dev, non_blocking=True)
        out = backbone(backbone.preprocess(images, image_size))
        views = ([] if recipe is None else
                 [backbone(backbone.preprocess(v, image_size))
                  for v in view_batches(images, batch.positions, recipe, split)])
    store = getattr(torch, job.config.dtype)
    feats = {t: v.to(store).to("cpu", non_blocking=True) for t, v in out.items()}
    stacked = {t: torch.stack([v[t] for v in views], 1).to(store).to("cpu", non_blocking=True)
               for t in out} if views else {}
    event = None
    if job.dev.type == "cuda":
        event = torch.cuda.Event()
        event.record()
    return feats, stacked, event


@_same_cudnn_algorithms()
def _run(backbone, source, writer, job: _Job, *, decoding) -> None:
    c, recipe = job.config, writer.spec.views

    def per_image(split: str) -> int:  # forward passes an image costs: the bar counts them
        return 1 + (recipe.per_split(split) if recipe is not None else 0)

    total = sum(len(s) * per_image(n) for n, s in source.splits.items())
    done = sum(writer.progress(name)[1] * per_image(name) for name in source.splits)
    bar = progress_bar(total=total, initial=done, desc=job.label, enabled=job.progress,
                       unit="img" if recipe is None else "view")
    if writer.resumed and done and job.progress:
        bar.write(f"resuming {writer.partial}: {done} of {total} images already done",
                  file=sys.stderr)
    writes, n_skipped = _OrderedWrites(writer), 0
    try:
        for name, split in source.splits.items():
            bar.set_description(f"{job.label} {name}")
            batches = split.batches(writer.progress(name)[1], c.batch_size, decoding=decoding,
                                    device=job.dev, num_workers=c.num_workers,
                                    skip_bad=c.skip_bad)
            for batch in _prefetch(batches, pin=job.dev.type == "cuda"):
                for path in batch.skipped:  # logged even when quiet: the bank lacks these
                    bar.write(f"skipped unreadable image: {path}", file=sys.stderr)
                    n_skipped += 1
                writes.submit(name, batch, *_forward(backbone, batch, job, decoding.image_size,
                                                     recipe, name))
                bar.update((batch.stop - batch.start) * per_image(name))
        writes.drain()
        if n_skipped:
            bar.write(f"skipped {n_skipped} unreadable images (listed in the bank: "
                      f"FeatureBank.skipped(split))", file=sys.stderr)
    finally:
        writes.close()
        bar.close()
