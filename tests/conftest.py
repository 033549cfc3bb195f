"""Shared fixtures: tiny datasets written in the real on-disk formats, and a VGG19 weights file.

Nothing here touches the network. CIFAR pickles are written in the ``cifar-10-batches-py`` /
``cifar-100-python`` layouts and read through ``torchvision.datasets`` exactly as a real copy
is; only the md5 sums torchvision checks are swapped for those of the generated files, inside
the tests (``cifar_checksums``), so a real user's copy is still verified.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck"]


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _images(rng: np.random.Generator, n: int, size: int = 32) -> np.ndarray:
    """Smooth random images (so resizing is meaningful) as uint8 (N, H, W, 3)."""
    low = rng.integers(0, 256, (n, 3, 4, 4)).astype(np.float32)
    x = torch.nn.functional.interpolate(torch.from_numpy(low), size=(size, size),
                                        mode="bilinear", align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def write_cifar10(root: Path, n_per_batch: int = 40, n_test: int = 50, seed: int = 0):
    """Write ``root/cifar-10-batches-py``; return (train images, train labels, test ...)."""
    rng = np.random.default_rng(seed)
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    train_x, train_y = [], []
    for b in range(1, 6):
        x, y = _images(rng, n_per_batch), rng.integers(0, 10, n_per_batch).tolist()
        with open(d / f"data_batch_{b}", "wb") as f:
            pickle.dump({"batch_label": f"training batch {b} of 5", "labels": y,
                         "data": x.transpose(0, 3, 1, 2).reshape(len(x), -1),
                         "filenames": [f"img_{b}_{i}.png" for i in range(len(x))]}, f)
        train_x.append(x), train_y.extend(y)
    test_x, test_y = _images(rng, n_test), rng.integers(0, 10, n_test).tolist()
    with open(d / "test_batch", "wb") as f:
        pickle.dump({"batch_label": "testing batch 1 of 1", "labels": test_y,
                     "data": test_x.transpose(0, 3, 1, 2).reshape(n_test, -1)}, f)
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({"label_names": CIFAR10_CLASSES, "num_cases_per_batch": n_per_batch,
                     "num_vis": 3072}, f)
    return np.concatenate(train_x), np.array(train_y), test_x, np.array(test_y)


def write_cifar100(root: Path, n_train: int = 60, n_test: int = 20, seed: int = 1):
    rng = np.random.default_rng(seed)
    d = root / "cifar-100-python"
    d.mkdir(parents=True)
    out = []
    for name, n in (("train", n_train), ("test", n_test)):
        x, y = _images(rng, n), rng.integers(0, 100, n).tolist()
        with open(d / name, "wb") as f:
            pickle.dump({"data": x.transpose(0, 3, 1, 2).reshape(n, -1), "fine_labels": y,
                         "coarse_labels": [v // 5 for v in y]}, f)
        out += [x, np.array(y)]
    with open(d / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"class_{i:03d}" for i in range(100)],
                     "coarse_label_names": [f"super_{i}" for i in range(20)]}, f)
    return out


@pytest.fixture
def cifar_checksums(monkeypatch):
    """Make torchvision's CIFAR classes accept the generated files' md5 sums (tests only)."""
    import torchvision.datasets as tvd

    def patch(root: Path):
        for cls, folder in ((tvd.CIFAR10, "cifar-10-batches-py"),
                            (tvd.CIFAR100, "cifar-100-python")):
            d = root / folder
            if not d.is_dir():
                continue
            for attr in ("train_list", "test_list"):
                monkeypatch.setattr(cls, attr, [[n, _md5(d / n)] for n, _ in getattr(cls, attr)])
            monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": _md5(d / cls.meta["filename"])})

    return patch


@pytest.fixture
def cifar10(tmp_path, cifar_checksums):
    arrays = write_cifar10(tmp_path / "cifar")
    cifar_checksums(tmp_path / "cifar")
    return tmp_path / "cifar", arrays


def write_folder(root: Path, *, splits=("train", "test"), classes=("cat", "dog", "emu"),
                 n_per_class: int = 4, seed: int = 0) -> dict[str, list[tuple[Path, int]]]:
    """Class sub-folders of JPEG and PNG files of varied sizes."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = {}
    for split in splits:
        base = root / split if split else root
        samples = []
        for label, cls in enumerate(classes):
            (base / cls).mkdir(parents=True)
            for i in range(n_per_class):
                h, w = int(rng.integers(20, 48)), int(rng.integers(20, 48))
                img = Image.fromarray(_images(rng, 1, size=max(h, w))[0][:h, :w])
                path = base / cls / f"{i:03d}.{'png' if i % 2 else 'jpg'}"
                img.save(path)
                samples.append((path, label))
        out[split or "train"] = samples
    return out


