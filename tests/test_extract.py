import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torchvision

from conftest import REPO, as_unprivileged, rows_done, run_cli, write_folder, write_npz
from featurebank import (BackboneError, BankError, BankLockedError, DataError, FeatureBank,
                         FeatureBankError, ParameterError, extract, get_backbone)
from featurebank._io import autocast


def _extract(tmp_path, vgg19_file, name="b.h5", **kw):
    kw = {"dataset": f"npz:{tmp_path / 'd.npz'}", "weights": vgg19_file, "image_size": 32,
          "batch_size": 32, "out": tmp_path / name, "progress": False, **kw}
    return extract(**kw)


@pytest.fixture
def npz(tmp_path):
    return write_npz(tmp_path / "d.npz")


def test_vgg19_bank_matches_the_source_and_a_direct_forward(tmp_path, vgg19_file, npz):
    bank = _extract(tmp_path, vgg19_file, taps="fc6,fc7,pool5")
    assert bank.splits == ["train", "test"] and bank.taps == ["fc6", "fc7", "pool5"]
    assert bank.classes == ["a", "b", "c", "d"]
    assert bank.shape("train", "fc7") == (120, 4096) and bank.shape("test", "pool5") == (40, 512)
    assert bank.features("train", "fc6").dtype == np.float16
    for split in ("train", "test"):
        np.testing.assert_array_equal(bank.labels(split), npz[f"{split}_labels"])
        np.testing.assert_array_equal(bank.index(split), np.arange(len(npz[f"{split}_labels"])))
    # provenance: what made these features, read back from the file
    s = bank.spec
    t = torchvision.models.VGG19_Weights.DEFAULT.transforms()
    assert s.model == "vgg19" and str(s.weights).startswith("file:sha256:")
    assert s.weights_path == str(vgg19_file)
    assert s.image_size == 32 and s.dtype == "float16" and s.resize == "device"
    assert list(s.mean) == list(t.mean) and list(s.std) == list(t.std)
    assert s.tap_layers["pool5"].pool == "avg"
    assert bank.dataset.splits == {"train": 120, "test": 40}
    with h5py.File(bank.path, "r") as f:
        assert f.attrs["complete"] and f.attrs["featurebank_format"] == 1
        assert f.attrs["torch_version"] == torch.__version__
        assert f["train"].attrs["rows_done"] == 120
        assert f["train/features/fc7"].chunks == (120, 4096)  # row blocks of <= 1 MiB
        assert f["train/features/pool5"].chunks == (120, 512)
        assert f["train/features/fc7"].compression is None
    # values: the same images through the same backbone, directly
    bb = get_backbone("vgg19", weights=vgg19_file, taps="fc6,fc7,pool5")
    cpu = torch.device("cpu")
    with torch.no_grad(), autocast(cpu, s.amp(cpu)):  # in the precision the bank ran in
        direct = bb(bb.preprocess(torch.from_numpy(npz["test_images"]), 32))
    for tap in bank.taps:
        X, y = bank.load("test", tap)
        assert X.dtype == np.float32
        np.testing.assert_allclose(X, direct[tap].float().numpy(), rtol=2e-3, atol=2e-3)


def test_multi_tap_equals_single_tap_runs(tmp_path, vgg19_file, npz):
    multi = _extract(tmp_path, vgg19_file, taps=["fc7", "pool5"])
    for tap in ("fc7", "pool5"):
        single = _extract(tmp_path, vgg19_file, name=f"{tap}.h5", taps=tap)
        assert single.taps == [tap]
        for split in ("train", "test"):
            np.testing.assert_array_equal(single.load(split, tap, dtype=None)[0],
                                          multi.load(split, tap, dtype=None)[0])


def test_cifar10_end_to_end(tmp_path, vgg19_file, cifar10):
    root, (train_x, train_y, test_x, test_y) = cifar10
    bank = extract("cifar10", data_root=root, weights=vgg19_file, taps="pool5", image_size=48,
                   dtype="float32", out=tmp_path / "c.h5", progress=False)
    assert bank.dataset.name == "cifar10" and bank.classes[0] == "airplane"
    assert bank.shape("train") == (200, 512) and bank.features("test").dtype == np.float32
    np.testing.assert_array_equal(bank.labels("train"), train_y)
    np.testing.assert_array_equal(bank.labels("test"), test_y)
    assert bank.spec.image_size == 48


