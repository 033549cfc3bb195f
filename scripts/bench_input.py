"""Benchmark image decoding: images/s per CPU core, and the workers a GPU needs.

Decodes generated JPEG files in one process (one core) through featurebank's own decoders, as
a folder extraction does (read, decode to RGB, shorter side resized to 224 with antialiasing,
centre crop): ``--decode pil``, ``--decode tensor`` (libjpeg-turbo through TorchCodec or
torchvision.io, torch's resize) and, when a GPU is present, ``--decode gpu`` (nvJPEG a batch
of 256 at a time, resized on the GPU; the workers' file reads counted in the same thread).
Two image sets: CIFAR-sized 32 x 32 and ImageNet-sized 400 x 350 JPEGs. From the per-core
rates it prints how many decoding workers a GPU extracting at a given rate needs. Then the
400 x 350 set is read through each dataset format (a folder of files, WebDataset tar shards,
a folder of Parquet files through Hugging Face ``datasets``, a CSV of paths), by the source's
own opener and the call a DataLoader worker makes (``Decoding.read``), one core; with
``--real DIR``, also real JPEG files from a folder tree (every format holds their bytes).
Example::

    python scripts/bench_input.py --n 400 --real CIFAR-10-images/train
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from featurebank._decode import Decoding


def jpegs(n: int, width: int, height: int, seed: int = 0) -> list[bytes]:
    """Smooth random photos-like images, JPEG-encoded at quality 90."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        low = rng.integers(0, 256, (3, 8, 8)).astype(np.float32)
        img = torch.nn.functional.interpolate(torch.from_numpy(low)[None], size=(height, width),
                                              mode="bicubic", align_corners=False)[0]
        noise = rng.normal(0, 12, (3, height, width))
        arr = np.clip(img.numpy() + noise, 0, 255).astype(np.uint8).transpose(1, 2, 0)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def rate(decode: str, paths: list[Path], size: int, batch: int = 256) -> float:
    """Images/s through featurebank's own decoding (``Decoding``): files read, decoded,
    shorter side resized to ``size``, centre-cropped; ``gpu`` a batch at a time on CUDA."""
    d = Decoding(size, "bilinear", decoder=decode)
    if decode != "gpu":
        d.load(paths[0])  # untimed: the first call pays imports and the decoder's probe
        t = time.perf_counter()
        for p in paths:
            d.load(p)
        return len(paths) / (time.perf_counter() - t)
    dev = torch.device("cuda")
    d.assemble([d.read(str(p))[0] for p in paths[:8]], dev)  # warm-up: the decoder's context
    torch.cuda.synchronize()
    t = time.perf_counter()
    for s in range(0, len(paths), batch):
        d.assemble([d.read(str(p))[0] for p in paths[s:s + batch]], dev)
    torch.cuda.synchronize()
    return len(paths) / (time.perf_counter() - t)


