"""Feature rows read from a bank a chunk at a time: the same rows as in memory."""

import h5py
import numpy as np
import pytest

from conftest import write_feature_bank
from featurebank import ParameterError, fit_heads
from featurebank.rows import StreamedRows, chunks, is_streamed, raw_blocks, select


@pytest.fixture
def ds(tmp_path):
    X = np.random.default_rng(0).standard_normal((1000, 7)).astype(np.float16)
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["x"] = X
    f = h5py.File(tmp_path / "x.h5", "r")
    yield f["x"], X
    f.close()


def test_streamed_rows_read_chunk_by_chunk_as_in_memory(ds):
    d, X = ds
    rows = np.sort(np.random.default_rng(1).choice(1000, 300, replace=False))
    for chunk in (64, 333, 5000):
        s = StreamedRows(d, rows, chunk=chunk)
        got = list(s.chunks())
        assert all(len(c) <= chunk for _, c in got) and s.shape == (300, 7) and len(s) == 300
        np.testing.assert_array_equal(np.concatenate([c for _, c in got]),
                                      X[rows].astype(np.float32))
        assert [start for start, _ in got] == list(np.cumsum([0] + [len(c) for _, c in got])[:-1])
        sub = s.select(np.arange(0, 300, 7))  # a selection of a selection: dataset rows
        np.testing.assert_array_equal(np.concatenate([c for _, c in sub.chunks()]),
                                      X[rows[::7]].astype(np.float32))
        np.testing.assert_array_equal(s.take(np.array([0, 5])), X[rows[[0, 5]]])
        assert sum(len(b) for _, b in s.blocks(10)) == 300
    with pytest.raises(ParameterError, match="the 'chunk' parameter must be a positive int"):
        StreamedRows(d, chunk=0)


def test_one_chunk_reader_for_arrays_datasets_and_selections(ds):
    d, X = ds
    for source in (X, d, StreamedRows(d, chunk=128)):
        parts = list(chunks(source, 256))
        np.testing.assert_array_equal(np.concatenate([c for _, c in parts]),
                                      X.astype(np.float32))
        assert all(c.dtype == np.float32 for _, c in parts)
    assert is_streamed(d) and is_streamed(StreamedRows(d)) and not is_streamed(X)
    np.testing.assert_array_equal(select(X, np.array([2, 4])), X[[2, 4]])
    assert isinstance(select(StreamedRows(d), np.array([2, 4])), StreamedRows)
    blocks = list(raw_blocks(d, 7 * 2 * 100))  # 100 rows of float16 a read, stored dtype
    assert len(blocks) == 10 and blocks[0][1].dtype == np.float16


def test_fit_passes_its_chunk_size_to_the_streamed_rows(tmp_path):
    bank = write_feature_bank(tmp_path / "b.h5", n_train=200)
    with pytest.raises(ParameterError, match="the 'chunk_rows' parameter must be a positive"):
        fit_heads(bank, heads=["logreg"], out=None, stream=True, chunk_rows=-3, progress=False)


def test_view_rows_put_each_images_views_after_its_centre_row(tmp_path):
    from featurebank.rows import ViewRows

    rng = np.random.default_rng(0)
    centre = rng.standard_normal((50, 6)).astype(np.float16)
    views = rng.standard_normal((50, 4, 6)).astype(np.float16)
    with h5py.File(tmp_path / "v.h5", "w") as f:
        f["c"], f["v"] = centre, views
    images = np.sort(rng.choice(50, 20, replace=False))
    expected = np.concatenate([np.concatenate([centre[i][None], views[i, [1, 2]]])
                               for i in images]).astype(np.float32)
    with h5py.File(tmp_path / "v.h5", "r") as f:
        for chunk in (1, 7, 100):
            on_disk = ViewRows(f["c"], f["v"], images, [1, 2], chunk=chunk)
            assert on_disk.shape == (60, 6) and is_streamed(on_disk)
            np.testing.assert_array_equal(np.concatenate([c for _, c in on_disk.chunks()]),
                                          expected)
            np.testing.assert_array_equal(on_disk.array(), expected)
            np.testing.assert_array_equal(on_disk.take(np.array([0, 4, 59])),
                                          expected[[0, 4, 59]])
            np.testing.assert_array_equal(on_disk.groups, np.repeat(images, 3))
            sub = on_disk.select(np.arange(1, 60, 4))
            np.testing.assert_array_equal(sub.array(), expected[1::4])
        in_memory = ViewRows(centre, views, images, [1, 2])  # arrays: the same rows
        np.testing.assert_array_equal(in_memory.array(), expected)
        mirror = ViewRows(f["c"], f["v"], images, [0], with_centre=False, chunk=8)
        np.testing.assert_array_equal(mirror.array(), views[images, 0].astype(np.float32))