def test_folder_skip_bad_records_the_skipped_files(tmp_path, vgg19_file):
    write_folder(tmp_path / "imgs", n_per_class=3)
    bad = tmp_path / "imgs" / "train" / "dog" / "000.jpg"
    bad.write_bytes(bad.read_bytes()[:100])
    kw = dict(dataset=f"folder:{tmp_path / 'imgs'}", taps="pool5", num_workers=0)
    with pytest.raises(DataError, match=r"cannot read image .*dog/000\.jpg"):
        _extract(tmp_path, vgg19_file, **kw)
    bank = _extract(tmp_path, vgg19_file, skip_bad=True, **kw)
    assert bank.num_rows("train") == 8 and bank.num_rows("test") == 9
    assert bank.skipped("train") == [str(bad)] and bank.skipped("test") == []
    assert 3 not in bank.index("train").tolist()
    np.testing.assert_array_equal(bank.labels("train"), [0, 0, 0, 1, 1, 2, 2, 2])
    assert bank.spec.resize == "shorter_side_center_crop"
    assert "1 unreadable images skipped" in bank.info()


def _start(tmp_path, vgg19_file, out):
    args = ["extract", "--dataset", f"npz:{tmp_path / 'd.npz'}", "--weights", str(vgg19_file),
            "--taps", "fc7,pool5", "--image-size", "32", "--batch-size", "16", "--out", str(out)]
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    # Ctrl-C as in a terminal: a job started in the background by a non-interactive shell (CI,
    # nohup ... &) inherits SIGINT ignored, and Python then raises no KeyboardInterrupt
    return args, subprocess.Popen([sys.executable, "-m", "featurebank", *args], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  preexec_fn=_default_sigint)


def _default_sigint():
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _wait_for_rows(proc, partial, more_than, timeout=120):
    deadline = time.time() + timeout
    while rows_done(partial, ("train", "test")) <= more_than:
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline
        time.sleep(0.05)


def test_killed_extraction_resumes_to_the_same_bank(tmp_path, vgg19_file):
    write_npz(tmp_path / "d.npz", n_train=300, n_test=60)
    args, ref = _start(tmp_path, vgg19_file, tmp_path / "ref.h5")
    assert ref.wait() == 0, ref.communicate()

    out = tmp_path / "b.h5"
    partial = tmp_path / "b.h5.partial"
    # Ctrl-C mid-extraction: a clean stop that keeps the rows written so far
    _, proc = _start(tmp_path, vgg19_file, out)
    _wait_for_rows(proc, partial, 32)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "rerun the same command to resume" in err
    first = rows_done(partial, ("train", "test"))
    assert 32 < first < 360 and not out.exists()
    # SIGKILL later on: no chance to clean up at all
    _, proc = _start(tmp_path, vgg19_file, out)
    _wait_for_rows(proc, partial, first + 48)
    proc.kill()
    proc.wait()
    assert not out.exists() and rows_done(partial, ("train", "test")) < 360
    # rerun: picks up where the killed run stopped, ends equal to the uninterrupted run
    _, proc = _start(tmp_path, vgg19_file, out)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "resuming" in err
    assert not partial.exists()
    a, b = FeatureBank(tmp_path / "ref.h5"), FeatureBank(out)
    assert a.fingerprint == b.fingerprint
    for split in ("train", "test"):
        np.testing.assert_array_equal(a.labels(split), b.labels(split))
        np.testing.assert_array_equal(a.index(split), b.index(split))
        for tap in ("fc7", "pool5"):
            np.testing.assert_array_equal(a.load(split, tap, dtype=None)[0],
                                          b.load(split, tap, dtype=None)[0])


def test_a_second_writer_fails_fast(tmp_path, npz):
    out = tmp_path / "b.h5"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(out) + '.lock'!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, str(os.getpid()).encode())\n"
        "print('locked', flush=True); time.sleep(60)")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        t = time.time()
        with pytest.raises(BankLockedError, match=rf"another extraction \(pid {holder.pid}\) "
                                                  rf"is writing .*b\.h5"):
            extract(f"npz:{tmp_path / 'd.npz'}", weights=None, out=out, progress=False)
        assert time.time() - t < 2  # refused before any model is built
    finally:
        holder.kill()
        holder.wait()


