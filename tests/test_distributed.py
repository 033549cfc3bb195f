"""Extraction with torchrun: 2 CPU ranks (gloo), shards, a virtual bank, kill and resume."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from conftest import REPO, rank_pid, rows_done, run_cli, write_folder, write_npz, write_wds
from featurebank import BankError, FeatureBank, extract
from featurebank.bank import merge_bank
from featurebank.data import shard_rows

ARGS = ["--model", "resnet18", "--weights", "none", "--image-size", "32", "--batch-size", "16",
        "-q"]


def _torchrun(tmp_path, *args, nproc=2, wait=True):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           str(nproc), "-m", "featurebank", "extract", *args]  # standalone: a free port
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    if not wait:
        return proc
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


def _one_thread_extract(*args, **kwargs) -> FeatureBank:
    """A single-process bank computed as a torchrun rank computes (one thread): the bits are
    the same only with the same thread count (README, "Many GPUs")."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return extract(*args, **kwargs)
    finally:
        torch.set_num_threads(threads)


def _same_bank(a: FeatureBank, b: FeatureBank) -> None:
    assert a.fingerprint == b.fingerprint and a.splits == b.splits
    for split in a.splits:
        np.testing.assert_array_equal(a.labels(split), b.labels(split))
        np.testing.assert_array_equal(a.index(split), b.index(split))
        for tap in a.taps:  # bit for bit: the same batches as one process makes
            np.testing.assert_array_equal(a.load(split, tap, dtype=None)[0],
                                          b.load(split, tap, dtype=None)[0])


def test_shards_are_whole_batches_in_order():
    for n, bs, world in [(150, 16, 2), (10, 4, 3), (3, 16, 2), (0, 8, 2), (64, 16, 4)]:
        rows = [shard_rows(n, bs, r, world) for r in range(world)]
        assert rows[0][0] == 0 and rows[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(rows, rows[1:]))  # contiguous, in order
        assert all(start % bs == 0 for start, _ in rows)
        sizes = [stop - start for start, stop in rows]
        assert max(sizes) - min(sizes) <= bs


def test_two_ranks_write_the_bank_one_process_writes(tmp_path):
    write_npz(tmp_path / "d.npz", n_train=150, n_test=50)
    rc, out, err = _torchrun(tmp_path, "--dataset", f"npz:{tmp_path / 'd.npz'}", *ARGS,
                             "--taps", "penultimate,layer3", "--out", "b.h5")
    assert rc == 0, err
    assert out.count("wrote b.h5") == 1  # rank 0 reports
    one = _one_thread_extract(f"npz:{tmp_path / 'd.npz'}", model="resnet18", weights="none", image_size=32,
                  batch_size=16, taps="penultimate,layer3", out=tmp_path / "one.h5",
                  progress=False)
    bank = FeatureBank(tmp_path / "b.h5")
    _same_bank(one, bank)
    assert [s["file"] for s in bank.shards] == [f"b.h5.shards/rank-0000{r}-of-00002.h5"
                                                for r in range(2)]
    assert [s["rows"]["train"] for s in bank.shards] == [80, 70]
    with h5py.File(tmp_path / "b.h5", "r") as f:  # stock h5py: virtual datasets
        assert f["train/features/layer3"].is_virtual and f["train/labels"].is_virtual
    batches = [y for _, y in bank.iter_batches("train", batch_size=64)]
    np.testing.assert_array_equal(np.concatenate(batches), one.labels("train"))
    # moved with its shards, it still opens (the shards are found beside it)
    shutil.move(tmp_path / "b.h5", tmp_path / "elsewhere.h5")
    shutil.move(tmp_path / "b.h5.shards", tmp_path / "b.h5.shards.away")
    with pytest.raises(BankError, match=r"reads its rows from 2 shard files, and .*rank-00000"
                                        r"-of-00002\.h5' is missing.*featurebank merge"):
        FeatureBank(tmp_path / "elsewhere.h5")
    shutil.move(tmp_path / "b.h5.shards.away", tmp_path / "b.h5.shards")
    _same_bank(one, FeatureBank(tmp_path / "elsewhere.h5"))
    # a changed shard is an error, never rows read as zeros
    shard = tmp_path / "b.h5.shards" / "rank-00001-of-00002.h5"
    os.utime(shard, ns=(0, 0))
    with pytest.raises(BankError, match=r"rank-00001-of-00002\.h5' changed since the bank was "
                                        r"written"):
        FeatureBank(tmp_path / "elsewhere.h5")


