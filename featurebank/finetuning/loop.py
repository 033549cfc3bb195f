"""The training loop: a :class:`Trainer` whose step, evaluation, epoch and run are each short.

Per step: the batch's images (decoded, moved to the device, augmented there as uint8, resized
and normalised) -> forward under autocast (CUDA) -> cross-entropy -> backward through the grad
scaler -> gradient clipping -> optimizer and scheduler step. Per epoch: a fixed data order
drawn from ``(seed, epoch)``, validation, the best weights kept, early stopping, a checkpoint.
:class:`Callback` hooks let callers (tests, benchmarks) watch or stop a run without touching
its internals.
"""

from __future__ import annotations

import math
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._distributed import Rank, all_sum, gather_parts, part_of, sync
from .._io import amp_dtype, autocast, progress_bar
from ..artefacts import BEST_MODEL, CHECKPOINT, epoch_checkpoint
from ..bank import FeatureBank
from ..data import ImageSource
from ..exceptions import DataError, ParameterError
from .augment import CropFlip, crop_flip, draw_crop_flip
from .checkpoint import checkpoint_record, save, set_rng_state
from .config import FinetuneConfig

__all__ = ["BankImages", "Callback", "Trainer"]

DIVERGED = 10  # an epoch's train loss this many times where it started: the run diverged


class BankImages:
    """Normalised network input for rows of a bank, read from the bank's image source.

    ``images(rows, split, draws)``: the source images behind those bank rows (through the
    bank's ``index``, so skipped images never shift rows), on ``device``, augmented with
    ``draws`` (:func:`~featurebank.finetuning.augment.draw_crop_flip`) when given, resized
    and normalised by the backbone's own preprocessing.
    """

    def __init__(self, source: ImageSource, bank: FeatureBank,
                 preprocess: Callable[[torch.Tensor, int], torch.Tensor], device: torch.device):
        self.source, self.preprocess, self.device = source, preprocess, device
        self.index = {split: bank.index(split) for split in bank.splits}
        self.decoding = bank.spec.decoding

    def __call__(self, rows: np.ndarray, split: str = "train",
                 draws: CropFlip | None = None) -> torch.Tensor:
        return self.prepare(torch.from_numpy(self.uint8(rows, split)), draws)

    def uint8(self, rows: np.ndarray, split: str = "train") -> np.ndarray:
        """The images behind bank rows ``rows``: uint8 ``(N, S, S, 3)`` on the CPU."""
        return self.source.splits[split].take(self.index[split][rows], decoding=self.decoding)

    def prepare(self, x: torch.Tensor, draws: CropFlip | None = None) -> torch.Tensor:
        """A uint8 batch to normalised network input on the device (augmented by ``draws``,
        one per image)."""
        x = x.to(self.device, non_blocking=True)
        return self.preprocess(crop_flip(x, draws) if draws is not None else x,
                               self.decoding.image_size)

    def stream(self, batches: list[np.ndarray], split: str, workers: int):
        """The uint8 images of each batch of rows, in order. Image files are decoded in
        ``workers`` DataLoader processes, a bounded few batches ahead, into pinned memory on
        CUDA -- for a ``--decode gpu`` bank the workers only read the files and the JPEGs are
        decoded on this process's device, as the extraction did; in-memory sources (CIFAR,
        npz) are sliced here."""
        if workers == 0 or not self.source.splits[split].decodes_files:
            return (torch.from_numpy(self.uint8(rows, split)) for rows in batches)
        on_device = self.decoding.decoder == "gpu"
        loader = torch.utils.data.DataLoader(
            _Rows(self, split), batch_sampler=batches, num_workers=workers,
            collate_fn=list if on_device else _stack,
            pin_memory=self.device.type == "cuda" and not on_device, prefetch_factor=2)
        return (self._assemble(parts) for parts in loader) if on_device else iter(loader)

    def _assemble(self, parts: list[Any]) -> torch.Tensor:
        """Workers' reads of a ``gpu`` bank's files as one uint8 batch on the device."""
        images, errors = self.decoding.assemble(parts, self.device)
        bad = next((e for e in errors if e is not None), None)
        if bad is not None:
            raise DataError(f"cannot decode an image of this batch ({bad}); the bank's images "
                            f"changed since the extraction: restore them, or extract again.")
        return images


