"""Augmented views in the bank: the mirror is the flipped image's row, random views are a
function of (seed, position, view) alone, so a rerun, a killed-and-resumed extraction and 2
ranks write the same bits; a bank without views is today's bank."""

import json
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from conftest import REPO, rows_done, write_folder, write_npz
from featurebank import BankError, FeatureBank, ParameterError, extract
from featurebank.records import BankSpec

KW = dict(model="resnet18", weights="none", image_size=32, dtype="float32", progress=False)


def _views_equal(a: FeatureBank, b: FeatureBank) -> None:
    assert a.fingerprint == b.fingerprint
    for split in a.splits:
        np.testing.assert_array_equal(a.views(split)[:], b.views(split)[:])
        np.testing.assert_array_equal(a.load(split, dtype=None)[0], b.load(split, dtype=None)[0])


def test_the_mirror_is_the_flipped_image_and_random_views_are_seeded(tmp_path):
    arrays = write_npz(tmp_path / "d.npz", n_train=50, n_test=20)
    flipped = {k: (v[:, :, ::-1] if k.endswith("images") else v) for k, v in arrays.items()}
    np.savez(tmp_path / "flip.npz", **flipped)
    bank = extract(f"npz:{tmp_path / 'd.npz'}", out=tmp_path / "v.h5", views=3, **KW)
    mirror = extract(f"npz:{tmp_path / 'flip.npz'}", out=tmp_path / "f.h5", **KW)
    assert bank.view_names("train") == ["mirror", "random1", "random2", "random3"]
    assert bank.view_names("test") == ["mirror"]  # --view-splits: train by default
    for split in ("train", "test"):
        views = bank.views(split)[:]
        np.testing.assert_array_equal(views[:, 0], mirror.load(split, dtype=None)[0])
    train = bank.views("train")[:]
    assert train.shape == (50, 4, 512)
    assert not np.allclose(train[:, 1], train[:, 2]) and not np.allclose(train[:, 1],
                                                                          bank.load("train")[0])
    recipe = bank.spec.views
    assert (recipe.count, recipe.splits, recipe.seed, recipe.kind) == (3, ("train",), 0,
                                                                        "pad_crop_flip")
    again = extract(f"npz:{tmp_path / 'd.npz'}", out=tmp_path / "again.h5", views=3, **KW)
    _views_equal(bank, again)  # a rerun: the same bits
    other = extract(f"npz:{tmp_path / 'd.npz'}", out=tmp_path / "seed1.h5", views=3,
                    view_seed=1, **KW)
    assert other.fingerprint != bank.fingerprint  # the recipe is in the fingerprint
    np.testing.assert_array_equal(other.views("train")[:, 0], train[:, 0])  # same mirror
    assert not np.allclose(other.views("train")[:, 1], train[:, 1])
    assert "views         mirror, and 3 random (pad_crop_flip, seed 0) on train" in bank.info()
    assert "train        50 rows x 4 views" in bank.info()
    # stock h5py reads them, chunked so that a block of rows' views is contiguous
    with h5py.File(tmp_path / "v.h5", "r") as f:
        assert f["train/views/penultimate"].chunks[1:] == (4, 512)


def test_a_bank_without_views_is_the_bank_it_was(tmp_path):
    write_npz(tmp_path / "d.npz", n_train=20, n_test=10)
    plain = extract(f"npz:{tmp_path / 'd.npz'}", out=tmp_path / "p.h5", **KW)
    assert "views" not in plain.spec.to_json() and plain.spec.views is None
    assert sorted(plain._h5["train"]) == ["features", "index", "labels"]
    assert BankSpec.from_json(plain.spec.to_json()).views is None
    with pytest.raises(BankError, match="holds no views; extract it with --views K or"):
        plain.views("train")
    assert plain.view_names("train") == []
    mirror = extract(f"npz:{tmp_path / 'd.npz'}", out=tmp_path / "m.h5", mirror=True, **KW)
    assert mirror.view_names("train") == ["mirror"] == mirror.view_names("test")
    np.testing.assert_array_equal(mirror.load("train", dtype=None)[0],
                                  plain.load("train", dtype=None)[0])  # the rows unchanged
    with pytest.raises(ParameterError, match=r"'view_splits' parameter names splits \['val'\]"):
        extract(f"npz:{tmp_path / 'd.npz'}", out=tmp_path / "x.h5", views=1, view_splits="val",
                **KW)


def test_the_source_image_size_chooses_the_kind_of_random_view(tmp_path):
    # files of 20-48 px decoded at 72 px: small sources, pad-and-crop (CIFAR's JPEGs too)
    write_folder(tmp_path / "small", n_per_class=3)
    small = extract(f"folder:{tmp_path / 'small'}", out=tmp_path / "s.h5", views=1,
                    **{**KW, "image_size": 72})
    assert small.spec.views.kind == "pad_crop_flip"
    # photos of 80-120 px: random resized crops
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in ("a", "b"):
            (tmp_path / "big" / split / c).mkdir(parents=True)
            for i in range(4):
                pixels = rng.integers(0, 256, (int(rng.integers(80, 120)), 100, 3), np.uint8)
                Image.fromarray(pixels).save(tmp_path / "big" / split / c / f"{i}.png")
    kw = {**KW, "image_size": 64}
    bank = extract(f"folder:{tmp_path / 'big'}", out=tmp_path / "b.h5", views=2,
                   view_splits="train,test", **kw)
    assert bank.spec.views.kind == "resized_crop_flip"
    assert bank.views("test").shape == (8, 3, 512)
    again = extract(f"folder:{tmp_path / 'big'}", out=tmp_path / "c.h5", views=2,
                    view_splits="train,test", **kw)
    _views_equal(bank, again)


def _extract_cli(cwd, out, *extra, nproc=None):
    args = ["--dataset", "npz:d.npz", "--model", "resnet18", "--weights", "none",
            "--image-size", "32", "--dtype", "float32", "--views", "2", "--batch-size", "16",
            "-q", "--out", str(out), *extra]
    cmd = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
            str(nproc), "-m", "featurebank", "extract"] if nproc else
           [sys.executable, "-m", "featurebank", "extract"])
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([*cmd, *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_killed_resumed_and_two_rank_extractions_write_the_same_views(tmp_path):
    write_npz(tmp_path / "d.npz", n_train=400, n_test=40)
    ref = _extract_cli(tmp_path, tmp_path / "ref.h5")
    assert ref.wait(timeout=300) == 0, ref.communicate()
    proc = _extract_cli(tmp_path, tmp_path / "b.h5")
    deadline = time.time() + 240
    while rows_done(tmp_path / "b.h5.partial") < 48:
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert rows_done(tmp_path / "b.h5.partial") < 400
    again = _extract_cli(tmp_path, tmp_path / "b.h5")
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err  # resumed from the partial bank (-q: silently)
    assert not (tmp_path / "b.h5.partial").exists()
    _views_equal(FeatureBank(tmp_path / "ref.h5"), FeatureBank(tmp_path / "b.h5"))
    ranks = _extract_cli(tmp_path, tmp_path / "r.h5", nproc=2)
    _, err = ranks.communicate(timeout=300)
    assert ranks.returncode == 0, err
    two = FeatureBank(tmp_path / "r.h5")
    assert len(two.shards) == 2
    _views_equal(FeatureBank(tmp_path / "ref.h5"), two)
    record = json.loads(two._h5.attrs["spec"])
    assert record["views"]["count"] == 2
