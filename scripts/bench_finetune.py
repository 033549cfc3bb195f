"""Benchmark fine-tuning throughput: training images/s and seconds per epoch.

Times the training step of the grafted network (backbone up to the tap + a linear head) on
random uint8 images, the same way ``featurebank.finetune`` runs it: device-side preprocessing and
crop/flip augmentation, AdamW, gradient clipping, AMP (bf16, else fp16) and channels_last on
CUDA. Prints images/s, the projected time of an epoch of ``--epoch-images`` images, and the
conditions. Examples::

    python scripts/bench_finetune.py                                    # CPU, VGG19 fc7, 32 px
    python scripts/bench_finetune.py --device cuda --image-size 224 --batch-size 128
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
from torch import nn

import featurebank
from featurebank.backbones import get_backbone
from featurebank.extract import resolve_device
from featurebank.finetune import GraftedNetwork, _augment


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
    cuda = dev.type == "cuda"
    backbone = get_backbone(args.model, weights="none", taps=args.tap)
    tap = backbone.taps[0]
    dim = backbone.probe(args.image_size)[tap]["dim"]
    net = GraftedNetwork(backbone, nn.Linear(dim, args.classes), tap).to(dev)
    if cuda:
        net = net.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    amp = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float16
    opt = torch.optim.AdamW([{"params": backbone.parameters(), "lr": 1e-4},
                             {"params": net.head.parameters(), "lr": 1e-3}])
    scaler = torch.amp.GradScaler("cuda", enabled=cuda and amp == torch.float16)
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.batch_size, 32, 32, 3), dtype=torch.uint8)
    labels = torch.randint(0, args.classes, (args.batch_size,), device=dev)
    if cuda:
        images = images.pin_memory()
    net.train()

    def step() -> None:
        x = backbone.preprocess(_augment(images.to(dev, non_blocking=True), gen),
                                args.image_size)
        with torch.autocast(dev.type, dtype=amp, enabled=cuda):
            loss = nn.functional.cross_entropy(net(x).float(), labels)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()

    for _ in range(3):
        step()
    if cuda:
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(args.steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    rate = args.steps * args.batch_size / (time.perf_counter() - t)
    print(f"featurebank {featurebank.__version__}, torch {torch.__version__}, "
          f"{platform.machine()}, {torch.get_num_threads()} torch threads, device {dev}"
          + (f" ({torch.cuda.get_device_name(dev)})" if cuda else ""))
    print(f"model {args.model} tap {tap} ({dim}-d) + linear head, image size {args.image_size}, "
          f"batch {args.batch_size}, {args.steps} timed steps, "
          f"{'AMP ' + str(amp).split('.')[-1] if cuda else 'fp32'}")
    print(f"training {rate:10.1f} img/s   epoch of {args.epoch_images} images: "
          f"{args.epoch_images / rate:8.1f} s")


if __name__ == "__main__":
    main()
