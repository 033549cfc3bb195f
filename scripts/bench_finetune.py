"""Benchmark fine-tuning throughput: training images/s, seconds per epoch, and the step's
overhead against a bare PyTorch training step of the same network.

Times ``featurebank.Trainer.step`` -- the fine-tune's own training step -- on a grafted network
(backbone up to the tap + a linear head) fed random uint8 images: device-side crop/flip
augmentation, resize and normalisation, AdamW, gradient clipping, AMP (bf16, else fp16) and
channels_last on CUDA; then, in the same process(es), a bare step of a copy of the network on
input normalised beforehand (forward, cross-entropy, backward, AdamW: what a hand-written
loop does, no augmentation, no clipping). The images are random pixels: a training step's
time does not depend on what they show (the fit benchmarks, whose convergence does, read real
features). Under torchrun both are DistributedDataParallel,
``--batch-size`` is the global batch (each rank takes its part), and rank 0 prints. Examples::

    python scripts/bench_finetune.py                                    # CPU, VGG19 fc7, 32 px
    torchrun --standalone --nproc-per-node 2 scripts/bench_finetune.py  # 2 CPU ranks (gloo)
    python scripts/bench_finetune.py --device cuda --image-size 224 --batch-size 128
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time

import numpy as np
import torch
from torch import nn

import featurebank
from bench_heads import cpu_model  # scripts/, beside this one
from featurebank import FinetuneConfig, GraftedNetwork, Trainer, get_backbone
from featurebank._distributed import current_rank, part_of, process_group
from featurebank._io import amp_dtype, autocast, resolve_device
from featurebank.finetuning.augment import crop_flip


class RandomImages:
    """Stands in for ``featurebank.BankImages``: the same uint8 images for any rows."""

    def __init__(self, n: int, size: int, preprocess, dev: torch.device):
        self.pixels = torch.randint(0, 256, (n, 32, 32, 3), dtype=torch.uint8)
        self.size, self.preprocess, self.dev = size, preprocess, dev

    def uint8(self, rows, split="train") -> np.ndarray:
        return self.pixels[:len(rows)].numpy()

    def prepare(self, x: torch.Tensor, draws=None) -> torch.Tensor:
        x = x.to(self.dev, non_blocking=True)
        return self.preprocess(crop_flip(x, draws) if draws is not None else x, self.size)

    def __call__(self, rows, split="train", draws=None) -> torch.Tensor:
        return self.prepare(torch.from_numpy(self.uint8(rows, split)), draws)


def timed(step, steps: int, dev: torch.device, rank) -> float:
    """Seconds per call of ``step`` after 3 warm-up calls (allocator, cuDNN autotuning)."""
    for _ in range(3):
        step()
    if rank is not None:
        torch.distributed.barrier()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / steps


def bare_step(net: nn.Module, x: torch.Tensor, y: torch.Tensor, dev: torch.device, rank):
    """A hand-written training step of a copy of ``net`` (DDP under torchrun)."""
    model = copy.deepcopy(net)
    if rank is not None:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[dev.index] if dev.type == "cuda" else None)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        with autocast(dev):
            loss = nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def run(args, dev: torch.device, rank) -> None:
    backbone = get_backbone(args.model, weights="none", taps=args.tap)
    tap = backbone.taps[0]
    layers = backbone.probe(args.image_size)
    dim = layers[tap].dim
    net = GraftedNetwork(backbone.tap_network(layers), nn.Linear(dim, args.classes), tap).to(dev)
    if dev.type == "cuda":
        net = net.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    n, bs = args.batch_size * (args.steps + 3), args.batch_size
    images = RandomImages(bs, args.image_size, backbone.preprocess, dev)
    targets = np.random.default_rng(0).integers(0, args.classes, n)
    local = np.arange(bs)[part_of(bs, rank)]
    x = images(local).detach()  # the bare step's input: normalised once, beforehand
    y = torch.as_tensor(targets[local], device=dev)
    bare = bare_step(net, x, y, dev, rank)
    config = FinetuneConfig(epochs=1, batch_size=bs, lr=1e-3)
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(net, config, images, targets, train_rows=np.arange(n),
                          val_rows=np.arange(0), out=out, rank=rank)
        trainer.net.train()
        rounds = [(timed(lambda: trainer.step(np.arange(bs)), args.steps, dev, rank),
                   timed(bare, args.steps, dev, rank)) for _ in range(args.rounds)]
    # alternated, so a drift of the machine's speed falls on both; the median round of each
    ours, theirs = (float(np.median([r[i] for r in rounds])) for i in (0, 1))
    if rank is not None and rank.rank != 0:
        return
    amp, world = amp_dtype(dev), 1 if rank is None else rank.world
    print(f"featurebank {featurebank.__version__}, torch {torch.__version__}, "
          f"{cpu_model()}, {torch.get_num_threads()} torch threads per process, "
          f"{world} process{'es (torchrun, DDP)' if world > 1 else ''}, device {dev}"
          + (f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else ""))
    print(f"model {args.model} tap {tap} ({dim}-d) + linear head, image size {args.image_size}, "
          f"global batch {bs}, {args.rounds} alternated rounds of {args.steps} timed steps "
          f"each, "
          f"{'AMP ' + str(amp).split('.')[-1] if amp else 'fp32'}")
    print(f"featurebank step {bs / ours:10.1f} img/s   epoch of {args.epoch_images} images: "
          f"{args.epoch_images / (bs / ours):8.1f} s")
    print(f"bare step        {bs / theirs:10.1f} img/s   (input normalised beforehand, no "
          f"augmentation or clipping)")
    print(f"featurebank step / bare step time: {ours / theirs:.3f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="vgg19")
    p.add_argument("--tap", default=None)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--epoch-images", type=int, default=50000)
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    dev, rank = resolve_device(args.device), current_rank()
    if rank is None:
        return run(args, dev, None)
    if dev.type == "cuda":
        dev = torch.device("cuda", rank.local)
        torch.cuda.set_device(dev)
    with process_group(rank, dev.type == "cuda"):
        run(args, dev, rank)


if __name__ == "__main__":
    main()
