"""Feature banks: one HDF5 file of features per split and tap, labels and provenance.

Layout (format version 1, readable by stock h5py; no compression filter)::

    /                      attrs: featurebank_format, featurebank_version, torch_version,
                                  torchvision_version, h5py_version, created, spec (JSON),
                                  dataset (JSON), fingerprint, complete
    /classes               (C,) UTF-8 class names
    /<split>               attrs: rows_done, sources_done, skipped (JSON list of paths)
    /<split>/features/<tap>  (N, D) float16 | float32, chunked in row blocks
    /<split>/labels        (N,) int64
    /<split>/index         (N,) int64 position of each row in the source split
    /<split>/views/<tap>   (N, V, D) with views (spec["views"]): view 0 the mirror, 1..V-1
                           the random views; chunked in row blocks, each row's views together

The writer creates every dataset at its full size with all chunks allocated up front, so
appending rows writes raw data only: the file's structure never changes while rows stream in,
which is what lets an extraction killed at any point resume from ``rows_done``. The file is
written under ``<name>.partial`` and renamed to its final name once ``complete`` is set.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ._io import (DISK_FULL, POSITIVE_INT, as_float32, atomic_file, os_error_message,
                  replace_durably, sha256_file, versions)
from .exceptions import BankError
from .records import BankSpec, DatasetInfo, TapSelection
from .records import fingerprint as bank_fingerprint
from .rows import raw_blocks

__all__ = ["FeatureBank", "FORMAT_VERSION", "merge_bank", "write_virtual_bank"]

FORMAT_VERSION = 1
_CHUNK_BYTES = 1 << 20


def _human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError


def _class_list(names: list[str], most: int = 20) -> str:
    """``N: a, b, c`` (the first ``most`` names, then how many more)."""
    shown = ", ".join(names[:most])
    return f"{len(names)}: {shown}" + (f", ... ({len(names) - most} more)"
                                        if len(names) > most else "")


def _as_dtype(X: np.ndarray, dtype: Any) -> np.ndarray:
    """Features in ``dtype`` (``None``: as stored); float32 through :func:`_io.as_float32`."""
    if dtype is None:
        return X
    return as_float32(X) if np.dtype(dtype) == np.float32 else X.astype(dtype, copy=False)


class FeatureBank:
    """Read a feature bank: provenance, splits, taps, and features as numpy arrays.

    The HDF5 file is opened lazily, once per process, so a ``FeatureBank`` can be handed to
    DataLoader workers (fork or spawn) and pickled.

    Parameters
    ----------
    path : str or path-like
        A complete bank written by :func:`featurebank.extract`.

    Attributes
    ----------
    path : pathlib.Path
    spec : BankSpec
        Backbone, weights, taps (with module, pooling and dimension), image size, resize,
        interpolation, mean, std and feature dtype.
    dataset : DatasetInfo
        Source name and location, class names, split sizes and the source's fingerprint.
    fingerprint : str
        SHA-256 of spec and dataset; heads and fine-tunes refer to it.
    classes : list of str
    splits : list of str
    taps : list of str
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._file: h5py.File | None = None
        self._pid: int | None = None
        if not self.path.is_file():
            hint = (f"; an unfinished extraction is in {str(self.path)}.partial (rerun the "
                    f"same extract command to finish it)"
                    if Path(f"{self.path}.partial").exists() else "")
            raise BankError(f"feature bank {str(self.path)!r} does not exist{hint}.")
        try:
            with h5py.File(self.path, "r") as f:
                attrs = dict(f.attrs)
                self.classes = [c.decode() if isinstance(c, bytes) else str(c)
                                for c in f["classes"][()]] if "classes" in f else []
                skipped = {k: json.loads(g.attrs.get("skipped", "[]")) for k, g in f.items()
                           if isinstance(g, h5py.Group)}
        except OSError as e:
            raise BankError(f"{str(self.path)!r} is not a readable HDF5 file ({e}).") from None
        fmt = attrs.get("featurebank_format")
        if fmt is None:
            raise BankError(f"{str(self.path)!r} is an HDF5 file but not a feature bank "
                            f"(no 'featurebank_format' attribute).")
        if int(fmt) != FORMAT_VERSION:
            raise BankError(f"feature bank {str(self.path)!r} has format {int(fmt)}; this "
                            f"featurebank reads format {FORMAT_VERSION}. Re-extract it, or use "
                            f"the featurebank version that wrote it "
                            f"({attrs.get('featurebank_version')}).")
        if not bool(attrs.get("complete", False)):
            raise BankError(f"feature bank {str(self.path)!r} is incomplete (its extraction did "
                            f"not finish); rerun the extraction.")
        self.spec = BankSpec.from_json(json.loads(attrs["spec"]))
        self.dataset = DatasetInfo.from_json(json.loads(attrs["dataset"]))
        self.fingerprint: str = str(attrs["fingerprint"])
        self.created: str = str(attrs["created"])
        self.versions = {k: str(attrs[k]) for k in versions() if k in attrs}
        self.taps: list[str] = list(self.spec.taps)
        self.splits: list[str] = [k for k in self.dataset.splits if k in skipped]
        self._skipped = {k: skipped[k] for k in self.splits}
        self.shards: list[dict[str, Any]] = json.loads(attrs.get("shards", "[]"))
        self._check_shards()

    def _check_shards(self) -> None:
        """A bank over shards (a distributed extraction) reads its rows from them: each must
        be where it was, as it was, or HDF5 would silently read its rows as zeros."""
        for shard in self.shards:
            path = self.path.parent / shard["file"]
            st = path.stat() if path.is_file() else None
            problem = ("is missing" if st is None else
                       "changed since the bank was written (its size or time differs)"
                       if (st.st_size, st.st_mtime_ns) != (shard["size"], shard["mtime_ns"])
                       else "")
            if problem:
                raise BankError(
                    f"feature bank {str(self.path)!r} reads its rows from "
                    f"{len(self.shards)} shard files, and {str(path)!r} {problem}. Put the "
                    f"shards back as they were, or rerun the extraction; `featurebank merge` "
                    f"turns a bank and its shards into one self-contained file.")

    def verify(self) -> list[str]:
        """Check every shard's content against the SHA-256 recorded when the bank was written
        (the check at open compares sizes and times only, which a changed file can keep).

        Returns the shards' names (none for a self-contained bank); BankError names a shard
        whose bytes changed, or says when the bank (made by an older featurebank) recorded no
        checksums."""
        for shard in self.shards:
            path = self.path.parent / shard["file"]
            if "sha256" not in shard:
                raise BankError(
                    f"feature bank {str(self.path)!r} recorded no checksums of its shards (an "
                    f"older featurebank wrote it), so their content cannot be verified; rerun "
                    f"the extraction to get a bank that records them.")
            if sha256_file(path) != shard["sha256"]:
                raise BankError(
                    f"shard {str(path)!r} of feature bank {str(self.path)!r} changed since the "
                    f"bank was written (its SHA-256 differs, although its size and time are "
                    f"the recorded ones): its rows are not the extracted ones. Rerun the "
                    f"extraction (--overwrite) to write it again.")
        return [s["file"] for s in self.shards]

    # -- lazy, per-process file handle ---------------------------------------------------------
    @property
    def _h5(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            self._file, self._pid = h5py.File(self.path, "r"), os.getpid()
        return self._file

    def close(self) -> None:
        """Close the file handle of this process (it reopens on the next read)."""
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None

    def __enter__(self) -> FeatureBank:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_file": None, "_pid": None}

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s}={self.num_rows(s)}" for s in self.splits)
        return (f"FeatureBank({str(self.path)!r}, model={self.spec.model!r}, "
                f"taps={self.taps}, {sizes})")

    # -- access --------------------------------------------------------------------------------
    def _check(self, split: str, tap: str | TapSelection | None = None) -> TapSelection:
        if split not in self.splits:
            raise BankError(f"feature bank {str(self.path)!r} has no split {split!r}; its splits "
                            f"are {self.splits}.")
        selection = TapSelection.parse(self.taps[0] if tap is None else tap)
        for part in selection:
            if part not in self.taps:
                raise BankError(f"feature bank {str(self.path)!r} has no tap {part!r}; its taps "
                                f"are {self.taps}.")
        return selection

    def _datasets(self, split: str, tap: str | TapSelection | None) -> list[h5py.Dataset]:
        """The HDF5 datasets of a tap, or of each part of a concatenated ``"fc6+fc7"``."""
        return [self._h5[split]["features"][t] for t in self._check(split, tap)]

    def num_rows(self, split: str) -> int:
        """Number of rows (images) in ``split``."""
        self._check(split)
        return int(self._h5[split]["labels"].shape[0])

    def shape(self, split: str, tap: str | None = None) -> tuple[int, int]:
        """``(N, D)`` of the features of ``split`` at ``tap`` (default: the first tap;
        ``"fc6+fc7"``: the taps side by side)."""
        ds = self._datasets(split, tap)
        return ds[0].shape[0], sum(d.shape[1] for d in ds)

    def views(self, split: str, tap: str | None = None) -> h5py.Dataset:
        """The ``(N, V, D)`` HDF5 dataset of a split's augmented views at ``tap`` (view 0 the
        mirror, then the random ones: :meth:`view_names`); BankError for a bank without."""
        (tap,) = self._check(split, tap)
        if self.spec.views is None:
            raise BankError(f"feature bank {str(self.path)!r} holds no views; extract it with "
                            f"--views K or --mirror.")
        return self._h5[split]["views"][tap]

    def view_names(self, split: str) -> list[str]:
        """The names of a split's views, in their order (``[]`` without views)."""
        self._check(split)
        return [] if self.spec.views is None else self.spec.views.names(split)

    def features(self, split: str, tap: str | None = None) -> h5py.Dataset:
        """The HDF5 dataset of features: sliceable without reading the whole of it."""
        ds = self._datasets(split, tap)
        if len(ds) > 1:
            raise BankError(f"features() gives one tap's HDF5 dataset; for {tap!r} use load(), "
                            f"iter_batches() or rows().")
        return ds[0]

    def rows(self, split: str, tap: str | None, rows: np.ndarray, *,
             dtype: Any = np.float32) -> np.ndarray:
        """The features of the given rows (any order, repeats allowed) of ``split`` at ``tap``
        (a concatenated ``"fc6+fc7"`` too)."""
        rows = np.asarray(rows, dtype=np.int64)
        uniq, inverse = np.unique(rows, return_inverse=True)  # h5py reads increasing rows
        parts = [d[uniq] for d in self._datasets(split, tap)]
        X = np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]
        return _as_dtype(X[inverse], dtype)

    def labels(self, split: str) -> np.ndarray:
        """``(N,)`` int64 labels of ``split``; ``classes[label]`` is the class name."""
        self._check(split)
        return self._h5[split]["labels"][()]

    def index(self, split: str) -> np.ndarray:
        """``(N,)`` int64 position of each row in the source split."""
        self._check(split)
        return self._h5[split]["index"][()]

    def skipped(self, split: str) -> list[str]:
        """Source files left out of ``split`` as unreadable (``skip_bad=True``)."""
        self._check(split)
        return list(self._skipped.get(split, []))

    def load(self, split: str, tap: str | None = None, *,
             dtype: Any = np.float32) -> tuple[np.ndarray, np.ndarray]:
        """Read a whole split into memory.

        Parameters
        ----------
        split : str
            ``"train"``, ``"test"``, ...
        tap : str, optional
            Default: the bank's first tap.
        dtype : numpy dtype or None, default=np.float32
            dtype of the returned features; ``None`` keeps the stored dtype.

        Returns
        -------
        X : ndarray of shape (N, D)
        y : ndarray of shape (N,), int64
        """
        datasets = self._datasets(split, tap)
        n, d = self.shape(split, tap)
        X = np.empty((n, d), dtype=datasets[0].dtype if dtype is None else dtype)
        col = 0
        for ds in datasets:  # a concatenated tap: each part into its columns
            for start, block in raw_blocks(ds, _CHUNK_BYTES * 64):
                part = X[start:start + len(block), col:col + ds.shape[1]]
                if X.dtype == np.float32:
                    as_float32(block, out=part)  # a float16 bank: torch's vectorised cast
                else:
                    part[...] = block
            col += ds.shape[1]
        return X, self.labels(split)

    def iter_batches(self, split: str, tap: str | None = None, *, batch_size: int = 4096,
                     dtype: Any = np.float32) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Stream ``(X, y)`` blocks of at most ``batch_size`` rows, in order, for banks larger
        than memory."""
        POSITIVE_INT.check("batch_size", batch_size)
        datasets = self._datasets(split, tap)
        y = self._h5[split]["labels"]
        n = datasets[0].shape[0]
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            parts = [ds[start:stop] for ds in datasets]
            X = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
            yield _as_dtype(X, dtype), y[start:stop]

    def info(self) -> str:
        """A human-readable summary: provenance, splits, taps, shapes, dtypes, size on disk."""
        s, d = self.spec, self.dataset
        lines = [
            f"feature bank  {self.path}  ({_human_size(self.path.stat().st_size)} on disk"
            + (f", rows in {len(self.shards)} shards of "
               f"{_human_size(sum(x['size'] for x in self.shards))}" if self.shards else "")
            + ")",
            f"format        {FORMAT_VERSION}, created {self.created}",
            "versions      " + ", ".join(f"{k.removesuffix('_version')} {v}"
                                           for k, v in self.versions.items()),
            f"fingerprint   {self.fingerprint}",
            f"model         {s.model}  weights {s.weights}"
            + (f"  ({s.weights_path})" if s.weights_path else ""),
            f"preprocessing {s.image_size} px, resize {s.resize} ({s.interpolation}, "
            f"antialias{', decode ' + s.decode if s.decode != 'pil' else ''}), "
            f"mean {list(s.mean)}, std {list(s.std)} [from {s.preprocessing_source}]"
            f"; forward passes in {s.autocast or 'float32'}",
            f"dataset       {d.name}  {d.source}  ({len(self.classes)} classes, "
            f"fingerprint {d.fingerprint[:16]})"
            + (f"  options {d.options.to_json()}" if d.options.to_json() else ""),
            f"classes       {_class_list(self.classes)}",
            "taps:",
        ]
        for tap in self.taps:
            t = s.tap_layers[tap]
            lines.append(f"  {tap:<12} {t.where} of {t.module}, activation "
                         f"{tuple(t.activation_shape)}, pool {t.pool} -> {t.dim} {s.dtype}")
        if s.views is not None:
            r = s.views
            lines.append(f"views         mirror, and {r.count} random ({r.kind}, seed {r.seed}) "
                         f"on {', '.join(r.splits) or 'no split'}")
        lines.append("splits:")
        for split in self.splits:
            skipped = self._skipped.get(split, [])
            views = len(self.view_names(split))
            lines.append(f"  {split:<12} {self.num_rows(split)} rows"
                         + (f" x {views} views" if views else "")
                         + (f", {len(skipped)} unreadable images skipped" if skipped else ""))
        return "\n".join(lines)


def _copy_structure(dst: h5py.File, spec: BankSpec, dataset: DatasetInfo,
                    fingerprint: str, extra: dict[str, Any]) -> None:
    dst.attrs.update({"featurebank_format": FORMAT_VERSION, **versions(),
                      "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                      "spec": json.dumps(spec.to_json()),
                      "dataset": json.dumps(dataset.to_json()),
                      "fingerprint": fingerprint, "complete": False, **extra})
    dst.create_dataset("classes", data=np.array(dataset.classes, dtype=object),
                       dtype=h5py.string_dtype())


def _arrays(spec: BankSpec) -> list[str]:
    views = [f"views/{t}" for t in spec.taps] if spec.views is not None else []
    return [*(f"features/{t}" for t in spec.taps), *views, "labels", "index"]


def write_virtual_bank(path: Path, shards: list[Path], *, spec: BankSpec,
                       dataset: DatasetInfo) -> None:
    """Write ``path``: one bank whose datasets are HDF5 virtual datasets over the complete
    shard banks ``shards``, in their order, with the provenance a single process would have
    written (same fingerprint) and each shard's name, rows, size, time and SHA-256 for the
    checks at open (size and time) and :meth:`FeatureBank.verify` (content). Stock h5py reads
    it as one file; the shards must stay beside it."""
    banks = [FeatureBank(p) for p in shards]
    records = [{"file": os.path.relpath(p, path.parent),
                "rows": {s: b.num_rows(s) for s in b.splits},
                "size": p.stat().st_size, "mtime_ns": p.stat().st_mtime_ns,
                "sha256": sha256_file(p)} for p, b in zip(shards, banks)]
    with atomic_file(path) as tmp, h5py.File(tmp, "w") as f:
        _copy_structure(f, spec, dataset, bank_fingerprint(spec, dataset),
                        {"shards": json.dumps(records)})
        for split in dataset.splits:
            g = f.create_group(split)
            for name in _arrays(spec):
                _virtual(g, name, [(os.path.relpath(p, path.parent), b._h5[split][name])
                                   for p, b in zip(shards, banks)])
            n = sum(b.num_rows(split) for b in banks)
            g.attrs.update({"rows_done": np.int64(n), "sources_done": np.int64(
                sum(int(b._h5[split].attrs["sources_done"]) for b in banks)),
                "skipped": json.dumps([x for b in banks for x in b.skipped(split)])})
        f.attrs.modify("complete", True)
        for b in banks:
            b.close()


def _virtual(group: h5py.Group, name: str, sources: list[tuple[str, h5py.Dataset]]) -> None:
    """``group[name]``: the sources' datasets one after another, as a virtual dataset."""
    first = sources[0][1]
    n = sum(ds.shape[0] for _, ds in sources)
    if n == 0:
        group.create_dataset(name, shape=first.shape, dtype=first.dtype)
        return
    layout = h5py.VirtualLayout(shape=(n, *first.shape[1:]), dtype=first.dtype)
    start = 0
    for file, ds in sources:
        if ds.shape[0]:
            layout[start:start + ds.shape[0]] = h5py.VirtualSource(file, ds.name, shape=ds.shape)
        start += ds.shape[0]
    group.create_virtual_dataset(name, layout)


