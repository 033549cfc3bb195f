"""Benchmark image decoding: images/s per CPU core, and the workers a GPU needs.

Decodes generated JPEG files in one process (one core) through featurebank's own decoders, as
a folder extraction does (read, decode to RGB, shorter side resized to 224 with antialiasing,
centre crop): ``--decode pil``, ``--decode tensor`` (libjpeg-turbo through TorchCodec or
torchvision.io, torch's resize) and, when a GPU is present, ``--decode gpu`` (nvJPEG a batch
of 256 at a time, resized on the GPU; the workers' file reads counted in the same thread).
Two image sets: CIFAR-sized 32 x 32 and ImageNet-sized 400 x 350 JPEGs. From the per-core
rates it prints how many decoding workers a GPU extracting at a given rate needs. Example::

    python scripts/bench_input.py --n 400
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=400, help="images per set")
    p.add_argument("--size", type=int, default=224, help="network input size")
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


if __name__ == "__main__":
    main()
