"""Feature rows, in memory or read from a bank a chunk at a time: the one home of row reading.

A head's ``X`` is a numpy array, an HDF5 dataset (a bank's :meth:`FeatureBank.features`), or a
:class:`StreamedRows` selection of one. Every reader of rows (the bank's ``load``, ``fit``'s
checks and scores, the heads' kernels, standardisation and projections) goes through
:func:`chunks` / :class:`StreamedRows`, so a bank larger than memory is read the same way
everywhere, one contiguous chunk at a time, float16 on disk and float32 in the chunk.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from ._io import POSITIVE_INT, as_float32

__all__ = ["CHUNK_ROWS", "StreamedRows", "ViewRows", "chunks", "is_streamed", "raw_blocks",
           "select"]

CHUNK_ROWS = 16384  # rows per read of a streamed fit: 16,384 x 4,096 float16 is 128 MiB


class StreamedRows:
    """Rows of an HDF5 dataset (all, or the sorted ``rows``), read chunk by chunk as float32,
    never whole: features of banks larger than memory. Peak memory is one chunk.

    Parameters
    ----------
    ds : h5py.Dataset
        ``(N, D)`` features.
    rows : array of int, optional
        Sorted rows of ``ds`` to select (default: all).
    chunk : int, default=16384
        Rows per read.
    """

    def __init__(self, ds, rows: np.ndarray | None = None, chunk: int = CHUNK_ROWS):
        self.ds, self.chunk = ds, POSITIVE_INT.check("chunk", chunk)
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64)
        self.shape = (ds.shape[0] if rows is None else len(self.rows), ds.shape[1])

    def __len__(self) -> int:
        return self.shape[0]

    def select(self, rows: np.ndarray) -> StreamedRows:
        """The sorted positions ``rows`` of this selection, as a selection of the dataset."""
        rows = np.asarray(rows, dtype=np.int64)
        return StreamedRows(self.ds, rows if self.rows is None else self.rows[rows], self.chunk)

    def read(self, start: int, stop: int) -> np.ndarray:
        """float32 rows ``[start, stop)`` of the dataset (not of the selection)."""
        return as_float32(self.ds[start:min(stop, self.ds.shape[0])])

    def chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        """``(first row, float32 array)`` over the selected rows, in order."""
        if self.rows is None:
            for s in range(0, self.ds.shape[0], self.chunk):
                yield s, self.read(s, s + self.chunk)
            return
        done = 0
        for s in range(0, self.ds.shape[0], self.chunk):
            lo, hi = np.searchsorted(self.rows, [s, s + self.chunk])
            if hi > lo:  # one contiguous read, then the selected rows of it
                yield done, self.read(s, s + self.chunk)[self.rows[lo:hi] - s]
                done += hi - lo

    def blocks(self, size: int) -> Iterator[tuple[int, np.ndarray]]:
        """The chunks cut into blocks of at most ``size`` rows (a kernel's cache blocks)."""
        for s, chunk in self.chunks():
            for i in range(0, len(chunk), size):
                yield s + i, chunk[i:i + size]

    def take(self, idx: np.ndarray) -> np.ndarray:
        """float32 rows at the sorted positions ``idx`` of the selection."""
        source = idx if self.rows is None else self.rows[idx]
        return as_float32(self.ds[np.sort(source)])


class ViewRows(StreamedRows):
    """Images' centre rows with their augmented views, as one ``(n_images x (1 + views), D)``
    matrix read chunk by chunk: image-major, each image's centre row (an ``(N, D)`` dataset)
    then its views (rows of an ``(N, V, D)`` one; a bank's ``views/<tap>``). A training set
    with views that never holds more than a chunk in memory, or :meth:`array` of it.

    Parameters
    ----------
    centre : h5py.Dataset or ndarray
        ``(N, D)`` centre rows.
    views : h5py.Dataset or ndarray
        ``(N, V, D)`` views of the same images.
    images : array of int
        Sorted rows (images) to take.
    view_index : sequence of int
        The views (indices into ``V``) each image contributes after its centre row.
    chunk : int, default=16384
        Rows (image-views) per read.
    with_centre : bool, default=True
        Whether each image's centre row comes first (False: its views alone).

    Attributes
    ----------
    pairs : ndarray of shape (n_rows, 2)
        ``(image, view)`` of every row, view -1 the centre row.
    groups : ndarray of shape (n_rows,)
        The image of every row: rows of one image stay on one side of a split.
    """

    def __init__(self, centre, views, images: np.ndarray, view_index, chunk: int = CHUNK_ROWS,
                 *, with_centre: bool = True, pairs: np.ndarray | None = None):
        self.ds, self.views_ds, self.chunk = centre, views, POSITIVE_INT.check("chunk", chunk)
        if pairs is None:
            images = np.asarray(images, dtype=np.int64)
            which = np.array([-1] * with_centre + list(view_index), dtype=np.int64)
            pairs = np.stack([np.repeat(images, len(which)), np.tile(which, len(images))], 1)
        self.pairs = pairs
        self.rows = pairs[:, 0]  # each row's image (StreamedRows' meaning: rows of ds)
        self.groups = self.rows
        self.shape = (len(pairs), centre.shape[1])
        per_image = len(pairs) / max(1, len(np.unique(self.rows)))
        self.images_per_read = max(1, int(self.chunk // max(1.0, per_image)))

    def select(self, rows: np.ndarray) -> ViewRows:
        return ViewRows(self.ds, self.views_ds, None, (), self.chunk,
                        pairs=self.pairs[np.asarray(rows, dtype=np.int64)])

    def __repr__(self) -> str:
        return f"ViewRows({self.shape[0]} rows of {len(np.unique(self.rows))} images)"

    def _gather(self, pairs: np.ndarray, start: int, stop: int) -> np.ndarray:
        """float32 rows of ``pairs`` (images within ``[start, stop)``), in their order."""
        out = np.empty((len(pairs), self.shape[1]), np.float32)
        centre = pairs[:, 1] < 0
        if centre.any():
            out[centre] = as_float32(self.ds[start:stop])[pairs[centre, 0] - start]
        if not centre.all():
            views = self.views_ds[start:stop]
            out[~centre] = as_float32(views[pairs[~centre, 0] - start, pairs[~centre, 1]])
        return out

    def chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        done, step = 0, self.images_per_read  # about ``chunk`` rows per read
        for s in range(0, self.ds.shape[0], step):
            lo, hi = np.searchsorted(self.rows, [s, s + step])
            if hi > lo:
                yield done, self._gather(self.pairs[lo:hi], s, min(s + step, self.ds.shape[0]))
                done += hi - lo

    def take(self, idx: np.ndarray) -> np.ndarray:
        idx = np.sort(np.asarray(idx, dtype=np.int64))
        out = np.empty((len(idx), self.shape[1]), np.float32)
        for s, chunk in self.chunks():  # one pass; the rows of idx in each chunk
            lo, hi = np.searchsorted(idx, [s, s + len(chunk)])
            out[lo:hi] = chunk[idx[lo:hi] - s]
        return out

    def array(self) -> np.ndarray:
        """All rows as one float32 array (in memory)."""
        out = np.empty(self.shape, np.float32)
        for s, chunk in self.chunks():
            out[s:s + len(chunk)] = chunk
        return out


def is_streamed(X: Any) -> bool:
    """Whether ``X`` is read from disk (an HDF5 dataset or a selection of one)."""
    import h5py

    return isinstance(X, (h5py.Dataset, StreamedRows))


def chunks(X: Any, size: int = 8192) -> Iterator[tuple[int, np.ndarray]]:
    """``(first row, float32 rows)`` of an array, an HDF5 dataset or a :class:`StreamedRows`
    (its own chunks), ``size`` rows at a time: never a float32 copy of the whole."""
    if isinstance(X, StreamedRows):
        return X.chunks()
    return ((s, as_float32(X[s:s + size])) for s in range(0, X.shape[0], size))


def select(X: Any, rows: np.ndarray) -> Any:
    """The rows ``rows`` (sorted) of features in memory, or of a streamed selection."""
    return X.select(rows) if isinstance(X, StreamedRows) else X[rows]


def raw_blocks(ds: Any, nbytes: int) -> Iterator[tuple[int, np.ndarray]]:
    """``(first row, rows)`` of a dataset in its stored dtype, about ``nbytes`` per read."""
    rows = max(1, nbytes // max(1, int(np.prod(ds.shape[1:])) * ds.dtype.itemsize))
    for start in range(0, ds.shape[0], rows):
        yield start, ds[start:start + rows]
