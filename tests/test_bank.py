import pickle

import h5py
import numpy as np
import pytest
import torch

from featurebank import BankError, FeatureBank, ParameterError
from featurebank.bank import BankWriter, bank_fingerprint
from featurebank.records import BankSpec, DatasetInfo

SPEC = {"model": "toy", "weights": "none", "weights_path": None, "taps": ["a", "b"],
        "tap_layers": {t: {"module": t, "where": "output", "activation_shape": [d],
                           "pool": "none", "dim": d} for t, d in (("a", 5), ("b", 3))},
        "image_size": 8, "resize": "device", "interpolation": "bilinear", "antialias": True,
        "mean": [0.5] * 3, "std": [0.25] * 3, "preprocessing_source": "test", "dtype": "float16"}
DATASET = {"name": "npz", "source": "/somewhere/d.npz", "classes": ["x", "y", "z"],
           "splits": {"train": 10, "test": 4}, "resize": "device", "fingerprint": "f" * 64}


def _fingerprint(spec, dataset):
    return bank_fingerprint(BankSpec.from_json(spec), DatasetInfo.from_json(dataset))


def _write(path, rng, spec=SPEC, dataset=DATASET, resume=False, batch=3):
    w = BankWriter(path, spec=BankSpec.from_json(spec), dataset=DatasetInfo.from_json(dataset),
                   resume=resume)
    data = {}
    for split, n in dataset["splits"].items():
        feats = {t: rng.standard_normal((n, d)).astype(np.float16) for t, d in (("a", 5),
                                                                                ("b", 3))}
        y = rng.integers(0, 3, n)
        for s in range(0, n, batch):
            e = min(s + batch, n)
            w.write(split, features={t: v[s:e] for t, v in feats.items()}, labels=y[s:e],
                    index=np.arange(s, e), sources_done=e)
        data[split] = feats, y
    w.commit({})
    w.close()
    return data


@pytest.fixture
def bank(tmp_path):
    data = _write(tmp_path / "b.h5", np.random.default_rng(0))
    return FeatureBank(tmp_path / "b.h5"), data


def test_reader_gives_provenance_and_arrays(bank):
    b, data = bank
    assert b.splits == ["train", "test"] and b.taps == ["a", "b"]
    assert b.classes == ["x", "y", "z"]
    assert b.spec.to_json() == SPEC and b.dataset.to_json() == DATASET
    assert b.fingerprint == _fingerprint(SPEC, DATASET)
    X, y = b.load("train", "b")
    assert X.dtype == np.float32 and X.shape == (10, 3)
    np.testing.assert_array_equal(X, data["train"][0]["b"].astype(np.float32))
    np.testing.assert_array_equal(y, data["train"][1])
    X16, _ = b.load("test", dtype=None)  # first tap, stored dtype
    assert X16.dtype == np.float16
    np.testing.assert_array_equal(X16, data["test"][0]["a"])
    assert b.shape("test", "a") == (4, 5) and b.num_rows("test") == 4
    assert "toy" in repr(b) and "train=10" in repr(b)


def test_streaming_reads_equal_the_whole_split(bank):
    b, _ = bank
    blocks = list(b.iter_batches("train", "a", batch_size=4))
    assert [len(x) for x, _ in blocks] == [4, 4, 2]
    X, y = b.load("train", "a")
    np.testing.assert_array_equal(np.concatenate([x for x, _ in blocks]), X)
    np.testing.assert_array_equal(np.concatenate([t for _, t in blocks]), y)
    with pytest.raises(ParameterError, match="the 'batch_size' parameter must be a positive "
                                             "int, got 0"):
        next(b.iter_batches("train", batch_size=0))


class _Rows(torch.utils.data.Dataset):
    def __init__(self, bank):
        self.bank = bank

    def __len__(self):
        return self.bank.num_rows("train")

    def __getitem__(self, i):
        return self.bank.features("train", "a")[i].astype(np.float32)