def write_npz(path: Path, n_train: int = 120, n_test: int = 40, seed: int = 0,
              **extra) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {"train_images": _images(rng, n_train), "train_labels": rng.integers(0, 4, n_train),
              "test_images": _images(rng, n_test), "test_labels": rng.integers(0, 4, n_test),
              "classes": np.array(["a", "b", "c", "d"]), **extra}
    np.savez(path, **arrays)
    return arrays


@pytest.fixture(scope="session")
def vgg19_file(tmp_path_factory) -> Path:
    """A random-init VGG19 state_dict, written once: loading it skips the slow random init."""
    import torchvision

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "vgg19_random.pth"
    torch.save(torchvision.models.vgg19(weights=None).state_dict(), path)
    return path


def run_cli(*args: str, cwd: Path | None = None, check: bool = True, capsys=None,
            **kwargs) -> subprocess.CompletedProcess:
    """``python -m featurebank ARGS`` in a subprocess, as a user runs it; or, given pytest's
    ``capsys``, ``featurebank.cli.main(ARGS)`` in this process (the same code, without an
    interpreter start and torch import per command: seconds each on 2 cores)."""
    if capsys is not None:
        from featurebank.cli import main

        assert cwd is None and not kwargs, "in process: absolute paths, no subprocess options"
        capsys.readouterr()
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:  # argparse's usage errors
            code = e.code
        out = capsys.readouterr()
        proc = subprocess.CompletedProcess(["featurebank", *args], code, out.out, out.err)
    else:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        proc = subprocess.run([sys.executable, "-m", "featurebank", *args], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=600, **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(f"featurebank {args} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def as_unprivileged(argv):
    """``featurebank ARGV`` in a forked child that cannot write where root could: uid
    ``nobody`` when the tests run as root. Returns (exit code, stderr)."""
    from featurebank.cli import main

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no torch work happens before the error under test
        os.close(r)
        sys.stderr = os.fdopen(w, "w")  # not pytest's capture: the parent reads it
        rc = 70
        try:
            if os.geteuid() == 0:
                os.setgid(65534)
                os.setuid(65534)
            rc = main(argv)
        finally:
            sys.stderr.flush()
            os._exit(rc)
    os.close(w)
    with os.fdopen(r) as f:
        err = f.read()
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), err


def write_wds(folder: Path, samples: dict[str, list[tuple[Path, int]]], *, per_shard: int = 5,
              classes=("cat", "dog", "emu"), label: str = "cls") -> dict[str, str]:
    """WebDataset tar shards of the images ``samples`` (split -> [(file, label)]), the file's
    own bytes as ``KEY.jpg``/``KEY.png`` and the label as ``KEY.cls`` (or ``KEY.json`` with
    ``{"label": NAME}``), ``per_shard`` samples a shard, ``classes.txt`` beside; returns the
    brace pattern of each split."""
    import io
    import json
    import tarfile

    folder.mkdir(parents=True, exist_ok=True)
    patterns = {}
    for split, items in samples.items():
        chunks = [items[i:i + per_shard] for i in range(0, len(items), per_shard)]
        for n, chunk in enumerate(chunks):
            with tarfile.open(folder / f"{split}-{n:06d}.tar", "w") as tf:
                for i, (path, y) in enumerate(chunk):
                    key = f"{split}{n:03d}{i:03d}"
                    meta = (f"{key}.cls", str(y).encode()) if label == "cls" else (
                        f"{key}.json", json.dumps({"label": classes[y]}).encode())
                    for name, data in ((f"{key}{path.suffix}", path.read_bytes()), meta):
                        info = tarfile.TarInfo(name)
                        info.size = len(data)
                        tf.addfile(info, io.BytesIO(data))
        patterns[split] = str(folder / f"{split}-{{000000..{len(chunks) - 1:06d}}}.tar")
    (folder / "classes.txt").write_text("\n".join(classes) + "\n")
    return patterns


def write_csv(path: Path, samples: dict[str, list[tuple[Path, int]]],
              classes=("cat", "dog", "emu")) -> Path:
    """``path,label,split`` rows (paths relative to the CSV's folder, labels as names)."""
    import csv
    import os

    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split"])
        for split, items in samples.items():
            for file, y in items:
                w.writerow([os.path.relpath(file, path.parent), classes[y], split])
    return path


def hf_dataset(samples: dict[str, list[tuple[Path, int]]], classes=("cat", "dog", "emu")):
    """A ``datasets.DatasetDict`` of the images' bytes (an ``Image`` feature) and labels (a
    ``ClassLabel``), one split per split."""
    datasets = pytest.importorskip("datasets")  # the [dev] extra installs it
    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=list(classes))})
    return datasets.DatasetDict({
        split: datasets.Dataset.from_dict(
            {"image": [{"bytes": p.read_bytes(), "path": None} for p, _ in items],
             "label": [y for _, y in items]}, features=features)
        for split, items in samples.items()})