def test_an_existing_bank_is_up_to_date_or_needs_overwrite(tmp_path, vgg19_file, npz, capsys):
    bank = _extract(tmp_path, vgg19_file, taps="pool5")
    stamp = bank.path.stat().st_mtime_ns
    same = _extract(tmp_path, vgg19_file, taps="pool5", progress=True)  # the same arguments
    assert same.fingerprint == bank.fingerprint and bank.path.stat().st_mtime_ns == stamp
    assert "is up to date" in capsys.readouterr().err
    with pytest.raises(BankError, match=r"exists already, extracted with other arguments "
                                        r"\(fingerprint .*\); pass overwrite=True"):
        _extract(tmp_path, vgg19_file, taps="fc7")
    again = _extract(tmp_path, vgg19_file, taps="fc7", overwrite=True)
    assert again.taps == ["fc7"] and bank.path == again.path


def test_partial_of_other_arguments_is_not_mixed_in(tmp_path, vgg19_file, npz):
    partial = tmp_path / "b.h5.partial"
    with pytest.raises(BackboneError):
        _extract(tmp_path, vgg19_file, taps="nope")
    assert not partial.exists()  # nothing is created before the arguments are known good
    # leave an unfinished bank of pool5, then ask for fc7 at the same path
    bank = _extract(tmp_path, vgg19_file, taps="pool5")
    bank.path.rename(partial)
    with h5py.File(partial, "r+") as f:
        f.attrs.modify("complete", False)
    with pytest.raises(BankError, match=r"started with other arguments.*--no-resume"):
        _extract(tmp_path, vgg19_file, taps="fc7")
    assert _extract(tmp_path, vgg19_file, taps="fc7", resume=False).taps == ["fc7"]


def test_damaged_partial_is_recomputed_with_a_warning(tmp_path, vgg19_file, npz):
    (tmp_path / "b.h5.partial").write_bytes(b"half a file")
    with pytest.warns(UserWarning, match="cannot be read.*starting the extraction over"):
        bank = _extract(tmp_path, vgg19_file, taps="pool5")
    assert bank.num_rows("train") == 120


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(taps="fc9"), BackboneError, "unknown tap 'fc9' for model 'vgg19'"),
    (dict(model="vgg91"), BackboneError, "unknown model 'vgg91'"),
    (dict(dataset="cifar10", data_root="/nonexistent"), DataError,
     "CIFAR-10 was not found under data root '/nonexistent'"),
    (dict(image_size=0), ParameterError, "the 'image_size' parameter must be an int >= 8, got 0"),
    (dict(batch_size=-1), ParameterError, "the 'batch_size' parameter must be a positive int, "
                                          "got -1"),
    (dict(dtype="int8"), ParameterError, r"the 'dtype' parameter must be one of "
                                         r"\['float16', 'float32'\], got 'int8'"),
    (dict(device="tpu"), ParameterError, "the 'device' parameter must be 'auto', 'cpu', "
                                         "'cuda' or 'cuda:N', got 'tpu'"),
])
def test_bad_arguments(tmp_path, vgg19_file, npz, kwargs, error, message):
    with pytest.raises(error, match=message):
        _extract(tmp_path, vgg19_file, **kwargs)


