"""Image sources: CIFAR-10/100, a folder of class sub-folders, or an ``.npz`` file.

Every source becomes an :class:`ImageSource`: class names, and named splits that yield uint8
``(B, H, W, 3)`` batches with their labels and source positions. Fixed-size sources (CIFAR, npz)
are held as one array and resized on the device by the extraction engine; image files are read
in DataLoader workers and brought to a square ``image_size`` (shorter side resized, centre crop)
by a :class:`~featurebank._decode.Decoding` - in the workers, or on the GPU for the ``gpu``
decoder - because differently sized images cannot share a batch otherwise.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from ._decode import Decoding, check_images
from ._io import POSITIVE_INT
from .exceptions import DataError
from .records import DatasetInfo, Resize, SourceOptions

__all__ = ["ImageSource", "ImageBatch", "from_arrays", "list_datasets", "open_source",
           "reopen_source"]

_CIFAR = {
    "cifar10": ("CIFAR10", "CIFAR-10", "cifar-10-batches-py"),
    "cifar100": ("CIFAR100", "CIFAR-100", "cifar-100-python"),
}


class Split(Protocol):
    """What the extraction, the fine-tune and the report need of one split of a source.

    Rows are addressed by their source position (``positions()``: ``range(len)`` for a whole
    split, a range inside it for a rank's :class:`_Shard`).
    """

    #: Whether ``take`` / ``batches`` decode image files (worth doing in DataLoader workers);
    #: False for splits held in memory as decoded arrays.
    decodes_files: bool

    def __len__(self) -> int: ...

    def fingerprint(self, h: Any) -> None:
        """Feed the split's images (or file list) and labels to the hash ``h``."""

    def describe_row(self, position: int) -> str:
        """How a row is named in messages and in the bank's ``skipped`` list (a path)."""

    def positions(self) -> range:
        """The source positions this split covers."""

    def take(self, positions: np.ndarray, *, decoding: Decoding) -> np.ndarray:
        """uint8 ``(len(positions), H, W, 3)`` images at these source positions (this process,
        on the CPU)."""

    def batches(self, start: int, batch_size: int, *, decoding: Decoding,
                stop: int | None = None, num_workers: int = 0, skip_bad: bool = False,
                device: torch.device | None = None) -> Iterator[ImageBatch]:
        """Batches from row ``start`` (of this split) to ``stop``."""


@dataclass
class ImageBatch:
    """One batch of a split: the readable images of source positions ``[start, stop)``."""

    start: int
    stop: int
    images: torch.Tensor  # (B, H, W, 3) uint8, readable images only
    positions: np.ndarray  # (B,) int64 position of each row in the source split
    labels: np.ndarray  # (B,) int64
    skipped: list[str] = field(default_factory=list)  # unreadable files left out (skip_bad)


class _ArraySplit:
    """A split held in memory as uint8 NHWC images (CIFAR, npz)."""

    decodes_files = False

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images = np.ascontiguousarray(images)
        self.labels = labels.astype(np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def fingerprint(self, h: Any) -> None:
        h.update(repr(self.images.shape).encode())
        h.update(memoryview(self.images).cast("B"))
        h.update(self.labels.tobytes())

    def describe_row(self, i: int) -> str:
        return f"image {i}"

    def positions(self) -> range:
        return range(len(self))

    def take(self, positions: np.ndarray, **_: Any) -> np.ndarray:
        """uint8 ``(len(positions), H, W, 3)`` images at these source positions."""
        return self.images[positions]

    def subset(self, positions: np.ndarray) -> _ArraySplit:
        return _ArraySplit(self.images[positions], self.labels[positions])

    def batches(self, start: int, batch_size: int, *, stop: int | None = None,
                **_: Any) -> Iterator[ImageBatch]:
        stop = len(self) if stop is None else stop
        for s in range(start, stop, batch_size):
            e = min(s + batch_size, stop)
            yield ImageBatch(s, e, torch.from_numpy(self.images[s:e]),
                             np.arange(s, e, dtype=np.int64), self.labels[s:e])


class _FileDataset(torch.utils.data.Dataset):
    """Source positions ``[first, stop)`` of a file split, each read by ``decoding`` in a
    worker: bad files are reported by path in the main process, not raised here."""

    def __init__(self, samples, first: int, stop: int, decoding: Decoding):
        self.samples, self.first, self.stop, self.decoding = samples, first, stop, decoding

    def __len__(self) -> int:
        return self.stop - self.first

    def __getitem__(self, i: int):
        pos = self.first + i
        path, label = self.samples[pos]
        part, err = self.decoding.read(path)
        return pos, label, str(path), part, err


def _collate(items):
    return items


class _FileSplit:
    """A split of encoded images with labels, decoded lazily in DataLoader workers: files of
    a folder or a CSV (paths), members of tar shards or cells of a Hugging Face dataset
    (objects that ``read_bytes()`` and give their ``identity()`` for the fingerprint)."""

    decodes_files = True

    def __init__(self, samples: list[tuple[Any, int]], root: Path):
        self.samples = samples
        self.root = root
        self.labels = np.array([y for _, y in samples], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.samples)

    def fingerprint(self, h: Any) -> None:
        # Relative paths, sizes and labels: cheap for large folders, and it survives a move.
        for path, label in self.samples:
            ident = path.identity() if hasattr(path, "identity") else (
                f"{os.path.relpath(path, self.root)}\0{os.path.getsize(path)}")
            h.update(f"{ident}\0{label}\n".encode())

    def describe_row(self, i: int) -> str:
        return str(self.samples[i][0])

    def encoded(self, position: int) -> Any:
        """The image at a source position as stored: a path, or an object that reads it."""
        return self.samples[position][0]

    def subset(self, positions: np.ndarray) -> _FileSplit:
        return _FileSplit([self.samples[i] for i in positions], self.root)

    def positions(self) -> range:
        return range(len(self))

    def take(self, positions: np.ndarray, *, decoding: Decoding, **_: Any) -> np.ndarray:
        """Decode the files at these source positions (in this process, on the CPU)."""
        out = np.empty((len(positions), decoding.image_size, decoding.image_size, 3), np.uint8)
        for j, pos in enumerate(positions):
            img, err = decoding.load(self.samples[pos][0])
            if img is None:
                raise DataError(f"cannot read image {str(self.samples[pos][0])!r} ({err}).")
            out[j] = img
        return out

    def batches(self, start: int, batch_size: int, *, decoding: Decoding,
                stop: int | None = None, num_workers: int = 0, skip_bad: bool = False,
                device: torch.device | None = None, **_: Any) -> Iterator[ImageBatch]:
        """Batches from source position ``start``: files read in ``num_workers`` processes,
        finished by ``decoding`` here (on ``device`` for the ``gpu`` decoder)."""
        stop = len(self) if stop is None else stop
        loader = torch.utils.data.DataLoader(
            _FileDataset(self.samples, start, stop, decoding), batch_size=batch_size,
            shuffle=False, num_workers=num_workers, collate_fn=_collate,
            persistent_workers=False, prefetch_factor=4 if num_workers else None)
        s = start
        for items in loader:
            read = [it for it in items if it[4] is None]
            images, errors = decoding.assemble([it[3] for it in read], device)
            good = [it for it, err in zip(read, errors) if err is None]
            bad = [(it[2], it[4]) for it in items if it[4] is not None] + [
                (it[2], err) for it, err in zip(read, errors) if err is not None]
            if bad and not skip_bad:
                path, err = bad[0]
                raise DataError(
                    f"cannot read image {path!r} ({err}). Fix or remove the file, or pass "
                    f"skip_bad=True (--skip-bad) to leave unreadable images out of the bank "
                    f"(each skipped path is logged and recorded in the bank).")
            e = s + len(items)
            yield ImageBatch(s, e, images,
                             np.array([it[0] for it in good], dtype=np.int64),
                             np.array([it[1] for it in good], dtype=np.int64),
                             [path for path, _ in bad])
            s = e


class _Shard:
    """Rows ``[start, stop)`` of a split: one rank's share in a distributed extraction.

    Its own row numbers (``len``, ``batches``' ``start``/``stop``, resume points) count from
    0; ``positions`` and ``describe_row`` stay those of the whole split.
    """

    def __init__(self, split: Split, start: int, stop: int):
        self.split, self.start, self.stop = split, start, stop
        self.decodes_files = split.decodes_files

    def __len__(self) -> int:
        return self.stop - self.start

    def fingerprint(self, h: Any) -> None:
        self.split.fingerprint(h)
        h.update(f"\0rows:{self.start}:{self.stop}\0".encode())

    def describe_row(self, position: int) -> str:
        return self.split.describe_row(position)

    def positions(self) -> range:
        return range(self.start, self.stop)

    def take(self, positions: np.ndarray, **kw: Any) -> np.ndarray:
        return self.split.take(positions, **kw)

    def batches(self, start: int, batch_size: int, **kw: Any) -> Iterator[ImageBatch]:
        for b in self.split.batches(self.start + start, batch_size, stop=self.stop, **kw):
            b.start, b.stop = b.start - self.start, b.stop - self.start
            yield b


def shard_rows(n: int, batch_size: int, rank: int, world: int) -> tuple[int, int]:
    """Rank ``rank`` of ``world``'s rows ``[start, stop)`` of a split of ``n``: whole batches,
    as evenly spread as they go, in order (so every batch is one a single process would
    make, and the shards side by side are the split)."""
    n_batches = -(-n // batch_size)
    first, last = n_batches * rank // world, n_batches * (rank + 1) // world
    return min(first * batch_size, n), min(last * batch_size, n)


@dataclass
class ImageSource:
    """An image dataset: class names and named splits.

    Attributes
    ----------
    name : str
        The kind: ``"cifar10"``, ``"cifar100"``, ``"folder"``, ``"npz"``, ``"wds"``, ``"hf"``,
        ``"csv"`` (or ``"arrays"`` in memory).
    location : str
        Where the data was read from (data root, folder, file, shard pattern, dataset name).
    classes : list of str
        Class names; label ``i`` is ``classes[i]``.
    splits : dict
        Split name (``"train"``, ``"test"``, ...) to split object.
    resize : Resize
        How images reach ``image_size``: ``"device"`` (the whole fixed-size image is resized on
        the device) or ``"shorter_side_center_crop"`` (files, resized when decoded).
    options : SourceOptions
        What the source was opened with (label key, class-names file, columns).
    """

    name: str
    location: str
    classes: list[str]
    splits: dict[str, Split]
    resize: Resize
    options: SourceOptions = field(default_factory=SourceOptions)

    def fingerprint(self) -> str:
        """SHA-256 over the class names and every split's images (or file list) and labels."""
        h = hashlib.sha256()
        h.update("\0".join(self.classes).encode())
        for name, split in self.splits.items():
            h.update(f"\0split:{name}\0".encode())
            split.fingerprint(h)
        return h.hexdigest()

    def shard(self, rank: int, world: int, batch_size: int) -> ImageSource:
        """This source with each split cut to rank ``rank`` of ``world``'s share
        (:func:`shard_rows`)."""
        splits = {name: _Shard(split, *shard_rows(len(split), batch_size, rank, world))
                  for name, split in self.splits.items()}
        return ImageSource(self.name, self.location, self.classes, splits, self.resize,
                           self.options)

    def describe(self) -> DatasetInfo:
        """Provenance of this source, stored as the bank's ``dataset`` attribute."""
        return DatasetInfo(name=self.name, source=self.location, classes=tuple(self.classes),
                           splits={k: len(v) for k, v in self.splits.items()},
                           resize=Resize(self.resize), fingerprint=self.fingerprint(),
                           options=self.options)


def _open_cifar(name: str, root: Path, download: bool) -> ImageSource:
    import torchvision.datasets as tvd

    cls_name, pretty, folder = _CIFAR[name]
    cls = getattr(tvd, cls_name)
    splits = {}
    classes: list[str] = []
    for split in ("train", "test"):
        try:
            ds = cls(root=str(root), train=split == "train", download=download)
        except RuntimeError as e:
            if "not found or corrupted" not in str(e):
                raise
            raise _cifar_error(cls, pretty, root, folder) from None
        except OSError as e:  # a download that could not reach the server
            raise DataError(
                f"downloading {pretty} into {str(root)!r} failed ({e}). Without a network, copy "
                f"{folder!r} into a folder and pass it as data_root= (--data-root DIR)."
            ) from None
        splits[split] = _ArraySplit(ds.data, np.asarray(ds.targets))
        classes = list(ds.classes)
    return ImageSource(name, str(root), classes, splits, Resize.DEVICE)


def _cifar_error(cls, pretty: str, root: Path, folder: str) -> DataError:
    """What torchvision's "not found or corrupted" means here: the folder is missing, or
    these files are missing or fail their checksum."""
    from torchvision.datasets.utils import check_integrity

    if not (root / folder).is_dir():
        return DataError(
            f"{pretty} was not found under data root {str(root)!r}: expected the folder "
            f"{str(root / folder)!r} in the standard python layout. Pass data_root= "
            f"(--data-root DIR) pointing at the folder that holds {folder!r}, or download=True "
            f"(--download) to fetch it (needs a network).")
    files = [*cls.train_list, *cls.test_list, [cls.meta["filename"], cls.meta["md5"]]]
    missing = [n for n, _ in files if not (root / folder / n).is_file()]
    damaged = [n for n, md5 in files if n not in missing
               and not check_integrity(str(root / folder / n), md5)]
    what = "; ".join(filter(None, [
        f"missing: {missing}" if missing else "",
        f"failed their checksum (damaged or incomplete copies): {damaged}" if damaged else ""]))
    return DataError(
        f"{pretty} under {str(root / folder)!r} is not complete ({what}). Copy those files "
        f"again from a good copy, or delete the folder and pass download=True (--download).")


def _check_labels(labels: Any, n: int, what: str) -> np.ndarray:
    """``labels`` as ``n`` int64 class indices >= 0, or DataError naming ``what``."""
    labels = np.asarray(labels)
    integer = np.issubdtype(labels.dtype, np.integer)
    negative = integer and labels.size > 0 and labels.min() < 0
    if labels.shape != (n,) or not integer or negative:
        raise DataError(f"{what} has shape {labels.shape} and dtype {labels.dtype}"
                        f"{' with negative values' if negative else ''}; expected {n} integer "
                        f"labels >= 0, one per image.")
    return labels.astype(np.int64)


def from_arrays(images: Any, labels: Any = None, *, classes: list[str] | None = None,
                name: str = "arrays") -> ImageSource:
    """An in-memory image source with one ``train`` split.

    Parameters
    ----------
    images : array-like of shape (N, H, W, 3), uint8
    labels : array-like of shape (N,), optional
        Integer labels; all 0 when omitted.
    classes : list of str, optional
        Class names; default ``["0", "1", ...]``.
    name : str, default="arrays"

    Returns
    -------
    ImageSource
    """
    images = check_images(images, "images")
    labels = _check_labels(np.zeros(len(images), np.int64) if labels is None else labels,
                           len(images), "labels")
    n_classes = int(labels.max()) + 1 if len(labels) else 1
    classes = [str(c) for c in classes] if classes is not None else [str(i) for i in
                                                                      range(n_classes)]
    return ImageSource(name, "memory", classes, {"train": _ArraySplit(images, labels)},
                       Resize.DEVICE)


def _open_npz(path: Path) -> ImageSource:
    if not path.is_file():
        raise DataError(f"npz file {str(path)!r} does not exist (dataset='npz:PATH').")
    try:
        z = np.load(path, allow_pickle=False)
        arrays = {k: z[k] for k in z.files}
    except Exception as e:
        raise DataError(f"cannot read npz file {str(path)!r}: {e}") from None
    if "images" in arrays:
        names = {"train": ("images", "labels")}
    else:
        names = {k[: -len("_images")]: (k, k[: -len("_images")] + "_labels")
                 for k in sorted(arrays) if k.endswith("_images")}
        names = dict(sorted(names.items(), key=lambda kv: (kv[0] != "train", kv[0])))
    if not names:
        raise DataError(
            f"npz file {str(path)!r} holds arrays {sorted(arrays)}; expected 'images' and "
            f"'labels', or '<split>_images' and '<split>_labels' (e.g. train_images, "
            f"train_labels, test_images, test_labels), with optional 'classes'.")
    splits = {}
    for split, (ik, lk) in names.items():
        if lk not in arrays:
            raise DataError(f"npz file {str(path)!r} has {ik!r} but no {lk!r} array.")
        images = check_images(arrays[ik], f"npz array {ik!r} in {str(path)!r}")
        labels = _check_labels(arrays[lk], len(images), f"npz array {lk!r} in {str(path)!r}")
        splits[split] = _ArraySplit(images, labels)
    n_classes = max(int(s.labels.max()) + 1 for s in splits.values() if len(s))
    if "classes" in arrays:
        classes = [str(c) for c in arrays["classes"]]
        if len(classes) < n_classes:
            raise DataError(
                f"npz file {str(path)!r}: 'classes' names {len(classes)} classes but the labels "
                f"go up to {n_classes - 1}.")
    else:
        classes = [str(i) for i in range(n_classes)]
    return ImageSource("npz", str(path), classes, splits, Resize.DEVICE)


def _open_folder(root: Path) -> ImageSource:
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    if not root.is_dir():
        raise DataError(f"image folder {str(root)!r} does not exist (dataset='folder:PATH').")
    parts = {s: root / s for s in ("train", "test")}
    if not all(p.is_dir() for p in parts.values()):
        parts = {"train": root}
    try:
        classes, class_to_idx = find_classes(str(parts["train"]))
    except FileNotFoundError:
        raise DataError(
            f"image folder {str(parts['train'])!r} has no class sub-folders: expected "
            f"PATH/<class>/<image> (or PATH/train/<class>/... and PATH/test/<class>/...)."
        ) from None
    splits = {}
    for split, path in parts.items():
        extra = set(find_classes(str(path))[0]) - set(classes)
        if extra:
            raise DataError(
                f"{str(path)!r} has class folders {sorted(extra)} that {str(parts['train'])!r} "
                f"lacks; train and test must share their classes.")
        try:
            samples = make_dataset(str(path), class_to_idx, extensions=IMG_EXTENSIONS,
                                   allow_empty=False)
        except FileNotFoundError as e:
            raise DataError(f"image folder {str(path)!r}: {e} (extensions {IMG_EXTENSIONS}).")
        splits[split] = _FileSplit(samples, path)
    return ImageSource("folder", str(root), classes, splits, Resize.FILES)


@dataclass(frozen=True)
class _Request:
    """What a source's opener gets: the text after ``kind:`` (or the data root, for CIFAR),
    the data root (CIFAR's files, the tar shards' index cache), whether to download, the
    source options, and whether labels are needed (``predict`` reads images alone)."""

    location: str
    data_root: Path
    download: bool = False
    options: SourceOptions = field(default_factory=SourceOptions)
    labelled: bool = True


def _formats():
    from . import formats

    return formats


def _is_hub_name(location: str) -> bool:
    return not Path(location).expanduser().exists() and not location.startswith(
        ("/", ".", "~"))


@dataclass(frozen=True)
class _SourceKind:
    """A registered kind of image source: how to open it from its location.

    ``takes`` is what follows ``kind:`` (``PATH``, ``PATTERN``...), or None when the location
    is the data root (CIFAR: ``--dataset cifar10 --data-root DIR``). A bank's ``dataset``
    provenance records the kind as ``name``, the location as ``source`` and the options, so
    the same entry reopens it for fine-tuning; ``what`` names the location in messages and
    ``exists`` says whether it is still there.
    """

    name: str
    open: Callable[[_Request], ImageSource]
    takes: str | None
    what: str
    exists: Callable[[str], bool] = lambda loc: Path(loc).expanduser().exists()


def stratified_positions(labels: np.ndarray, limit: int) -> np.ndarray:
    """At most ``limit`` positions, each class's share as in ``labels``: every sample's
    quantile within its class, the smallest first (so the first images of each class), back in
    source order. Deterministic: the same subset every time."""
    if limit >= len(labels):
        return np.arange(len(labels))
    quantile = np.empty(len(labels))
    for c in np.unique(labels):
        where = np.flatnonzero(labels == c)
        quantile[where] = (np.arange(len(where)) + 0.5) / len(where)
    return np.sort(np.argsort(quantile, kind="stable")[:limit])


def _limited(source: ImageSource, limit: int | None) -> ImageSource:
    """The source with each split cut to ``limit`` images, stratified (``--limit``)."""
    if limit is None:
        return source
    POSITIVE_INT.check("limit", limit)
    splits = {name: split.subset(stratified_positions(split.labels, limit))
              for name, split in source.splits.items()}
    return dataclasses.replace(source, splits=splits)


def _wds_exists(location: str) -> bool:
    try:
        return all(_formats()._shards(p) for p in _formats()._split_patterns(location).values())
    except DataError:
        return False


_SOURCES = {k.name: k for k in [
    _SourceKind("cifar10", lambda r: _open_cifar("cifar10", Path(r.location), r.download),
                None, f"the folder that holds {_CIFAR['cifar10'][2]!r}"),
    _SourceKind("cifar100", lambda r: _open_cifar("cifar100", Path(r.location), r.download),
                None, f"the folder that holds {_CIFAR['cifar100'][2]!r}"),
    _SourceKind("folder", lambda r: _open_folder(Path(r.location).expanduser()), "PATH",
                "the image folder"),
    _SourceKind("npz", lambda r: _open_npz(Path(r.location).expanduser()), "PATH",
                "the npz file"),
    _SourceKind("wds", lambda r: _formats().open_wds(r.location, r.options, r.data_root,
                                                     r.labelled),
                "PATTERN", "the tar shards (a pattern, train=...,test=..., or a folder)",
                _wds_exists),
    _SourceKind("hf", lambda r: _formats().open_hf(r.location, r.options, r.labelled),
                "NAME_OR_PATH", "the dataset (a save_to_disk or Parquet folder, or a name)",
                lambda loc: Path(loc).expanduser().exists() or _is_hub_name(loc)),
    _SourceKind("csv", lambda r: _formats().open_csv(r.location, r.options, r.labelled),
                "FILE", "the CSV file"),
]}


def list_datasets() -> list[str]:
    """Names accepted by ``dataset=`` / ``--dataset`` (``folder:PATH``, ``wds:PATTERN``...
    take a location)."""
    return [f"{k.name}:{k.takes}" if k.takes else k.name for k in _SOURCES.values()]


def open_source(dataset: str, *, data_root: str | os.PathLike = "data",
                download: bool = False, options: SourceOptions | None = None,
                labelled: bool = True) -> ImageSource:
    """Open an image source by name.

    Parameters
    ----------
    dataset : str
        ``"cifar10"``, ``"cifar100"``, ``"folder:PATH"`` (class sub-folders, with optional
        ``train/`` and ``test/`` sub-folders), ``"npz:PATH"``, ``"wds:PATTERN"`` (WebDataset
        tar shards: ``train-{000000..000146}.tar``, globs, ``train=PAT,test=PAT`` or a folder
        of ``train/`` and ``test/`` shards), ``"hf:NAME_OR_PATH[:CONFIG]"`` (a Hugging Face
        dataset: a ``save_to_disk`` folder, a folder of Parquet files, or a name in the cache)
        or ``"csv:FILE"`` (``path,label[,split]`` rows).
    data_root : path-like, default="data"
        Folder holding (or receiving) the CIFAR files; the tar shards' index cache
        (``featurebank-index/``).
    download : bool, default=False
        Download CIFAR into ``data_root`` when it is not there (needs a network).
    options : SourceOptions, optional
        ``label_key`` (wds: a json member's key), ``classes`` (a class-names file),
        ``image_column`` / ``label_column`` (hf).
    labelled : bool, default=True
        False reads the images alone (every label 0), as ``predict`` does.

    Returns
    -------
    ImageSource
    """
    name, _, arg = str(dataset).partition(":")
    kind = _SOURCES.get(name)
    if kind is None or (kind.takes is not None) != bool(arg):
        raise DataError(
            f"unknown dataset {dataset!r}; expected one of {list_datasets()} "
            f"(e.g. dataset='folder:/data/flowers').")
    options = SourceOptions.from_json(options)
    request = _Request(arg if arg else str(Path(data_root).expanduser()),
                       Path(data_root).expanduser(), download, options, labelled)
    return dataclasses.replace(_limited(kind.open(request), options.limit), options=options)


def reopen_source(provenance: DatasetInfo, *,
                  data_root: str | os.PathLike | None = None) -> ImageSource:
    """Open the images a bank was extracted from, from its ``dataset`` provenance.

    Parameters
    ----------
    provenance : DatasetInfo
        ``FeatureBank.dataset``: the source's kind (``name``), location (``source``), options
        and fingerprint.
    data_root : path-like, optional
        Where the images are now, when they moved since the extraction (the folder, file or
        shard pattern itself, or the CIFAR data root).

    Returns
    -------
    ImageSource
        The same images: its fingerprint must equal the recorded one.
    """
    provenance = DatasetInfo.from_json(provenance)
    kind = _SOURCES.get(provenance.name)
    if kind is None:
        raise DataError(
            f"the bank's images came from {provenance.name!r} (in memory), which cannot be "
            f"reopened; extract from a dataset on disk (--dataset {list_datasets()}).")
    location = str(data_root if data_root is not None else provenance.source)
    if not kind.exists(location):
        raise DataError(
            f"the bank's images were read from {location!r} ({kind.name}), which does not "
            f"exist any more. If they moved, pass --data-root NEW_PATH (data_root=NEW_PATH) "
            f"pointing at {kind.what} where it is now.")
    source = _limited(kind.open(_Request(location, Path("data") if kind.takes else
                                         Path(location), options=provenance.options)),
                      provenance.options.limit)
    if source.fingerprint() != provenance.fingerprint:
        raise DataError(
            f"the images at {location!r} differ from those the bank was extracted from "
            f"(source fingerprint changed); pass --data-root PATH (data_root=PATH) pointing at "
            f"the original data.")
    return dataclasses.replace(source, options=provenance.options)