def blobs(n: int, d: int = 32, n_classes: int = 3, seed: int = 0, spread: float = 1.5):
    """ReLU-like features with class structure: (X float32 (n, d), y int64)."""
    centers = np.random.default_rng(1234).standard_normal((n_classes, d)) * spread
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    X = np.maximum(centers[y] + rng.standard_normal((n, d)), 0) * 3 + 0.5
    return X.astype(np.float32), y


def write_feature_bank(path: Path, *, n_train: int = 300, n_test: int = 100, d: int = 32,
                       n_classes: int = 3, seed: int = 0, tap: str = "fc7",
                       dtype: str = "float32", source: str = "synthetic",
                       taps: tuple[str, ...] | None = None):
    """A complete bank of blob features, written by the real writer (no backbone needed).

    With ``taps``, each tap after the first holds a different view of the same rows: the
    features with a fixed random rotation and less class signal (noise added)."""
    from featurebank import FeatureBank
    from featurebank.bank import BankWriter
    from featurebank.records import BankSpec, DatasetInfo

    taps = tuple(taps or (tap,))
    spec = {"model": "toy", "weights": "none", "weights_path": None, "taps": list(taps),
            "tap_layers": {t: {"module": t, "where": "output", "activation_shape": [d],
                               "pool": "none", "dim": d} for t in taps},
            "image_size": 8, "resize": "device", "interpolation": "bilinear",
            "antialias": True, "mean": [0.5] * 3, "std": [0.25] * 3,
            "preprocessing_source": "test", "dtype": dtype}
    data = {"train": blobs(n_train, d, n_classes, seed), "test": blobs(n_test, d, n_classes,
                                                                       seed + 1)}
    dataset = {"name": "npz", "source": source, "classes": [f"c{i}" for i in range(n_classes)],
               "splits": {k: len(v[1]) for k, v in data.items()}, "resize": "device",
               "fingerprint": f"{seed:064d}"}
    w = BankWriter(Path(path), spec=BankSpec.from_json(spec),
                   dataset=DatasetInfo.from_json(dataset), resume=False)
    rotation = np.linalg.qr(np.random.default_rng(99).standard_normal((d, d)))[0]
    for split, (X, y) in data.items():
        noise = np.random.default_rng(seed + 7).standard_normal(X.shape) * 4
        views = {t: X if i == 0 else ((X + noise * i) @ rotation).astype(np.float32)
                 for i, t in enumerate(taps)}
        w.write(split, features=views, labels=y, index=np.arange(len(y)),
                sources_done=len(y))
    w.commit({})
    w.close()
    return FeatureBank(path)


