"""Benchmark feature extraction: featurebank's pipeline against the bare forward pass and the
usual torchvision tutorial pipeline, on the same images, backbone, batch size and image size.

  (a) bare   the backbone (truncated at the taps) on random input already on the device
  (b) fb     featurebank's pipeline: uint8 batches -> device resize/normalise -> forward ->
             HDF5 writes (timed from the first batch to the last row on disk; the whole
             extract() call, model build included, is printed too)
  (c) tut    PIL Resize + ToTensor + Normalize in DataLoader workers, fp32, NCHW, features
             collected in memory

Prints images/s for each and the ratios b/a and b/c, with the conditions. On a CPU with
native bfloat16 (AMX, AVX512-BF16: ``featurebank._io.cpu_has_bf16``) (a) and (b) run twice,
in float32 (``extract --amp off``) and in bfloat16 autocast with channels_last (the default
there), with the bfloat16 features' relative error against float32's. Examples::

    python scripts/bench_extract.py                       # CPU, 32 px, 1024 synthetic images
    python scripts/bench_extract.py --device cuda --image-size 224 --n-images 60000 \\
        --batch-size 256
    python scripts/bench_extract.py --dataset cifar10 --data-root data --weights DEFAULT
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_heads import cpu_model  # noqa: E402

import featurebank
from featurebank.backbones import get_backbone
from featurebank.bank import BankWriter
from featurebank._decode import DECODERS
from featurebank.extraction import ExtractConfig, _Job, _run, _spec
from featurebank.data import open_source
from featurebank._io import amp_dtype, autocast, cpu_has_bf16, resolve_device


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def bench_bare(backbone, dev, n, batch, size, amp="auto") -> float:
    # random uint8 pixels, normalised as the pipeline does: the same value range reaches the net
    pixels = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8, device=dev)
    x = backbone.preprocess(pixels, size)
    steps = max(1, n // batch)
    with torch.inference_mode(), autocast(dev, amp):
        for _ in range(3):
            backbone(x)
        _sync(dev)
        t = time.perf_counter()
        for _ in range(steps):
            backbone(x)
        _sync(dev)
    return steps * batch / (time.perf_counter() - t)


def relative_error(backbone, dev, batch, size) -> float:
    """max |bf16 - fp32| / max |fp32| of the backbone's outputs on one batch."""
    pixels = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8, device=dev)
    x = backbone.preprocess(pixels, size)
    with torch.inference_mode():
        with autocast(dev, None):
            ref = backbone(x)
        with autocast(dev, torch.bfloat16):
            low = backbone(x)
    return max(float((low[t].float() - ref[t]).abs().max() / ref[t].abs().max()) for t in ref)


def bench_featurebank(backbone, source, dev, size, batch, workers, decode, tmp: Path,
                      amp="auto"):
    config = ExtractConfig(model=backbone.name, image_size=size, decode=decode, batch_size=batch,
                           num_workers=workers, amp=amp)
    job = _Job(source, config, dev, data_root="", download=False, resume=False, progress=False)
    spec = _spec(backbone, backbone.probe(size, dev), source, config, job.amp)
    writer = BankWriter(tmp / f"bench_{amp}.h5", spec=spec, dataset=source.describe(),
                        resume=False)
    n = sum(len(s) for s in source.splits.values())
    _sync(dev)
    t = time.perf_counter()
    _run(backbone, source, writer, job, decoding=spec.decoding)
    _sync(dev)
    seconds = time.perf_counter() - t
    writer.close()
    return n / seconds, seconds