def test_merge_makes_one_self_contained_file(tmp_path, capsys):
    write_npz(tmp_path / "d.npz", n_train=60, n_test=20)
    rc, _, err = _torchrun(tmp_path, "--dataset", f"npz:{tmp_path / 'd.npz'}", *ARGS,
                           "--out", "b.h5")
    assert rc == 0, err
    before = FeatureBank(tmp_path / "b.h5")
    expected = {s: before.load(s, dtype=None)[0] for s in before.splits}
    assert before.verify() == [s["file"] for s in before.shards]
    # a shard whose bytes changed with its size and time kept: the check at open cannot see
    # it, the SHA-256 recorded at write time does (info --verify, merge)
    shard = tmp_path / "b.h5.shards" / "rank-00000-of-00002.h5"
    original, st = shard.read_bytes(), shard.stat()
    with h5py.File(shard, "r") as f:
        offset = f["train/features/penultimate"].id.get_chunk_info(0).byte_offset
    changed = bytearray(original)
    changed[offset + 6] ^= 0x40
    shard.write_bytes(bytes(changed))
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))
    bank = FeatureBank(tmp_path / "b.h5")  # opens: size and time are as recorded
    assert not np.array_equal(bank.load("train", dtype=None)[0], expected["train"])
    says = (r"shard '.*rank-00000-of-00002\.h5' of feature bank '.*b\.h5' changed since the "
            r"bank was written \(its SHA-256 differs")
    with pytest.raises(BankError, match=says):
        bank.verify()
    bank_file = str(tmp_path / "b.h5")
    for argv in (["info", bank_file, "--verify"], ["merge", bank_file]):
        proc = run_cli(*argv, check=False, capsys=capsys)
        assert proc.returncode == 2 and re.search(says, proc.stderr), proc.stderr
    assert FeatureBank(tmp_path / "b.h5").shards  # merge refused: the bank is as it was
    shard.write_bytes(original)
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))
    proc = run_cli("info", bank_file, "--verify", capsys=capsys)
    assert "verified: 2 shards" in proc.stdout, proc.stderr
    # a bank of an earlier featurebank recorded no checksums: verify says so, merge warns
    shutil.copy(tmp_path / "b.h5", tmp_path / "old.h5")
    with h5py.File(tmp_path / "old.h5", "r+") as f:
        records = json.loads(f.attrs["shards"])
        f.attrs["shards"] = json.dumps([{k: v for k, v in r.items() if k != "sha256"}
                                        for r in records])
    with pytest.raises(BankError, match="recorded no checksums of its shards"):
        FeatureBank(tmp_path / "old.h5").verify()
    with pytest.warns(UserWarning, match="their content is copied unverified"):
        merge_bank(tmp_path / "old.h5", tmp_path / "old-merged.h5")
    merged = merge_bank(tmp_path / "b.h5", tmp_path / "m.h5")  # to another file: the rule
    stamp = merged.path.stat().st_mtime_ns
    assert merge_bank(tmp_path / "b.h5", tmp_path / "m.h5").path.stat().st_mtime_ns == stamp
    assert merge_bank(tmp_path / "b.h5", tmp_path / "old-merged.h5").fingerprint == \
        merged.fingerprint  # the same rows merged before (from a copy): up to date
    (tmp_path / "notes.h5").write_text("mine")
    with pytest.raises(BankError, match=r"notes\.h5' exists already and is not this bank "
                                        r"merged; pass overwrite=True"):
        merge_bank(tmp_path / "b.h5", tmp_path / "notes.h5")
    assert (tmp_path / "notes.h5").read_text() == "mine"
    run_cli("merge", bank_file, capsys=capsys)
    shutil.rmtree(tmp_path / "b.h5.shards")
    merged = FeatureBank(tmp_path / "b.h5")
    assert merged.shards == [] and merged.fingerprint == before.fingerprint
    for split, X in expected.items():
        np.testing.assert_array_equal(merged.load(split, dtype=None)[0], X)
    with pytest.raises(BankError, match="self-contained already"):
        merge_bank(tmp_path / "b.h5")