def colour_images(rng: np.random.Generator, n: int, size: int = 24):
    """Images whose class (0-2) is their dominant colour: learnable, not trivially so."""
    y = rng.integers(0, 3, n)
    X = (_images(rng, n, size=size).astype(np.int16) // 2).astype(np.uint8)
    for c in range(3):
        X[y == c, :, :, c] += 90
    return X, y


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """An npz of colour images, its bank (random ResNet-18, 32 px), fitted heads (runs/) and
    a one-epoch fine-tune (ft/): what predict, export and report work on."""
    from featurebank import extract, finetune, fit_heads

    tmp = tmp_path_factory.mktemp("trained")
    rng = np.random.default_rng(0)
    (X, y), (Xt, yt) = colour_images(rng, 240), colour_images(rng, 60)
    yt[:6] = (yt[:6] + 1) % 3  # mislabelled test images: every model gets some wrong
    np.savez(tmp / "d.npz", train_images=X, train_labels=y, test_images=Xt, test_labels=yt,
             classes=np.array(["red", "green", "blue"]))
    bank = extract(f"npz:{tmp / 'd.npz'}", model="resnet18", weights="none", image_size=32,
                   dtype="float16", out=tmp / "bank.h5", progress=False)
    fit_heads(bank, heads=["logreg", "mlp", "knn"], out=tmp / "runs", progress=False)
    finetune(bank, runs=tmp / "runs", out=tmp / "ft", epochs=1, batch_size=32,
             handoff_samples=64, progress=False)
    return tmp, bank


def rank_pid(parent: int, rank: int) -> int | None:
    """The pid of torchrun's worker of ``rank`` (a child of ``parent``), from /proc."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if ppid == parent and f"RANK={rank}".encode() in env:
            return int(entry.name)
    return None


def images_a_browser_renders(page: Path, tmp_path: Path) -> tuple[int, int]:
    """``(images, images decoded)`` of an HTML page rendered by headless Chromium (Debian's
    chromium here: apt-get install chromium); skips where none is installed (the pages'
    tests parse the HTML and decode its images on every machine)."""
    import shutil
    import re

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no chromium on this machine; the HTML is parsed and its images decoded "
                    "by the page's other test")
    probe = tmp_path / "probe.html"  # the page, plus a script that counts decoded images
    probe.write_text(page.read_text().replace("</body>", (
        "<script>addEventListener('load', () => {const i = [...document.images];"
        "document.body.dataset.images = i.length + ':' + i.filter(x => x.complete && "
        "x.naturalWidth > 0).length;});</script></body>")))
    proc = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                           "--no-first-run", "--disable-background-networking",
                           "--disable-component-update", "--disable-sync",
                           f"--user-data-dir={tmp_path / 'profile'}",
                           "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
                          capture_output=True, text=True, timeout=120)
    found = re.search(r'data-images="(\d+):(\d+)"', proc.stdout)
    assert found, proc.stderr[-2000:]
    return int(found.group(1)), int(found.group(2))


def rows_done(partial: Path, splits=("train",)) -> int:
    """Rows a (partial) bank has written in ``splits``, read while its writer runs; 0 before
    the file exists or while it cannot be read."""
    import h5py

    try:
        with h5py.File(partial, "r", locking=False) as f:
            return sum(int(f[s].attrs["rows_done"]) for s in splits)
    except Exception:
        return 0
