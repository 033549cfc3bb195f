"""Fine-tune on a tiny learnable task: a seeded random ResNet-18 at 32 px, a few hundred images."""

import json
from pathlib import Path
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch


from conftest import REPO, _images
from featurebank import Callback, DataError, FinetuneError, extract, finetune, fit_heads
from featurebank.records import BankSpec
from featurebank.finetuning.augment import random_crop_flip

KW = dict(epochs=3, batch_size=32, lr=3e-3, patience=5, progress=False, handoff_samples=128)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """npz images whose class is their dominant colour; bank; fitted logistic head."""
    tmp = tmp_path_factory.mktemp("ft")
    rng = np.random.default_rng(0)
    n = 240
    y = rng.integers(0, 3, n)
    X = (_images(rng, n, size=24).astype(np.int16) // 2).astype(np.uint8)
    for c in range(3):
        X[y == c, :, :, c] += 90  # learnable from colour, not trivially by a random net
    yt = rng.integers(0, 3, 60)
    Xt = (_images(rng, 60, size=24).astype(np.int16) // 2).astype(np.uint8)
    for c in range(3):
        Xt[yt == c, :, :, c] += 90
    np.savez(tmp / "d.npz", train_images=X, train_labels=y, test_images=Xt, test_labels=yt,
             classes=np.array(["red", "green", "blue"]))
    bank = extract(f"npz:{tmp / 'd.npz'}", model="resnet18", weights="none", image_size=32,
                   dtype="float32", out=tmp / "bank.h5", progress=False)
    fit_heads(bank, heads=["logreg", "knn"], out=tmp / "runs", progress=False)
    return tmp, bank


def test_handoff_training_and_outputs(setup, tmp_path):
    tmp, bank = setup
    summary = finetune(bank, runs=tmp / "runs", out=tmp_path / "ft", **KW)
    assert summary["handoff_agreement"] >= 0.99 and summary["handoff_images"] == 128
    assert not summary["diverged"]
    assert summary["handoff_logit_gap"] < 0.01
    history = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    assert [r["epoch"] for r in history] == [0, 1, 2, 3]
    assert min(r["val_loss"] for r in history[1:]) < history[0]["val_loss"]  # it learns
    assert summary["best_val_accuracy"] >= history[0]["val_accuracy"]
    assert summary["head_test_accuracy"] is not None and summary["test_accuracy"] is not None
    state = torch.load(tmp_path / "ft" / "best_model.pt", weights_only=True)
    assert any(k.startswith("backbone.model.layer4") for k in state)
    assert {"head.0.mean", "head.0.scale", "head.1.weight"} <= set(state)
    prov = json.loads((tmp_path / "ft" / "best_model.json").read_text())
    assert prov["bank_fingerprint"] == bank.fingerprint and prov["tap"] == "penultimate"
    assert (tmp_path / "ft" / "metrics.csv").read_text().startswith("epoch,")
    # the validation rows are those the head was selected on, never trained on
    val = np.load(tmp / "runs" / "split.npz")["val_rows"]
    assert summary["best_epoch"] >= 1 and len(val) == 24


def test_progress_shows_a_bar_per_epoch_and_quiet_shows_nothing(setup, tmp_path, capsys):
    tmp, bank = setup
    finetune(bank, runs=tmp / "runs", out=tmp_path / "ft", **{**KW, "epochs": 1,
                                                              "progress": True})
    err = capsys.readouterr().err
    assert "train epoch 1/1" in err and "img/s" in err  # the step bar (rate, ETA)
    assert "hand-off agreement" in err and "epoch 1/1: train loss" in err  # the epoch log
    finetune(bank, runs=tmp / "runs", out=tmp_path / "quiet", **{**KW, "epochs": 1})
    assert capsys.readouterr().err == ""


def test_early_stopping_keeps_the_grafted_head_when_training_only_hurts(setup, tmp_path):
    tmp, bank = setup
    # a learning rate that wrecks the network: validation loss is worse than at epoch 0
    summary = finetune(bank, runs=tmp / "runs", out=tmp_path / "ft",
                       **{**KW, "epochs": 8, "patience": 2, "lr": 5.0, "backbone_lr_ratio": 1.0,
                          "warmup_epochs": 0})
    assert summary["stopped_early"] and summary["epochs_run"] == 2
    assert summary["best_epoch"] == 0 and summary["diverged"]  # lr=5: the loss explodes
    history = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    assert not any(r["val_loss"] < history[0]["val_loss"] for r in history[1:])  # or NaN
    # the weights restored at the end are the grafted head's: test accuracy is the head's
    assert summary["test_accuracy"] == pytest.approx(summary["head_test_accuracy"], abs=0.02)


def test_augment_is_a_padded_random_crop_and_flip():
    x = torch.randint(0, 256, (6, 16, 16, 3), dtype=torch.uint8)
    out = random_crop_flip(x, torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)
    oy, ox = torch.randint(0, 5, (6,), generator=g), torch.randint(0, 5, (6,), generator=g)
    flip = torch.rand(6, generator=g) < 0.5
    padded = torch.nn.functional.pad(x, (0, 0, 2, 2, 2, 2))
    for i in range(6):
        crop = padded[i, oy[i]:oy[i] + 16, ox[i]:ox[i] + 16]
        assert torch.equal(out[i], crop.flip(1) if flip[i] else crop)
    assert out.dtype == torch.uint8 and flip.any() and not flip.all()


class _Killed(Exception):
    pass


class _KillAfterCheckpoint(Callback):
    """Make the run die right after its n-th checkpoint reaches the disk."""

    def __init__(self, n):
        self.n = n

    def on_checkpoint(self, trainer, path):
        self.n -= 1
        if self.n == 0:
            raise _Killed


class _KillAtStep(Callback):
    """Make the run die as it starts its n-th training step (between checkpoints)."""

    def __init__(self, n):
        self.n = n

    def on_step_begin(self, trainer):
        self.n -= 1
        if self.n == 0:
            raise _Killed


@pytest.mark.parametrize("Kill, n, where", [(_KillAtStep, 6, "mid-epoch"),
                                             (_KillAfterCheckpoint, 4, "epoch boundary")])
def test_resume_gives_the_same_result(setup, tmp_path, Kill, n, where):
    # 216 train rows / 32 = 7 steps per epoch; a checkpoint every 2 steps and at each epoch end.
    # Dying at step 6 of epoch 1 leaves the checkpoint of step 4 (steps 5-6 are redone); the
    # 4th checkpoint is the one at the end of epoch 1.
    tmp, bank = setup
    kw = {**KW, "checkpoint_every": 2, "epochs": 2}
    ref = finetune(bank, runs=tmp / "runs", out=tmp_path / "ref", **kw)
    with pytest.raises(_Killed):
        finetune(bank, runs=tmp / "runs", out=tmp_path / "ft", callbacks=[Kill(n)], **kw)
    ckpt = torch.load(tmp_path / "ft" / "checkpoint.pt", weights_only=True)
    assert (ckpt["state"]["step"], ckpt["state"]["epoch"]) == ((4, 0) if where == "mid-epoch"
                                                               else (0, 1))
    with pytest.raises(FinetuneError, match="exists: pass resume=True"):
        finetune(bank, runs=tmp / "runs", out=tmp_path / "ft", **kw)
    got = finetune(bank, runs=tmp / "runs", out=tmp_path / "ft", resume=True, **kw)
    _assert_same_run(tmp_path / "ref", tmp_path / "ft")
    assert got["test_accuracy"] == ref["test_accuracy"]


def _assert_same_run(a_dir, b_dir):
    a = torch.load(a_dir / "best_model.pt", weights_only=True)
    b = torch.load(b_dir / "best_model.pt", weights_only=True)
    for k in a:
        assert torch.equal(a[k], b[k]), k

    def metrics(d):
        return [{k: v for k, v in r.items() if k != "seconds"}
                for r in json.loads((d / "metrics.json").read_text())]

    assert metrics(a_dir) == metrics(b_dir)


def test_sigkilled_cli_run_resumes_to_the_same_result(setup, tmp_path):
    tmp, bank = setup
    args = [sys.executable, str(REPO / "scripts" / "finetune.py"), "--bank", str(bank.path),
            "--runs", str(tmp / "runs"), "--epochs", "2", "--batch-size", "32",
            "--checkpoint-every", "1", "-q"]
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    ref = subprocess.run([*args, "--out", str(tmp_path / "ref")], env=env, timeout=600,
                         capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr
    proc = subprocess.Popen([*args, "--out", str(tmp_path / "ft")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt, deadline = tmp_path / "ft" / "checkpoint.pt", time.time() + 300
    while not (ckpt.exists() and torch.load(ckpt, weights_only=True)["state"]["step"] >= 3):
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = subprocess.run([*args, "--out", str(tmp_path / "ft"), "--resume"], env=env,
                          timeout=600, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    _assert_same_run(tmp_path / "ref", tmp_path / "ft")


def test_bad_checkpoints_and_heads(setup, tmp_path):
    tmp, bank = setup
    out = tmp_path / "ft"
    with pytest.raises(FinetuneError, match="no checkpoint"):
        finetune(bank, runs=tmp / "runs", out=out, resume=True, **KW)
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"garbage")
    with pytest.raises(FinetuneError, match="is damaged.*delete it to start over"):
        finetune(bank, runs=tmp / "runs", out=out, resume=True, **KW)
    finetune(bank, runs=tmp / "runs", out=tmp_path / "ok", **{**KW, "epochs": 1})
    with pytest.raises(FinetuneError, match=r"belongs to another fine-tune \(epochs: "
                                            r"checkpoint 1, now 3"):
        finetune(bank, runs=tmp / "runs", out=tmp_path / "ok", resume=True, **KW)
    with pytest.raises(FinetuneError, match="exactly one of head="):
        finetune(bank, out=out, **KW)
    other = extract(f"npz:{tmp / 'd.npz'}", model="resnet18", weights="none", image_size=40,
                    dtype="float32", out=tmp_path / "other.h5", progress=False)
    from featurebank import HeadError

    with pytest.raises(HeadError, match="fitted on another feature bank"):
        finetune(other, runs=tmp / "runs", out=tmp_path / "x", **KW)
    with pytest.raises(FinetuneError, match="freeze_until='nope' names no module"):
        finetune(bank, runs=tmp / "runs", out=tmp_path / "y", freeze_until="nope", **KW)


def test_handoff_refuses_a_different_network(setup, tmp_path, monkeypatch):
    tmp, bank = setup
    real = BankSpec.rebuild_backbone

    def other_weights(spec, tap, **kw):
        bb = real(spec, tap, **kw)
        with torch.no_grad():
            for p in bb.parameters():
                p.mul_(-1.3)
        return bb

    monkeypatch.setattr(BankSpec, "rebuild_backbone", other_weights)
    with pytest.raises(FinetuneError, match=r"agrees with the head on only .* of 128 images"):
        finetune(bank, runs=tmp / "runs", out=tmp_path / "ft", **KW)


def test_moved_data_is_refused_and_found_with_data_root(setup, tmp_path):
    tmp, bank = setup
    moved = tmp_path / "moved.npz"
    moved.write_bytes((tmp / "d.npz").read_bytes())
    (tmp / "d.npz").rename(tmp / "d.npz.away")
    try:
        # the message names the fix, in the command line's spelling
        with pytest.raises(DataError, match=r"d\.npz' \(npz\), which does not exist any more\. "
                                            r"If they moved, pass --data-root NEW_PATH"):
            finetune(bank, runs=tmp / "runs", out=tmp_path / "a", **KW)
        s = finetune(bank, runs=tmp / "runs", out=tmp_path / "b", data_root=moved,
                     **{**KW, "epochs": 1})
        assert s["handoff_agreement"] >= 0.99
    finally:
        (tmp / "d.npz.away").rename(tmp / "d.npz")


def test_wrapper_script_runs(setup, tmp_path):
    tmp, bank = setup
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "finetune.py"), "--bank", str(bank.path),
         "--head", str(tmp / "runs" / "logreg.joblib"), "--epochs", "1", "--batch-size", "32",
         "--out", str(tmp_path / "ft"), "--freeze-until", "layer3"],
        capture_output=True, text=True, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "hand-off agreement: 100.0% of" in proc.stderr or "hand-off agreement: 99" in \
        proc.stderr
    assert "fine-tuned" in proc.stdout and (tmp_path / "ft" / "summary.json").is_file()
    assert (proc.stdout + proc.stderr).count("head test accuracy") == 1  # the result, once


def test_folder_images_decode_in_worker_processes_to_the_same_run(tmp_path):
    from conftest import write_folder

    write_folder(tmp_path / "imgs", n_per_class=10)
    bank = extract(f"folder:{tmp_path / 'imgs'}", model="resnet18", weights="none",
                   image_size=32, out=tmp_path / "b.h5", progress=False, dtype="float32")
    fit_heads(bank, heads=["logreg"], out=tmp_path / "runs", progress=False, val_fraction=0.3)
    kw = dict(epochs=2, batch_size=8, progress=False, handoff_samples=16)
    finetune(bank, runs=tmp_path / "runs", out=tmp_path / "inline", workers=0, **kw)
    finetune(bank, runs=tmp_path / "runs", out=tmp_path / "workers", workers=2, **kw)
    _assert_same_run(tmp_path / "inline", tmp_path / "workers")


def test_a_gpu_decoded_bank_decodes_its_files_on_the_training_device(tmp_path):
    # A `--decode gpu` bank: the workers only read the files and the JPEGs are decoded on the
    # fine-tune's device (here the CPU, which the same code path takes): the images the
    # inline reader gives, and an unreadable file is a clear error.
    import dataclasses

    from conftest import write_folder
    from featurebank.data import reopen_source
    from featurebank.finetuning.loop import BankImages

    write_folder(tmp_path / "imgs", n_per_class=6)
    bank = extract(f"folder:{tmp_path / 'imgs'}", model="resnet18", weights="none",
                   image_size=32, out=tmp_path / "b.h5", progress=False, decode="tensor")
    images = BankImages(reopen_source(bank.dataset), bank, lambda x, s: x, torch.device("cpu"))
    images.decoding = dataclasses.replace(images.decoding, decoder="gpu")
    batches = [np.array([0, 3, 5]), np.array([1, 2])]
    streamed = list(images.stream(batches, "train", workers=1))
    for rows, x in zip(batches, streamed):
        assert x.dtype == torch.uint8 and x.shape == (len(rows), 32, 32, 3)
        inline = torch.from_numpy(images.uint8(rows, "train"))  # the bank's CPU read-back
        assert int((x.int() - inline.int()).abs().max()) <= 2
    first = images.source.splits["train"].encoded(int(images.index["train"][0]))
    Path(first).write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="cannot read image"):
        list(images.stream(batches, "train", workers=1))


def test_divergence_is_judged_against_the_grafted_head_and_epoch_0_is_reported(setup,
                                                                               tmp_path):
    from featurebank import Callback

    tmp, bank = setup

    class Watch(Callback):
        epochs: list = []

        def on_step_begin(self, trainer):
            # as if the first step had already jumped far: its loss cannot be the yardstick
            trainer.state["start_loss"] = 1e12

        def on_epoch_end(self, trainer, row):
            self.epochs.append(row["epoch"])

    watch = Watch()
    summary = finetune(bank, runs=tmp / "runs", out=tmp_path / "ft", callbacks=[watch],
                       **{**KW, "epochs": 2, "patience": 5, "lr": 5.0,
                          "backbone_lr_ratio": 1.0, "warmup_epochs": 0})
    assert summary["diverged"] and watch.epochs == [0, 1, 2]


def test_keep_and_the_rerun_rule(setup, tmp_path, capsys):
    from featurebank.cli import main

    tmp, bank = setup
    kw = {**KW, "epochs": 2, "patience": 5}
    first = finetune(bank, runs=tmp / "runs", out=tmp_path / "ft", keep="best", **kw)
    assert first["kept"] == ["best_model.pt"] and not (tmp_path / "ft" / "checkpoint.pt").exists()
    before = (tmp_path / "ft" / "best_model.pt").stat().st_mtime_ns
    again = finetune(bank, runs=tmp / "runs", out=tmp_path / "ft", keep="best", **kw)
    assert again == first  # up to date: nothing trained, nothing rewritten
    assert (tmp_path / "ft" / "best_model.pt").stat().st_mtime_ns == before
    with pytest.raises(FinetuneError, match=r"holds a finished fine-tune of other settings "
                                            r"\(lr: finished 0.003, now 0.5\); pass "
                                            r"overwrite=True \(--overwrite\)"):
        finetune(bank, runs=tmp / "runs", out=tmp_path / "ft", **{**kw, "lr": 0.5})
    every = finetune(bank, runs=tmp / "runs", out=tmp_path / "ft", overwrite=True, keep="all",
                     **{**kw, "lr": 0.5})
    assert every["kept"] == ["best_model.pt", "checkpoint-epoch001.pt", "checkpoint-epoch002.pt",
                             "checkpoint.pt"]
    # the bank as every other command takes it: positional (--bank still works)
    argv = ["finetune", str(bank.path), "--runs", str(tmp / "runs"), "--out",
            str(tmp_path / "ft"), "--lr", "0.5", "--epochs", "2", "--patience", "5",
            "--batch-size", str(KW["batch_size"]), "--handoff-samples",
            str(KW["handoff_samples"]), "--keep", "all"]
    assert main(argv) == 0 and "is up to date" in capsys.readouterr().err
    assert main([*argv[:2], "--bank", str(tmp_path / "other.h5"), *argv[2:]]) == 2
    assert "two banks were given" in capsys.readouterr().err