def merge_bank(path: str | os.PathLike, out: str | os.PathLike | None = None, *,
               overwrite: bool = False) -> FeatureBank:
    """Copy a bank over shards into one self-contained file (``out``, default: in place of
    ``path``, atomically); its content and fingerprint are the same. The shards' content is
    verified first (:meth:`FeatureBank.verify`; a bank that recorded no checksums is copied
    with a warning). A self-contained bank of the same fingerprint at ``out`` is up to date;
    another file there is replaced only with ``overwrite``."""
    bank = FeatureBank(path)
    if out is not None and Path(out).exists() and Path(out).resolve() != bank.path.resolve():
        try:
            there = FeatureBank(out)
        except BankError:
            there = None
        if there is not None and not there.shards and there.fingerprint == bank.fingerprint:
            return there
        if not overwrite:
            raise BankError(f"{str(out)!r} exists already and is not this bank merged; pass "
                            f"overwrite=True (--overwrite) to replace it, or choose another "
                            f"out= (--out).")
    if not bank.shards:
        raise BankError(f"feature bank {str(bank.path)!r} is self-contained already.")
    if all("sha256" in s for s in bank.shards):
        bank.verify()
    else:
        warnings.warn(f"feature bank {str(bank.path)!r} recorded no checksums of its shards (an "
                      f"older featurebank wrote it): their content is copied unverified.",
                      stacklevel=2)
    out = Path(out) if out is not None else bank.path
    src = bank._h5
    with atomic_file(out) as tmp, h5py.File(tmp, "w") as f:
        _copy_structure(f, bank.spec, bank.dataset, bank.fingerprint, {})
        f.attrs["created"] = src.attrs["created"]
        for split in bank.splits:
            g = f.create_group(split)
            g.attrs.update(dict(src[split].attrs))
            for name in _arrays(bank.spec):
                ds = src[split][name]
                rows = max(1, min(ds.shape[0], _CHUNK_BYTES // max(1, ds.dtype.itemsize * int(
                    np.prod(ds.shape[1:]))))) if ds.shape[0] else None
                dst = g.create_dataset(name, shape=ds.shape, dtype=ds.dtype,
                                       chunks=(rows, *ds.shape[1:]) if rows else None)
                for start, block in raw_blocks(ds, _CHUNK_BYTES * 64):
                    dst[start:start + len(block)] = block
        f.attrs.modify("complete", True)
        bank.close()
    return FeatureBank(out)


