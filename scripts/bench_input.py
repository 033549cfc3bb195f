"""Benchmark image decoding: images/s per CPU core, and the workers a GPU needs.

Decodes generated JPEG files in one process (one core), the way featurebank's folder pipeline
does (decode to RGB, shorter side resized to 224 with antialiasing, centre crop), with PIL
and with torchvision.io (libjpeg-turbo through torch), and with nvjpeg on a GPU when one is
present (``torchvision.io.decode_jpeg(device="cuda")``, a batch at a time; resize on the GPU).
Two image sets: CIFAR-sized 32 x 32 and ImageNet-sized 400 x 350 JPEGs. From the per-core
rates it prints how many decoding workers a GPU extracting at a given rate needs. Example::

    python scripts/bench_input.py --n 400
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import time

import numpy as np
import torch


def jpegs(n: int, width: int, height: int) -> list[bytes]:
    """Smooth random photos-like images, JPEG-encoded at quality 90."""
    from PIL import Image

    rng = np.random.default_rng(0)
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


def pil_rate(data: list[bytes], size: int) -> float:
    from PIL import Image

    from featurebank.data import _fit

    t = time.perf_counter()
    for b in data:
        with Image.open(io.BytesIO(b)) as im:
            _fit(im.convert("RGB"), size, "bilinear")
    return len(data) / (time.perf_counter() - t)


def _resize_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    from torchvision.transforms.v2 import functional as F

    return F.center_crop(F.resize(x, size, antialias=True), [size, size])


def torchvision_rate(data: list[bytes], size: int) -> float:
    from torchvision.io import decode_jpeg

    raw = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in data]
    t = time.perf_counter()
    for r in raw:
        _resize_crop(decode_jpeg(r), size)
    return len(data) / (time.perf_counter() - t)


def nvjpeg_rate(data: list[bytes], size: int, batch: int = 256) -> float:
    from torchvision.io import decode_jpeg

    raw = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in data]
    decode_jpeg(raw[:8], device="cuda")  # warm-up: the decoder's context
    torch.cuda.synchronize()
    t = time.perf_counter()
    for s in range(0, len(raw), batch):
        for x in decode_jpeg(raw[s:s + batch], device="cuda"):
            _resize_crop(x, size)
    torch.cuda.synchronize()
    return len(data) / (time.perf_counter() - t)


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
    for name, (w, h) in {"CIFAR-sized 32x32": (32, 32), "ImageNet-sized 400x350": (400, 350)}.items():
        data = jpegs(args.n, w, h)
        rates = {"PIL": pil_rate(data, args.size),
                 "torchvision.io (CPU)": torchvision_rate(data, args.size)}
        if torch.cuda.is_available():
            rates["nvjpeg (GPU)"] = nvjpeg_rate(data, args.size)
        print(f"{name} ({np.mean([len(b) for b in data]) / 1024:.1f} KiB each):")
        for decoder, rate in rates.items():
            need = ", ".join(f"{g:g}/s: {g / rate:.1f}" for g in args.gpu_rates)
            unit = "per GPU" if "GPU" in decoder else "per core"
            print(f"  {decoder:<22} {rate:9.1f} img/s {unit}   workers for {need}"
                  if "GPU" not in decoder else f"  {decoder:<22} {rate:9.1f} img/s {unit}")


if __name__ == "__main__":
    main()