class _Rows(torch.utils.data.Dataset):
    """One bank row's decoded image (for a ``gpu`` bank, its file's bytes), for DataLoader
    workers."""

    def __init__(self, images: BankImages, split: str):
        self.images, self.split = images, split

    def __len__(self) -> int:
        return len(self.images.index[self.split])

    def __getitem__(self, row: int) -> Any:
        images = self.images
        if images.decoding.decoder != "gpu":
            return images.uint8(np.array([row]), self.split)[0]
        encoded = images.source.splits[self.split].encoded(images.index[self.split][row])
        part, err = images.decoding.read(encoded)
        if part is None:
            raise DataError(f"cannot read image {str(encoded)!r} ({err}).")
        return part


def _stack(items: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(items))


class Callback:
    """Hooks a :class:`Trainer` calls; override the ones you need."""

    def on_step_begin(self, trainer: Trainer) -> None:
        """Before each training step (``trainer.state["step"]`` is the step about to run)."""

    def on_checkpoint(self, trainer: Trainer, path: Path) -> None:
        """After a checkpoint has reached the disk."""

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        """After an epoch's validation and checkpoint; ``row`` is its metrics. Called for
        epoch 0 too (the grafted head before any step, validated; no checkpoint yet)."""


def _data_parallel(net: nn.Module, rank: Rank | None, config: FinetuneConfig,
                   device: torch.device) -> nn.Module:
    """``net`` under DistributedDataParallel for a torchrun rank (itself for one process);
    with ``train_bn``, its BatchNorm layers become SyncBatchNorm (CUDA only), so the batch
    statistics are the global batch's."""
    if rank is None:
        return net
    if config.train_bn:
        if device.type != "cuda":
            raise ParameterError(
                f"--train-bn with {rank.world} CPU ranks: BatchNorm would see each rank's part "
                f"of the batch only, and SyncBatchNorm needs CUDA; fine-tune on GPUs, in one "
                f"process, or without --train-bn.")
        nn.SyncBatchNorm.convert_sync_batchnorm(net)  # replaces the layers in place
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda"
                                   else None)


def _schedule(total: int, warm: int) -> Callable[[int], float]:
    """Linear warm-up over ``warm`` steps, then cosine decay to zero at step ``total``."""
    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    return factor


def _optimizer(net: nn.Module, backbone_params: list, config: FinetuneConfig):
    groups = [{"params": backbone_params, "lr": config.lr * config.backbone_lr_ratio},
              {"params": list(net.head.parameters()), "lr": config.lr}]
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=True,
                           weight_decay=config.weight_decay)