def test_a_killed_rank_resumes_to_the_bank_an_uninterrupted_run_writes(tmp_path):
    write_npz(tmp_path / "d.npz", n_train=800, n_test=40)
    args = ["--dataset", f"npz:{tmp_path / 'd.npz'}", *ARGS[:-3], "--image-size", "64",
            "--batch-size", "16", "-q", "--out", "b.h5"]
    one = _one_thread_extract(f"npz:{tmp_path / 'd.npz'}", model="resnet18", weights="none", image_size=64,
                  batch_size=16, out=tmp_path / "one.h5", progress=False)
    proc = _torchrun(tmp_path, *args, wait=False)
    partial = tmp_path / "b.h5.shards" / "rank-00001-of-00002.h5.partial"
    deadline = time.time() + 240
    while rows_done(partial) < 32:
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    os.kill(rank_pid(proc.pid, 1), signal.SIGKILL)  # no chance to clean up
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and not (tmp_path / "b.h5").exists()
    assert 32 <= rows_done(partial) < 400
    rc, _, err = _torchrun(tmp_path, *args)  # the same command again
    assert rc == 0, err
    _same_bank(one, FeatureBank(tmp_path / "b.h5"))
    assert not partial.exists()


def test_a_failing_rank_stops_the_run_naming_itself(tmp_path):
    write_folder(tmp_path / "imgs", splits=("",), n_per_class=6)  # 18 files, sorted by class
    bad = tmp_path / "imgs" / "emu" / "004.jpg"  # in rank 1's share
    bad.write_bytes(b"not a jpeg")
    t = time.time()
    rc, _, err = _torchrun(tmp_path, "--dataset", f"folder:{tmp_path / 'imgs'}", *ARGS[:-3],
                           "--image-size", "32", "--batch-size", "4", "--num-workers", "0",
                           "--out", "b.h5")
    assert rc != 0 and time.time() - t < 120  # stopped, not left waiting in a collective
    assert "featurebank extract (rank 1 of 2): error: cannot read image" in err
    assert "004.jpg" in err and not (tmp_path / "b.h5").exists()


def test_two_ranks_extract_tar_shards_as_one_process(tmp_path):
    samples = write_folder(tmp_path / "imgs", splits=("",), n_per_class=7)  # 21 images
    pattern = write_wds(tmp_path / "shards", samples, per_shard=4)["train"]  # 6 shards
    args = ["--dataset", f"wds:{pattern}", *ARGS[:-3], "--image-size", "32", "--batch-size",
            "4", "--num-workers", "0", "--data-root", str(tmp_path), "--out", "b.h5"]
    rc, _, err = _torchrun(tmp_path, *args)
    assert rc == 0, err
    assert "extract (rank 0's share of 2 ranks) train" in err  # the bar says what it counts
    one = _one_thread_extract(f"wds:{pattern}", model="resnet18", weights="none", image_size=32,
                  batch_size=4, num_workers=0, data_root=tmp_path, out=tmp_path / "one.h5",
                  progress=False)
    bank = FeatureBank(tmp_path / "b.h5")
    _same_bank(one, bank)  # bit for bit, in source order
    assert [s["rows"]["train"] for s in bank.shards] == [12, 9]  # whole batches of 4