def bench_tutorial(backbone, source, dev, size, batch, workers, n) -> float:
    from PIL import Image
    from torchvision import transforms

    prep = backbone.preprocessing
    tf = transforms.Compose([
        transforms.Resize((size, size), interpolation=transforms.InterpolationMode(
            prep.interpolation)),
        transforms.ToTensor(), transforms.Normalize(prep.mean, prep.std)])
    images = source.splits["train"].images  # array sources (CIFAR, npz)
    backbone.to(memory_format=torch.contiguous_format)  # the tutorial's plain NCHW model

    class DS(torch.utils.data.Dataset):
        def __len__(self):
            return min(n, len(images))

        def __getitem__(self, i):
            return tf(Image.fromarray(images[i]))

    loader = torch.utils.data.DataLoader(DS(), batch_size=batch, num_workers=workers,
                                         pin_memory=dev.type == "cuda")
    feats = []
    _sync(dev)
    t = time.perf_counter()
    with torch.inference_mode():
        for x in loader:
            out = backbone(x.to(dev))
            feats.append({k: v.cpu().numpy() for k, v in out.items()})
    _sync(dev)
    return len(loader.dataset) / (time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default=None,
                   help="featurebank dataset (default: synthetic 32x32 images)")
    p.add_argument("--data-root", default="data")
    p.add_argument("--n-images", type=int, default=1024, help="synthetic images (default 1024)")
    p.add_argument("--model", default="vgg19")
    p.add_argument("--weights", default="none")
    p.add_argument("--taps", default=None)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="DataLoader workers (featurebank's and the tutorial pipeline's)")
    p.add_argument("--decode", default="pil", choices=DECODERS,
                   help="featurebank's decoder for image folders (gpu: nvjpeg on CUDA)")
    p.add_argument("--skip-tutorial", action="store_true")
    args = p.parse_args()

    dev = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        dataset = args.dataset
        if dataset is None:
            rng = np.random.default_rng(0)
            n = args.n_images
            np.savez(tmp / "synthetic.npz",
                     train_images=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
                     train_labels=rng.integers(0, 10, n))
            dataset = f"npz:{tmp / 'synthetic.npz'}"
        source = open_source(dataset, data_root=args.data_root)
        n = sum(len(s) for s in source.splits.values())
        backbone = get_backbone(args.model, weights=args.weights, taps=args.taps)
        backbone.requires_grad_(False).to(dev).to(memory_format=torch.channels_last)

        print(f"featurebank {featurebank.__version__}, torch {torch.__version__}, "
              f"{cpu_model()}, "
              f"{torch.get_num_threads()} torch threads, device {dev}"
              + (f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else ""))
        print(f"model {args.model} taps {backbone.taps} weights {args.weights}, "
              f"{n} images ({dataset}), image size {args.image_size}, batch {args.batch_size}, "
              f"{args.workers} workers, decode {args.decode}")
        modes = ["off", "auto"] if dev.type == "cpu" and cpu_has_bf16() else ["auto"]
        print(f"CPU native bfloat16: {cpu_has_bf16()}; forward passes in "
              + ", then ".join(str(amp_dtype(dev, cpu_bf16=m == "auto") or "float32")
                               .removeprefix("torch.") for m in modes))
        speed = {}
        for mode in modes:
            amp = None if mode == "off" else amp_dtype(dev, cpu_bf16=True)
            a1 = bench_bare(backbone, dev, n, args.batch_size, args.image_size, amp)
            b, secs = bench_featurebank(backbone, source, dev, args.image_size,
                                        args.batch_size, args.workers, args.decode, tmp, mode)
            a2 = bench_bare(backbone, dev, n, args.batch_size, args.image_size, amp)
            a = max(a1, a2)  # timed before and after (b); the faster one is the bar
            speed[mode] = (a, b)
            print(f"--amp {mode} ({str(amp or 'torch.float32').removeprefix('torch.')}):")
            print(f"(a) bare forward      {a:10.1f} img/s   (runs before/after (b): {a1:.1f}, "
                  f"{a2:.1f})")
            print(f"(b) featurebank       {b:10.1f} img/s   ({n} images in {secs:.2f} s)")
        if len(modes) == 2:
            (a32, b32), (a16, b16) = speed["off"], speed["auto"]
            print(f"bfloat16 / float32: bare {a16 / a32:.2f}x, featurebank {b16 / b32:.2f}x; "
                  f"bfloat16 features' relative error (max |d| / max |fp32|) "
                  f"{relative_error(backbone, dev, args.batch_size, args.image_size):.4f}")
        t = time.perf_counter()
        featurebank.extract(dataset, data_root=args.data_root, model=args.model,
                            weights=args.weights, taps=args.taps, image_size=args.image_size,
                            batch_size=args.batch_size, device=str(dev), out=tmp / "e2e.h5",
                            num_workers=args.workers, progress=False,
                            decode=args.decode if source.resize != "device" else "pil")
        print(f"    extract() call    {time.perf_counter() - t:10.2f} s end to end "
              f"(model build, fingerprint and file commit included)")
        print(f"b/a = {b / a:.3f}")
        if not args.skip_tutorial and hasattr(source.splits["train"], "images"):
            c = bench_tutorial(backbone, source, dev, args.image_size, args.batch_size,
                               args.workers, n)
            print(f"(c) tutorial pipeline {c:10.1f} img/s   ({args.workers} workers)")
            print(f"b/c = {b / c:.2f}")


if __name__ == "__main__":
    main()
