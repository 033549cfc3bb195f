"""Benchmark fine-tuning throughput: training images/s and seconds per epoch.

Times ``featurebank.Trainer.step`` -- the fine-tune's own training step -- on a grafted network
(backbone up to the tap + a linear head) fed random uint8 images: device-side crop/flip
augmentation, resize and normalisation, AdamW, gradient clipping, AMP (bf16, else fp16) and
channels_last on CUDA. Prints images/s, the projected time of an epoch of ``--epoch-images``
images, and the conditions. Examples::

    python scripts/bench_finetune.py                                    # CPU, VGG19 fc7, 32 px
    python scripts/bench_finetune.py --device cuda --image-size 224 --batch-size 128
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time

import numpy as np
import torch
from torch import nn

import featurebank
from featurebank import FinetuneConfig, GraftedNetwork, Trainer, get_backbone
from featurebank._io import amp_dtype, resolve_device


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="vgg19")
    p.add_argument("--tap", default=None)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--epoch-images", type=int, default=50000)
    p.add_argument("--device", default="auto")
    args = p.parse_args()

    dev = resolve_device(args.device)
    backbone = get_backbone(args.model, weights="none", taps=args.tap)
    tap = backbone.taps[0]
    layers = backbone.probe(args.image_size)
    dim = layers[tap]["dim"]
    net = GraftedNetwork(backbone.tap_network(layers), nn.Linear(dim, args.classes), tap).to(dev)
    if dev.type == "cuda":
        net = net.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    pixels = torch.randint(0, 256, (args.batch_size, 32, 32, 3), dtype=torch.uint8)
    if dev.type == "cuda":
        pixels = pixels.pin_memory()

    def images(rows, split="train", gen=None):  # stands in for featurebank.BankImages
        from featurebank.finetuning.augment import random_crop_flip

        x = pixels.to(dev, non_blocking=True)
        return backbone.preprocess(random_crop_flip(x, gen) if gen is not None else x,
                                   args.image_size)

    n = args.batch_size * (args.steps + 3)
    targets = np.random.default_rng(0).integers(0, args.classes, n)
    config = FinetuneConfig(epochs=1, batch_size=args.batch_size, lr=1e-3)
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(net, config, images, targets, train_rows=np.arange(n),
                          val_rows=np.arange(0), out=out)
        trainer.net.train()
        rows = np.arange(args.batch_size)
        for _ in range(3):  # warm-up: allocator, cuDNN autotuning
            trainer.step(rows)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(args.steps):
            trainer.step(rows)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        rate = args.steps * args.batch_size / (time.perf_counter() - t)
    amp = amp_dtype(dev)
    print(f"featurebank {featurebank.__version__}, torch {torch.__version__}, "
          f"{platform.machine()}, {torch.get_num_threads()} torch threads, device {dev}"
          + (f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else ""))
    print(f"model {args.model} tap {tap} ({dim}-d) + linear head, image size {args.image_size}, "
          f"batch {args.batch_size}, {args.steps} timed steps, "
          f"{'AMP ' + str(amp).split('.')[-1] if amp else 'fp32'}")
    print(f"training {rate:10.1f} img/s   epoch of {args.epoch_images} images: "
          f"{args.epoch_images / rate:8.1f} s")


if __name__ == "__main__":
    main()