def test_cudnn_picks_the_same_algorithms_in_every_process(tmp_path, vgg19_file, npz,
                                                          monkeypatch):
    # a resumed extraction must compute what an uninterrupted one would: cuDNN choosing its
    # algorithms by timing (benchmark mode) could choose others in another process. The
    # caller's settings are back afterwards.
    extract_module = sys.modules["featurebank.extraction"]
    seen = []

    def recording_backbone(*args, **kwargs):
        bb = get_backbone(*args, **kwargs)
        bb.register_forward_pre_hook(lambda m, x: seen.append(
            (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)))
        return bb

    monkeypatch.setattr(extract_module, "get_backbone", recording_backbone)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", False)
    _extract(tmp_path, vgg19_file)
    batches = seen[1:]  # the first forward is the shape probe, before extraction proper
    assert batches and set(batches) == {(False, True)}
    assert (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic) == (True, False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the error on a machine without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error(tmp_path, vgg19_file, npz):
    with pytest.raises(FeatureBankError, match="device='cuda'.*no CUDA GPU"):
        _extract(tmp_path, vgg19_file, device="cuda")


def test_wrong_architecture_weights_file(tmp_path, npz):
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r.pth")
    with pytest.raises(BackboneError, match=r"r\.pth' does not fit model 'vgg19'"):
        extract(f"npz:{tmp_path / 'd.npz'}", weights=tmp_path / "r.pth", progress=False,
                out=tmp_path / "b.h5")


def test_cli_extract_info_and_errors(tmp_path, vgg19_file, npz, capsys):
    from featurebank.cli import main

    out = tmp_path / "cli.h5"
    proc = run_cli("extract", "--dataset", f"npz:{tmp_path / 'd.npz'}", "--weights",
                   str(vgg19_file), "--taps", "pool5", "--image-size", "32", "--out", str(out))
    assert f"wrote {out}" in proc.stdout and "img/s" in proc.stderr
    assert main(["info", str(out)]) == 0
    info = capsys.readouterr().out
    for needle in ("model         vgg19", "pool5", "-> 512 float16", "train        120 rows",
                   "test         40 rows", "fingerprint", "torch 2."):
        assert needle in info
    assert main(["extract", "--dataset", "cifar10", "--data-root", str(tmp_path / "none"),
                 "--weights", str(vgg19_file), "--out", str(tmp_path / "x.h5")]) == 2
    err = capsys.readouterr().err
    assert "featurebank extract: error: CIFAR-10 was not found under data root" in err
    with pytest.raises(SystemExit) as e:
        main(["extract", "--model", "vgg91"])
    assert e.value.code == 2 and "unknown model 'vgg91'" in capsys.readouterr().err
    assert main(["info", str(tmp_path / "missing.h5")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_extract_writes_no_lock_or_partial_files_when_done(tmp_path, vgg19_file, npz):
    _extract(tmp_path, vgg19_file, taps="pool5")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.h5", "d.npz"]
    json.loads(h5py.File(tmp_path / "b.h5", "r").attrs["spec"])


@pytest.fixture
def small_disk(tmp_path):
    """A 512 KiB tmpfs (needs root, as on the dev and CI machines), resized with grow(size)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mnt)],
                           capture_output=True, text=True)
    if mount.returncode != 0:
        pytest.skip(f"a full disk is made with a small tmpfs, and mounting one is not "
                    f"permitted here: {mount.stderr.strip()}")

    def grow(size):
        subprocess.run(["mount", "-o", f"remount,size={size}", str(mnt)], check=True)

    yield mnt, grow
    subprocess.run(["umount", str(mnt)], check=True)


def test_a_full_disk_is_a_clear_error_and_the_rerun_resumes(tmp_path, small_disk):
    # It used to end in a segmentation fault (exit -11): HDF5 kept the rows it could not
    # write in its chunk cache and failed again while the interpreter shut down.
    mnt, grow = small_disk
    write_npz(tmp_path / "d.npz", n_train=400, n_test=40)
    args = ["--dataset", f"npz:{tmp_path / 'd.npz'}", "--model", "resnet18", "--weights",
            "none", "--image-size", "32", "--dtype", "float32", "--batch-size", "32", "-q"]
    ref = extract(f"npz:{tmp_path / 'd.npz'}", model="resnet18", weights="none", image_size=32,
                  dtype="float32", batch_size=32, out=tmp_path / "ref.h5", progress=False)
    out = mnt / "b.h5"
    full = run_cli("extract", *args, "--out", str(out), check=False)  # 440 x 2 KiB rows > 512 KiB
    assert full.returncode == 2, full.stderr
    assert "Traceback" not in full.stderr
    assert re.search(r"featurebank extract: error: no space left on device while writing "
                     r"'.*b\.h5\.partial': the \d+ rows written so far are kept there; free "
                     r"space \(about .* more is needed\) and rerun the same command to resume",
                     full.stderr), full.stderr
    kept = int(re.search(r"the (\d+) rows", full.stderr).group(1))
    assert 0 < kept < 440 and not out.exists()
    grow("4m")
    again = run_cli("extract", *args, "--out", str(out))
    assert not (mnt / "b.h5.partial").exists()
    bank = FeatureBank(out)
    for split in ("train", "test"):
        np.testing.assert_array_equal(bank.load(split)[0], ref.load(split)[0])
        np.testing.assert_array_equal(bank.index(split), ref.index(split))
    assert again.returncode == 0


def test_a_read_only_output_folder_is_a_clear_error(tmp_path, npz):
    ro = Path(tempfile.mkdtemp())  # under /tmp, so that uid nobody can reach it
    try:
        ro.chmod(0o555)
        rc, err = as_unprivileged(["extract", "--dataset", f"npz:{tmp_path / 'd.npz'}",
                                    "--out", str(ro / "b.h5"), "-q"])
        assert rc == 2, err
        assert "Traceback" not in err
        assert re.search(r"error: cannot write to the folder of '.*b\.h5' \(Permission denied: "
                         r".*b\.h5\.lock\); choose a writable out= path \(--out\), or make the "
                         r"folder writable\.", err), err
        assert os.listdir(ro) == []
    finally:
        ro.chmod(0o755)
        shutil.rmtree(ro)


@pytest.mark.parametrize("option, value, says", [
    ("batch_size", 0, "a positive int"), ("image_size", 4, "an int >= 8"),
    ("num_workers", -1, "an int >= 0"),
])
def test_numeric_arguments_out_of_range_are_refused(tmp_path, npz, option, value, says):
    # batch_size=0 used to mean "the default" (batch_size or 64)
    with pytest.raises(ParameterError, match=rf"the '{option}' parameter must be {says}, got "
                                             rf"{value}\."):
        extract(f"npz:{tmp_path / 'd.npz'}", weights=None, out=tmp_path / "b.h5",
                progress=False, **{option: value})
    flag = f"--{option.replace('_', '-')}"
    proc = run_cli("extract", "--dataset", f"npz:{tmp_path / 'd.npz'}", flag, str(value),
                   check=False)
    assert proc.returncode == 2
    names = "--workers/--num-workers" if option == "num_workers" else flag
    assert f"featurebank extract: error: argument {names}: must be {says}, got {value}" in \
        proc.stderr
    assert not list(tmp_path.glob("b.h5*"))


def test_a_cpu_with_native_bfloat16_extracts_in_bfloat16_and_says_so(tmp_path, npz,
                                                                     monkeypatch):
    import featurebank._io as io_
    from featurebank import load_model
    from featurebank.heads import LogisticHead, save_head

    kw = dict(model="resnet18", weights="none", image_size=32, dtype="float32")
    assert isinstance(io_.cpu_has_bf16(), bool)  # what torch says of this CPU
    monkeypatch.setattr(io_, "cpu_has_bf16", lambda: False)  # an AVX2 CPU: float32
    plain = _extract(tmp_path, None, "fp32.h5", **kw)
    assert plain.spec.autocast is None and "autocast" not in plain.spec.to_json()
    monkeypatch.setattr(io_, "cpu_has_bf16", lambda: True)  # AMX or AVX512-BF16
    fast = _extract(tmp_path, None, "bf16.h5", **kw)
    off = _extract(tmp_path, None, "off.h5", amp="off", **kw)
    assert fast.spec.autocast == "bfloat16" and off.spec.autocast is None
    assert "forward passes in bfloat16" in fast.info()
    assert fast.fingerprint == plain.fingerprint  # where it ran, not what was asked
    X32, X16 = plain.load("test")[0], fast.load("test")[0]
    np.testing.assert_array_equal(off.load("test")[0], X32)
    assert not np.array_equal(X16, X32)  # computed in bfloat16 ...
    assert np.abs(X16 - X32).max() <= 0.05 * np.abs(X32).max()  # ... close to float32
    # a head of the bfloat16 bank predicts from features computed as the bank's were
    X, y = fast.load("train")
    save_head(LogisticHead(C=0.1).fit(X, y), tmp_path / "h.joblib", bank=fast,
              tap=fast.taps[0])
    model = load_model(tmp_path / "h.joblib")
    assert model.amp == torch.bfloat16
    np.testing.assert_allclose(model.predict_proba(npz["test_images"]),
                               model.estimator.predict_proba(X16), atol=1e-4)
    monkeypatch.setattr(io_, "cpu_has_bf16", lambda: False)
    assert load_model(tmp_path / "h.joblib").amp is None  # not emulated where it is slow