class BankWriter:
    """Writes a bank under ``<path>.partial``; :meth:`commit` renames it to ``path``.

    Its provenance gives its shape: ``dataset.splits`` (source rows per split) and
    ``spec.tap_layers`` (feature size per tap). With ``resume=True`` a ``.partial`` file of the
    same fingerprint is continued from each split's ``sources_done``.
    """

    def __init__(self, path: Path, *, spec: BankSpec, dataset: DatasetInfo, resume: bool):
        self.path, self.spec = Path(path), spec
        self.partial = Path(f"{path}.partial")
        self.fingerprint = bank_fingerprint(spec, dataset)
        self.resumed = False
        f = self._open_partial() if resume and self.partial.exists() else None
        if f is None:
            f = self._create(spec, dataset)
        self.f = f

    def _open_partial(self) -> h5py.File | None:
        try:
            f = self._open(self.partial)
            found = str(f.attrs["fingerprint"])
        except Exception as e:  # a partial damaged beyond use: its rows are recomputed
            warnings.warn(f"unfinished bank {str(self.partial)!r} cannot be read ({e}); "
                          f"starting the extraction over.", stacklevel=3)
            return None
        if found != self.fingerprint:
            f.close()
            raise BankError(
                f"unfinished bank {str(self.partial)!r} was started with other arguments "
                f"(fingerprint {found[:12]} vs {self.fingerprint[:12]} now: a different dataset, "
                f"model, weights, taps, image size or dtype). Rerun with the arguments it was "
                f"started with to finish it, or pass resume=False (--no-resume) to start over.")
        self.resumed = True
        return f

    def _create(self, spec: BankSpec, dataset: DatasetInfo) -> h5py.File:
        dtype = np.dtype(spec.dtype)
        # A .partial file always has its full structure (built aside, then renamed). Default
        # (earliest) file format: no "open for writing" flag in the superblock, so a file
        # whose writer was killed reopens without h5clear.
        with atomic_file(self.partial) as tmp, h5py.File(tmp, "w") as f:
            _copy_structure(f, spec, dataset, self.fingerprint, {})
            for split, n in dataset.splits.items():
                g = f.create_group(split)
                g.attrs.update({"rows_done": np.int64(0), "sources_done": np.int64(0)})
                for tap in spec.taps:
                    dim = spec.tap_layers[tap].dim
                    rows = int(max(1, min(n, _CHUNK_BYTES // (dim * dtype.itemsize))))
                    self._allocate(g, f"features/{tap}", (n, dim), dtype, (rows, dim))
                    if spec.views is not None:  # a block of rows' views read contiguously
                        v = spec.views.per_split(split)
                        rows = int(max(1, min(n, _CHUNK_BYTES // (v * dim * dtype.itemsize))))
                        self._allocate(g, f"views/{tap}", (n, v, dim), dtype, (rows, v, dim))
                for name in ("labels", "index"):
                    self._allocate(g, name, (n,), np.dtype(np.int64),
                                   (max(1, min(n, 1 << 16)),))
        return self._open(self.partial)

    @staticmethod
    def _open(path: Path) -> h5py.File:
        # No chunk cache: a row block goes to the disk in the call that writes it, so a failed
        # write (a full disk) raises there and leaves nothing dirty in HDF5's cache, which
        # would otherwise fail again on every flush and crash the interpreter at exit.
        return h5py.File(path, "r+", rdcc_nbytes=0)

    @staticmethod
    def _allocate(group: h5py.Group, name: str, shape, dtype, chunks) -> None:
        if shape[0] == 0:  # an empty split: nothing to allocate or resume
            group.create_dataset(name, shape=shape, dtype=dtype)
            return
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)  # every chunk placed now
        dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)  # ...without writing zeros first
        group.create_dataset(name, shape=shape, dtype=dtype, chunks=chunks, maxshape=shape,
                             dcpl=dcpl)

    def progress(self, split: str) -> tuple[int, int]:
        """``(rows_done, sources_done)`` of ``split``."""
        a = self.f[split].attrs
        return int(a["rows_done"]), int(a["sources_done"])

    def write(self, split: str, *, features: dict[str, np.ndarray], labels: np.ndarray,
              index: np.ndarray, sources_done: int,
              views: dict[str, np.ndarray] | None = None) -> None:
        """Append rows to ``split``; once this returns they survive a kill of the process.

        A write the disk refuses (full, quota, file size limit) raises BankError saying what
        is kept and how to resume; the counters stay behind the rows that did not land.
        """
        g = self.f[split]
        r, _ = self.progress(split)
        k = len(labels)
        try:
            if k:
                for tap, x in features.items():
                    g["features"][tap][r:r + k] = x
                for tap, x in (views or {}).items():  # (k, V, D): each row's views
                    g["views"][tap][r:r + k] = x
                g["labels"][r:r + k] = labels
                g["index"][r:r + k] = index
                self.f.flush()  # rows on disk before the counters that point past them
            g.attrs.modify("rows_done", np.int64(r + k))
            g.attrs.modify("sources_done", np.int64(sources_done))
            self.f.flush()
        except OSError as e:
            raise self._write_error(e) from None

    def _write_error(self, e: OSError) -> BankError:
        code, reason = os_error_message(e)
        done = sum(self.progress(s)[0] for s in self.f if isinstance(self.f[s], h5py.Group))
        st = os.stat(self.partial)
        missing = max(0, st.st_size - st.st_blocks * 512)  # the file is sparse until written
        fix = (f"free space (about {_human_size(missing)} more is needed) and rerun the same "
               f"command to resume" if code in DISK_FULL else
               "fix the cause and rerun the same command to resume")
        return BankError(f"{reason.lower()} while writing {str(self.partial)!r}: the {done} "
                         f"rows written so far are kept there; {fix}.")

    def commit(self, skipped: dict[str, list[str]]) -> None:
        """Trim splits that lost unreadable images, mark complete, rename to the final name."""
        try:
            for split in self.f:
                if not isinstance(self.f[split], h5py.Group):
                    continue
                g = self.f[split]
                rows, _ = self.progress(split)
                for ds in [*g["features"].values(), g["labels"], g["index"]]:
                    if ds.shape[0] != rows:
                        ds.resize(rows, axis=0)
                g.attrs["skipped"] = json.dumps(skipped.get(split, []))
            self.f.flush()
            self.f.attrs.modify("complete", True)
            self.f.close()
            replace_durably(self.partial, self.path)
        except OSError as e:
            raise self._write_error(e) from None

    def close(self) -> None:
        """Close without completing (the partial file stays for a later resume)."""
        if self.f.id.valid:
            self.f.flush()
            self.f.close()