def test_bank_opens_lazily_per_process_for_dataloader_workers(bank):
    b, _ = bank
    b.load("train")  # the parent has a handle open
    clone = pickle.loads(pickle.dumps(b))
    assert clone._file is None
    rows = torch.utils.data.DataLoader(_Rows(b), batch_size=3, num_workers=2)
    np.testing.assert_array_equal(torch.cat(list(rows)).numpy(), b.load("train", "a")[0])


def test_info_lists_everything(bank):
    text = bank[0].info()
    for needle in ("on disk", "model         toy", "a            output of a", "-> 5 float16",
                   "train        10 rows", "test         4 rows", "3 classes"):
        assert needle in text


def test_fingerprint_ignores_locations_only():
    moved = {**DATASET, "source": "/elsewhere/d.npz"}
    assert _fingerprint(SPEC, moved) == _fingerprint(SPEC, DATASET)
    assert (_fingerprint({**SPEC, "weights_path": "/w.pth"}, DATASET)
            == _fingerprint(SPEC, DATASET))
    assert _fingerprint({**SPEC, "image_size": 16}, DATASET) != _fingerprint(SPEC,
                                                                                      DATASET)


def test_writer_resumes_a_partial_file(tmp_path):
    path = tmp_path / "b.h5"
    w = BankWriter(path, spec=BankSpec.from_json(SPEC), dataset=DatasetInfo.from_json(DATASET),
                   resume=True)
    w.write("train", features={"a": np.ones((2, 5)), "b": np.ones((2, 3))},
            labels=np.array([1, 2]), index=np.array([0, 1]), sources_done=2)
    w.close()
    assert not path.exists() and (tmp_path / "b.h5.partial").exists()
    w = BankWriter(path, spec=BankSpec.from_json(SPEC), dataset=DatasetInfo.from_json(DATASET),
                   resume=True)
    assert w.resumed and w.progress("train") == (2, 2) and w.progress("test") == (0, 0)
    w.close()


def test_rows_left_out_are_trimmed_at_commit(tmp_path):
    w = BankWriter(tmp_path / "b.h5", spec=BankSpec.from_json(SPEC),
                   dataset=DatasetInfo.from_json(DATASET), resume=False)
    w.write("train", features={"a": np.ones((2, 5)), "b": np.ones((2, 3))},
            labels=np.array([1, 2]), index=np.array([0, 3]), sources_done=10)
    w.commit({"train": ["/x/1.jpg"]})
    b = FeatureBank(tmp_path / "b.h5")
    assert b.shape("train", "b") == (2, 3) and b.index("train").tolist() == [0, 3]
    assert b.skipped("train") == ["/x/1.jpg"] and b.num_rows("test") == 0


def test_reader_errors(tmp_path, bank):
    b, _ = bank
    with pytest.raises(BankError, match="has no split 'val'; its splits are"):
        b.load("val")
    with pytest.raises(BankError, match=r"has no tap 'fc7'; its taps are \['a', 'b'\]"):
        b.load("train", "fc7")
    with pytest.raises(BankError, match="does not exist"):
        FeatureBank(tmp_path / "nope.h5")
    (tmp_path / "nope.h5.partial").touch()
    with pytest.raises(BankError, match="unfinished extraction is in .*rerun the same extract"):
        FeatureBank(tmp_path / "nope.h5")
    (tmp_path / "text.h5").write_text("hello")
    with pytest.raises(BankError, match="not a readable HDF5 file"):
        FeatureBank(tmp_path / "text.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = 1
    with pytest.raises(BankError, match="HDF5 file but not a feature bank"):
        FeatureBank(tmp_path / "other.h5")
    with h5py.File(b.path, "r+") as f:
        f.attrs.modify("featurebank_format", 99)
    with pytest.raises(BankError, match="has format 99; this featurebank reads format 1"):
        FeatureBank(b.path)
    with h5py.File(b.path, "r+") as f:
        f.attrs.modify("featurebank_format", 1)
        f.attrs.modify("complete", False)
    with pytest.raises(BankError, match="is incomplete"):
        FeatureBank(b.path)


def test_info_names_the_classes(bank):
    b, _ = bank
    assert "classes       3: x, y, z" in b.info()