def write_sources(tmp: Path, data: list[bytes]) -> dict[str, str]:
    """The same JPEGs (two classes) as a folder, tar shards of 100, a CSV and Parquet files."""
    import csv
    import tarfile

    folder, shards = tmp / "folder", tmp / "shards"
    files = []
    for i, b in enumerate(data):
        f = folder / f"c{i % 2}" / f"{i:05d}.jpg"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b)
        files.append((f, i % 2))
    files.sort()
    shards.mkdir()
    for n in range(0, len(files), 100):
        with tarfile.open(shards / f"s-{n // 100:06d}.tar", "w") as tf:
            for f, y in files[n:n + 100]:
                for name, blob in ((f"{f.stem}.jpg", f.read_bytes()), (f"{f.stem}.cls",
                                                                        str(y).encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(blob)
                    tf.addfile(info, io.BytesIO(blob))
    with open(tmp / "list.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label"])
        w.writerows((str(f), y) for f, y in files)
    out = {"folder": f"folder:{folder}", "wds (tar shards)": f"wds:{shards}",
           "csv": f"csv:{tmp / 'list.csv'}"}
    try:
        import datasets
    except ImportError:
        return out
    feats = datasets.Features({"image": datasets.Image(),
                               "label": datasets.ClassLabel(names=["c0", "c1"])})
    ds = datasets.Dataset.from_dict({"image": [{"bytes": f.read_bytes(), "path": None}
                                               for f, _ in files],
                                     "label": [y for _, y in files]}, features=feats)
    (tmp / "pq").mkdir()
    ds.to_parquet(str(tmp / "pq" / "train-00000-of-00001.parquet"))
    out["hf (Parquet)"] = f"hf:{tmp / 'pq'}"
    return out


def source_rates(data: list[bytes], size: int) -> None:
    """Per-core rates of each dataset format: opening it, and reading + decoding its images
    as a worker does."""
    from featurebank.data import open_source

    with tempfile.TemporaryDirectory() as tmp:
        sources = write_sources(Path(tmp), data)
        print(f"  the same {len(data)} JPEGs per dataset format (open: listing, index, "
              f"fingerprint; then read + decode + resize per image):")
        for kind, name in sources.items():
            t = time.perf_counter()
            split = open_source(name, data_root=tmp).splits["train"]
            opened = time.perf_counter() - t
            items = [split.encoded(i) for i in split.positions()]
            rates = []
            for decode in ("pil", "tensor"):
                d = Decoding(size, "bilinear", decoder=decode)
                d.read(items[0])  # untimed warm-up, as in rate()
                t = time.perf_counter()
                for item in items:
                    d.read(item)
                rates.append(len(items) / (time.perf_counter() - t))
            print(f"    {kind:<18} open {opened:6.2f} s   pil {rates[0]:7.1f} img/s   "
                  f"tensor {rates[1]:7.1f} img/s per core")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=400, help="images per set")
    p.add_argument("--size", type=int, default=224, help="network input size")
    p.add_argument("--real", default=None, metavar="DIR",
                   help="also read the dataset formats with the first --n JPEGs of DIR "
                        "(searched recursively, spread over its sub-folders)")
    p.add_argument("--gpu-rates", type=float, nargs="+", default=[2000, 5000, 10000, 20000],
                   help="extraction rates (images/s) to size the workers for")
    args = p.parse_args()
    torch.set_num_threads(1)  # one core: rates per core
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs; one process, one thread; {args.n} JPEGs per set, decoded, "
          f"shorter side resized to {args.size} (antialiased) and centre-cropped")
    sets = {"CIFAR-sized 32x32": (32, 32), "ImageNet-sized 400x350": (400, 350)}
    for name, (w, h) in sets.items():
        data = jpegs(args.n, w, h)
        with tempfile.TemporaryDirectory() as tmp:  # files: reads are part of the work
            paths = [Path(tmp) / f"{i:05d}.jpg" for i in range(len(data))]
            for p, b in zip(paths, data):
                p.write_bytes(b)
            rates = {"--decode pil": rate("pil", paths, args.size),
                     "--decode tensor (CPU)": rate("tensor", paths, args.size)}
            if torch.cuda.is_available():
                rates["--decode gpu (GPU)"] = rate("gpu", paths, args.size)
        print(f"{name} ({np.mean([len(b) for b in data]) / 1024:.1f} KiB each):")
        for decoder, r in rates.items():
            need = ", ".join(f"{g:g}/s: {g / r:.1f}" for g in args.gpu_rates)
            unit = "per GPU" if "GPU" in decoder else "per core"
            print(f"  {decoder:<22} {r:9.1f} img/s {unit}   workers for {need}"
                  if "GPU" not in decoder else f"  {decoder:<22} {r:9.1f} img/s {unit}")
        if w > 32:
            source_rates(data, args.size)
    if args.real:
        files = sorted(Path(args.real).rglob("*.jpg"))
        picked = files[::max(1, len(files) // args.n)][:args.n]
        data = [f.read_bytes() for f in picked]
        print(f"real JPEGs from {args.real} ({len(data)} files, "
              f"{np.mean([len(b) for b in data]) / 1024:.1f} KiB each):")
        source_rates(data, args.size)


if __name__ == "__main__":
    main()