class Trainer:
    """End-to-end training of a grafted network, with validation, early stopping and exact
    checkpoint/resume.

    Parameters
    ----------
    net : GraftedNetwork
        On ``device``; backbone parameters that should stay frozen have ``requires_grad`` off.
    config : FinetuneConfig
    images : callable
        ``images(rows, split="train", gen=None)`` -> normalised input (:class:`BankImages`).
    targets : ndarray
        Class index of every train row of the bank.
    train_rows, val_rows : ndarray
        Bank rows trained on and validated on.
    out : path-like
        Folder of ``checkpoint.pt`` and ``best_model.pt``.
    run_config : dict
        The provenance stored in each checkpoint (checked when resuming).
    callbacks : sequence of Callback
    progress : bool
        A bar per epoch and a log line per epoch on stderr.
    rank : Rank, optional
        This process's place under torchrun: the network trains under
        DistributedDataParallel, each rank on its part of every global batch
        (``batch_size`` stays the global batch), and rank 0 alone writes and reports.
    """

    def __init__(self, net: nn.Module, config: FinetuneConfig, images: Callable, targets,
                 *, train_rows: np.ndarray, val_rows: np.ndarray, out: str | Path,
                 run_config: dict[str, Any] | None = None,
                 callbacks: Sequence[Callback] = (), progress: bool = False,
                 rank: Rank | None = None):
        self.net, self.config, self.images, self.rank = net, config, images, rank
        self.device = next(net.parameters()).device
        self.amp = amp_dtype(self.device)
        self.train_rows, self.val_rows = train_rows, val_rows
        self.y = torch.as_tensor(np.asarray(targets), device=self.device)
        self.out, self.run_config = Path(out), run_config or {}
        self.writer = rank is None or rank.rank == 0  # who writes files and reports
        self.callbacks, self.progress = list(callbacks), progress and self.writer
        self.model = _data_parallel(net, rank, config, self.device)  # what the steps run
        self.n_outputs = [m for m in net.head.modules()
                          if isinstance(m, nn.Linear)][-1].out_features
        self._side: int | None = None  # the uint8 images' side (what augmentation pads)
        self.gen = torch.Generator().manual_seed(config.seed)  # augmentation draws
        backbone_params = [p for p in net.backbone.parameters() if p.requires_grad]
        self.opt = _optimizer(net, backbone_params, config)
        self.steps_per_epoch = math.ceil(len(train_rows) / config.batch_size)
        total = config.epochs * self.steps_per_epoch
        warm = min(total, max(0, round(config.warmup_epochs * self.steps_per_epoch)))
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, _schedule(total, warm))
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp == torch.float16)
        self.state: dict[str, Any] = {
            "epoch": 0, "step": 0, "best_val_loss": math.inf, "best_epoch": 0, "stale": 0,
            "history": [], "train_loss_sum": 0.0, "order": None}

    def log(self, message: str) -> None:
        if self.progress:
            print(message, file=sys.stderr, flush=True)

    def _autocast(self):
        return autocast(self.device)

    # -- one step, one evaluation ---------------------------------------------------------
    def step(self, rows: np.ndarray, images: torch.Tensor | None = None) -> float:
        """One training step on the global batch of bank rows ``rows`` (this rank's part of
        them as uint8 ``images`` when decoded already); returns the batch's mean loss.

        Under torchrun each rank takes its :func:`part_of` the batch and the augmentation
        draws of those images from the draws for the whole batch (the same generator on
        every rank); its loss is its rows' sum over the global batch size times the rank
        count, so DistributedDataParallel's average of the gradients is the gradient of
        the global batch's mean, for any split of it."""
        part = part_of(len(rows), self.rank)
        local = rows[part]
        if images is None:
            images = torch.from_numpy(self.images.uint8(local, "train"))
        draws = None
        if self.config.augment:
            whole = draw_crop_flip(len(rows), self._image_side(rows, images), self.gen)
            draws = tuple(d[part] for d in whole)
        x = self.images.prepare(images, draws)
        target = self.y[torch.as_tensor(local, device=self.device)]
        with self._autocast():
            logits = self.model(x).float()
            loss = (nn.functional.cross_entropy(logits, target) if self.rank is None else
                    nn.functional.cross_entropy(logits, target, reduction="sum")
                    * (self.rank.world / len(rows)))
        self.opt.zero_grad(set_to_none=True)
        with warnings.catch_warnings():
            # DDP's performance note when a gradient's strides differ from its bucket's (a 1x1
            # convolution's: the same memory order)
            warnings.filterwarnings("ignore", message="Grad strides do not match bucket view")
            self.scaler.scale(loss).backward()
        if self.config.clip_grad_norm:
            self.scaler.unscale_(self.opt)
            nn.utils.clip_grad_norm_(self.net.parameters(), self.config.clip_grad_norm)
        self.scaler.step(self.opt)
        self.scaler.update()
        self.sched.step()
        value = float(loss.detach()) if self.rank is None else float(all_sum(
            loss.detach() * (len(rows) / self.rank.world), self.rank)) / len(rows)
        self.state.setdefault("start_loss", value)  # what divergence is measured against
        self.state["train_loss_sum"] += value * len(rows)
        self.state["step"] += 1
        return value

    def _image_side(self, rows: np.ndarray, images: torch.Tensor) -> int:
        """The side of the batch's uint8 images (a rank whose part is empty reads one)."""
        if self._side is None:
            self._side = int((images if len(images) else torch.from_numpy(
                self.images.uint8(rows[:1], "train"))).shape[1])
        return self._side

    @torch.no_grad()
    def logits(self, rows: np.ndarray, split: str = "train") -> torch.Tensor:
        """The network's float32 logits for bank rows ``rows`` of ``split`` (eval mode); under
        torchrun each rank computes its part and every rank gets them all."""
        self.net.eval()
        bs, local = self.config.batch_size, rows[part_of(len(rows), self.rank)]
        out = [torch.zeros((0, self.n_outputs), device=self.device)]
        for i in range(0, len(local), bs):
            with self._autocast():
                out.append(self.net(self.images(local[i:i + bs], split)).float())
        return gather_parts(torch.cat(out), len(rows), self.rank)

    def evaluate(self, rows: np.ndarray, y: torch.Tensor, split: str = "train"
                 ) -> tuple[float, float]:
        """Mean cross-entropy and accuracy on ``rows`` of ``split`` (labels ``y``)."""
        logits, bs = self.logits(rows, split), self.config.batch_size
        loss = sum(float(nn.functional.cross_entropy(logits[i:i + bs], y[i:i + bs],
                                                     reduction="sum"))
                   for i in range(0, len(rows), bs))
        return loss / len(rows), int((logits.argmax(1) == y).sum()) / len(rows)

    def validate(self) -> tuple[float, float]:
        return self.evaluate(self.val_rows, self.y[torch.as_tensor(self.val_rows,
                                                                    device=self.device)])

    # -- an epoch, a run ------------------------------------------------------------------
    def _train_mode(self) -> None:
        self.net.train()
        if not self.config.train_bn:  # BatchNorm keeps the statistics the features were made with
            for m in self.net.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()

    def _order(self) -> np.ndarray:
        """This epoch's data order, drawn from (seed, epoch) and kept in the checkpoint."""
        if self.state["order"] is None:
            rng = np.random.default_rng([self.config.seed, self.state["epoch"]])
            self.state["order"] = torch.from_numpy(rng.permutation(self.train_rows))
        return self.state["order"].numpy()

    def epoch(self) -> dict[str, Any]:
        """Train the rest of the current epoch, validate, keep the best, checkpoint."""
        st, bs, cfg = self.state, self.config.batch_size, self.config
        order, t0 = self._order(), time.perf_counter()
        self._train_mode()
        with progress_bar(total=len(order), initial=min(st["step"] * bs, len(order)),
                          desc=f"train epoch {st['epoch'] + 1}/{cfg.epochs}", leave=False,
                          enabled=self.progress) as bar:
            batches = [order[i * bs:(i + 1) * bs]
                        for i in range(st["step"], self.steps_per_epoch)]
            mine = [b[part_of(len(b), self.rank)] for b in batches]  # what this rank decodes
            decoded = (self.images.stream(mine, "train", self.config.workers)
                       if hasattr(self.images, "stream") else iter([None] * len(batches)))
            for rows, images in zip(batches, decoded):
                for cb in self.callbacks:
                    cb.on_step_begin(self)
                loss = self.step(rows, images)
                bar.update(len(rows))
                bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
                if cfg.checkpoint_every and self.sched.last_epoch % cfg.checkpoint_every == 0:
                    self.checkpoint()
        return self._end_epoch(time.perf_counter() - t0)

    def _end_epoch(self, seconds: float) -> dict[str, Any]:
        st = self.state
        val_loss, val_acc = self.validate()
        row = {"epoch": st["epoch"] + 1, "train_loss": st["train_loss_sum"] / len(self.train_rows),
               "val_loss": val_loss, "val_accuracy": val_acc,
               "lr": self.opt.param_groups[1]["lr"], "seconds": seconds,
               "world_size": self.world_size}
        st["history"].append(row)
        self.log(f"epoch {row['epoch']}/{self.config.epochs}: train loss {row['train_loss']:.4f}"
                 f"  val loss {val_loss:.4f}  val acc {val_acc:.4f}  ({seconds:.1f} s, "
                 f"{len(self.train_rows) / seconds:.1f} img/s)")
        # where the run started: its first step, or the grafted head's validation loss when
        # that is lower (a first step that already jumped far must not hide a divergence)
        start = min(st.get("start_loss", row["train_loss"]), st["history"][0]["val_loss"])
        if not math.isfinite(row["train_loss"]) or row["train_loss"] > DIVERGED * start:
            st["diverged"] = True
            self.log(f"training diverged: epoch {row['epoch']}'s train loss "
                     f"{row['train_loss']:.4g} is over {DIVERGED}x its start ({start:.4g}); "
                     f"lower --lr (the best weights so far are kept).")
        if val_loss < st["best_val_loss"]:
            st.update(best_val_loss=val_loss, best_epoch=row["epoch"], stale=0)
            if self.writer:
                save(self.net.state_dict(), self.out / BEST_MODEL)
        else:
            st["stale"] += 1
        st.update(epoch=row["epoch"], step=0, train_loss_sum=0.0, order=None)
        self.checkpoint()
        if self.config.keep == "all" and self.writer:  # every epoch's state, beside the last
            shutil.copyfile(self.out / CHECKPOINT, self.out / epoch_checkpoint(row["epoch"]))
        for cb in self.callbacks:
            cb.on_epoch_end(self, row)
        return row

    def _epoch_zero(self) -> None:
        """The grafted head before any fine-tuning is epoch 0 and the first best: the run
        must beat it."""
        val_loss, val_acc = self.validate()
        row = {"epoch": 0, "train_loss": None, "val_loss": val_loss, "val_accuracy": val_acc,
               "lr": 0.0, "seconds": 0.0, "world_size": self.world_size}
        self.state["history"].append(row)
        self.state.update(best_val_loss=val_loss, best_epoch=0)
        if self.writer:
            save(self.net.state_dict(), self.out / BEST_MODEL)
        self.log(f"epoch 0 (head as grafted): val loss {val_loss:.4f}  val acc {val_acc:.4f}")
        for cb in self.callbacks:
            cb.on_epoch_end(self, row)

    def run(self) -> bool:
        """Train until ``epochs`` or early stopping; returns whether it stopped early. The best
        weights are in ``out/best_model.pt`` (and loaded into ``net`` at the end)."""
        if not self.state["history"]:
            self._epoch_zero()
        while (self.state["epoch"] < self.config.epochs
               and self.state["stale"] < self.config.patience):
            self.epoch()
        sync(self.rank)  # rank 0 has written the best weights
        self.net.load_state_dict(torch.load(self.out / BEST_MODEL, map_location=self.device,
                                            weights_only=True))
        return self.state["stale"] >= self.config.patience

    # -- checkpoints ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"model": self.net.state_dict(), "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(), "scaler": self.scaler.state_dict(),
                "generator": self.gen.get_state(), "state": self.state}

    @property
    def world_size(self) -> int:
        return 1 if self.rank is None else self.rank.world

    def checkpoint(self) -> None:
        """The full training state to ``out/checkpoint.pt`` (rank 0: every rank holds the
        same state, and a checkpoint continues on any rank count)."""
        if not self.writer:
            return
        path = self.out / CHECKPOINT
        save(checkpoint_record(self.run_config, self.state_dict()), path)
        for cb in self.callbacks:
            cb.on_checkpoint(self, path)

    def restore(self, ckpt: dict[str, Any]) -> None:
        """Continue from a checkpoint: every state, the RNGs included."""
        self.net.load_state_dict(ckpt["model"])
        self.opt.load_state_dict(ckpt["optimizer"])
        self.sched.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.gen.set_state(ckpt["generator"])
        self.state = ckpt["state"]
        set_rng_state(ckpt["rng"])
        self.log(f"resuming {self.out / CHECKPOINT}: epoch {self.state['epoch'] + 1}, step "
                 f"{self.state['step']}")
