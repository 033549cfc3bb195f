"""Benchmark feature extraction: featurebank's pipeline against the bare forward pass and the
usual torchvision tutorial pipeline, on the same images, backbone, batch size and image size.

  (a) bare   the backbone (truncated at the taps) on random input already on the device
  (b) fb     featurebank's pipeline: uint8 batches -> device resize/normalise -> forward ->
             HDF5 writes (timed from the first batch to the last row on disk; the whole
             extract() call, model build included, is printed too)
  (c) tut    PIL Resize + ToTensor + Normalize in DataLoader workers, fp32, NCHW, features
             collected in memory

Prints images/s for each and the ratios b/a and b/c, with the conditions. Examples::

    python scripts/bench_extract.py                       # CPU, 32 px, 1024 synthetic images
    python scripts/bench_extract.py --device cuda --image-size 224 --n-images 60000 \\
        --batch-size 256
    python scripts/bench_extract.py --dataset cifar10 --data-root data --weights DEFAULT
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import featurebank
from featurebank.backbones import get_backbone
from featurebank.bank import BankWriter
from featurebank._decode import DECODERS
from featurebank.extraction import ExtractConfig, _Job, _run, _spec
from featurebank.data import open_source
from featurebank._io import autocast, resolve_device


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def bench_bare(backbone, dev, n, batch, size) -> float:
    # random uint8 pixels, normalised as the pipeline does: the same value range reaches the net
    pixels = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8, device=dev)
    x = backbone.preprocess(pixels, size)
    steps = max(1, n // batch)
    with torch.inference_mode(), autocast(dev):
        for _ in range(3):
            backbone(x)
        _sync(dev)
        t = time.perf_counter()
        for _ in range(steps):
            backbone(x)
        _sync(dev)
    return steps * batch / (time.perf_counter() - t)


def bench_featurebank(backbone, source, dev, size, batch, workers, decode, tmp: Path):
    config = ExtractConfig(model=backbone.name, image_size=size, decode=decode, batch_size=batch,
                           num_workers=workers)
    spec = _spec(backbone, backbone.probe(size, dev), source, config)
    writer = BankWriter(tmp / "bench.h5", spec=spec, dataset=source.describe(), resume=False)
    job = _Job(source, config, dev, data_root="", download=False, resume=False, progress=False)
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
              f"{platform.processor() or platform.machine()}, "
              f"{torch.get_num_threads()} torch threads, device {dev}"
              + (f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else ""))
        print(f"model {args.model} taps {backbone.taps} weights {args.weights}, "
              f"{n} images ({dataset}), image size {args.image_size}, batch {args.batch_size}, "
              f"{args.workers} workers, decode {args.decode}")
        a1 = bench_bare(backbone, dev, n, args.batch_size, args.image_size)
        b, secs = bench_featurebank(backbone, source, dev, args.image_size, args.batch_size,
                                    args.workers, args.decode, tmp)
        a2 = bench_bare(backbone, dev, n, args.batch_size, args.image_size)
        a = max(a1, a2)  # timed before and after (b); the faster one is the bar
        print(f"(a) bare forward      {a:10.1f} img/s   (runs before/after (b): {a1:.1f}, "
              f"{a2:.1f})")
        print(f"(b) featurebank       {b:10.1f} img/s   ({n} images in {secs:.2f} s)")
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
