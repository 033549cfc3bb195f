"""Fine-tune from the best head: graft it onto the backbone at its tap, train end to end.

One straight line: the bank's spec rebuilds the backbone up to the head's tap and the bank's
dataset provenance reopens the images -> ``to_torch(head)`` is attached -> a hand-off check on a
sample of images makes sure the assembled network reproduces the head's predictions -> training
(discriminative learning rates, warm-up then cosine, AdamW or SGD, optional frozen prefix,
gradient clipping, AMP and channels_last on CUDA, device-side crop-and-flip augmentation) on the
train rows outside the head's validation split -> validation every epoch, early stopping on its
loss, best weights kept -> test accuracy next to the head's.

Checkpoints hold everything needed to continue: model, optimizer, scheduler, grad scaler, epoch,
step within the epoch, best metric, early-stopping counter, the epoch's data order and every RNG
state, so ``resume=True`` ends where an uninterrupted run ends. They are written atomically.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .backbones import Backbone, _sha256, get_backbone
from .bank import FeatureBank, _versions
from .data import ImageSource, open_source
from .exceptions import FeatureBankError
from .extract import resolve_device
from .heads._base import _blockwise_mean_scale
from .heads.export import to_torch
from .heads.persist import load_head

__all__ = ["FinetuneError", "GraftedNetwork", "finetune"]

_CHECKPOINT = "checkpoint.pt"
# settings that change the result: a resumed run must use the ones it started with
_RESULT_KEYS = ("bank_fingerprint", "tap", "classes", "epochs", "batch_size", "lr",
                "backbone_lr_ratio", "optimizer", "weight_decay", "momentum", "warmup_epochs",
                "freeze_until", "clip_grad_norm", "patience", "augment", "train_bn", "seed")


class FinetuneError(FeatureBankError):
    """A fine-tune cannot start or continue: bad head, moved data, bad checkpoint."""


class GraftedNetwork(nn.Module):
    """The backbone up to its tap, followed by a head as a torch module: images -> logits."""

    def __init__(self, backbone: Backbone, head: nn.Module, tap: str):
        super().__init__()
        self.backbone, self.head, self.tap = backbone, head, tap

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised ``(N, 3, S, S)`` input (``backbone.preprocess``) to logits."""
        return self.head(self.backbone(x)[self.tap].float())


class _Standardize(nn.Module):
    """Fixed ``(x - mean) / scale`` of the tap's features (buffers, not trained)."""

    def __init__(self, mean: np.ndarray, scale: np.ndarray):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.scale


def _trainable_head(est: Any, bank: FeatureBank, tap: str) -> nn.Module:
    """``to_torch(head)`` with its first linear layer moved to standardised coordinates.

    ``to_torch`` folds the standardisation into the first layer, so its weights are ``W / scale``:
    fine for inference, but gradient steps on them are badly scaled (features with a small spread
    get huge weights). Training the same function as ``Standardize -> Linear(W, b')`` keeps the
    steps in the coordinates the head was fitted in. The function is unchanged.
    """
    module = to_torch(est)
    first = next(m for m in module.modules() if isinstance(m, nn.Linear))
    mean, scale = _blockwise_mean_scale(X for X, _ in bank.iter_batches("train", tap,
                                                                       batch_size=8192))
    with torch.no_grad():
        W = first.weight.double()
        first.bias.copy_(first.bias.double() + W @ torch.from_numpy(mean))
        first.weight.copy_(W * torch.from_numpy(scale))
    return nn.Sequential(_Standardize(mean, scale), module)


def _resolve_head(bank: FeatureBank, head, runs) -> tuple[Any, Path]:
    if (head is None) == (runs is None):
        raise FinetuneError("pass exactly one of head= (--head HEAD.joblib) and runs= "
                            "(--runs RUNS_DIR).")
    if runs is not None:
        board_path = Path(runs) / "leaderboard.json"
        if not board_path.is_file():
            raise FinetuneError(f"{str(board_path)!r} does not exist; run featurebank fit "
                                f"--out {runs} first.")
        board = json.loads(board_path.read_text())
        best = next((r for r in board["rows"] if r.get("best")), None)
        if best is None:
            raise FinetuneError(f"the leaderboard {str(board_path)!r} has no graftable head; fit "
                                f"one (e.g. --heads logreg).")
        head = Path(runs) / best["file"]
    est = load_head(head, bank=bank)
    if est.featurebank_.get("val_rows") is None:
        raise FinetuneError(f"head {str(head)!r} records no validation rows; refit it with "
                            f"featurebank fit so the fine-tune validates on unseen rows.")
    return est, Path(head)


def _weights_for(spec: dict[str, Any]) -> str:
    """The ``weights=`` argument that rebuilds the bank's backbone."""
    wid = spec["weights"]
    if wid.startswith("file:sha256:"):
        path = spec.get("weights_path")
        if not path or not Path(path).is_file():
            raise FinetuneError(f"the bank was extracted with the weights file {path!r}, which "
                                f"is not there any more; put it back.")
        if f"file:sha256:{_sha256(Path(path))}" != wid:
            raise FinetuneError(f"the weights file {path!r} changed since the bank was "
                                f"extracted (its SHA-256 differs); restore the original file.")
        return path
    if wid.startswith("torchvision:"):
        return wid.split(".")[-1]
    return "DEFAULT" if wid.startswith("timm:") else "none"


def _reopen_source(bank: FeatureBank, data_root) -> ImageSource:
    d = bank.dataset
    if d["name"] in ("cifar10", "cifar100"):
        source = open_source(d["name"], data_root=data_root or d["source"])
    elif d["name"] in ("folder", "npz"):
        source = open_source(f"{d['name']}:{data_root or d['source']}")
    else:
        raise FinetuneError(f"the bank's images came from {d['name']!r} (in memory), which cannot "
                            f"be reopened; extract from a dataset on disk to fine-tune.")
    if source.fingerprint() != d["fingerprint"]:
        raise FinetuneError(f"the images at {source.location!r} differ from those the bank was "
                            f"extracted from (source fingerprint changed); pass data_root= "
                            f"(--data-root) pointing at the original data.")
    return source


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random crop with zero padding (1/8 of the side: 4 px at 32 px) and horizontal flip of a
    uint8 ``(N, H, W, 3)`` batch, per image, on the batch's device."""
    n, h, w, _ = x.shape
    pad = max(1, h // 8)
    padded = nn.functional.pad(x, (0, 0, pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    flip = torch.rand(n, generator=gen) < 0.5
    # one gather: row r of image i comes from padded row oy[i] + r, column likewise (flipped)
    rows = (oy[:, None] + torch.arange(h)).to(x.device)
    cols = ox[:, None] + torch.arange(w)
    cols = torch.where(flip[:, None], cols.flip(1), cols).to(x.device)
    i = torch.arange(n, device=x.device)[:, None, None]
    return padded[i, rows[:, :, None], cols[:, None, :]]


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {"python": random.getstate(), "torch": torch.random.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)),
                      *np_state[2:]]}


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.random.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))


def _save_atomic(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _load_checkpoint(path: Path, config: dict[str, Any]) -> dict[str, Any]:
    if not path.is_file():
        raise FinetuneError(f"resume=True but there is no checkpoint {str(path)!r}; start "
                            f"without --resume.")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        saved = ckpt["config"]
    except Exception as e:
        raise FinetuneError(f"checkpoint {str(path)!r} is damaged ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''}); delete it to start "
                            f"over.") from None
    diff = {k: (saved.get(k), config.get(k)) for k in _RESULT_KEYS if saved.get(k) != config.get(k)}
    if diff:
        detail = "; ".join(f"{k}: checkpoint {a!r}, now {b!r}" for k, (a, b) in diff.items())
        raise FinetuneError(f"checkpoint {str(path)!r} belongs to another fine-tune ({detail}); "
                            f"resume with the same bank, head and settings, or use another out=.")
    return ckpt


def _freeze(backbone: Backbone, freeze_until: str | None) -> None:
    if not freeze_until:
        return
    names = [n for n, _ in backbone.model.named_parameters()]
    inside = [i for i, n in enumerate(names) if n.startswith(f"{freeze_until}.")]
    if not inside:
        modules = sorted({n.rsplit(".", 1)[0] for n in names})
        raise FinetuneError(f"freeze_until={freeze_until!r} names no module with parameters; "
                            f"expected one of {modules[:12]}{' ...' if len(modules) > 12 else ''}.")
    for i, (_, p) in enumerate(backbone.model.named_parameters()):
        if i <= inside[-1]:
            p.requires_grad_(False)


def finetune(bank: FeatureBank | str | os.PathLike, *, head: str | os.PathLike | None = None,
             runs: str | os.PathLike | None = None, data_root: str | os.PathLike | None = None,
             epochs: int = 10, batch_size: int = 64, lr: float = 1e-3,
             backbone_lr_ratio: float = 0.1, optimizer: str = "adamw",
             weight_decay: float = 1e-4, momentum: float = 0.9, warmup_epochs: float = 1.0,
             freeze_until: str | None = None, clip_grad_norm: float | None = 1.0,
             patience: int = 3, augment: bool = True, train_bn: bool = False,
             device: str = "auto",
             out: str | os.PathLike = "finetune", resume: bool = False,
             checkpoint_every: int | None = None, handoff_samples: int = 512, seed: int = 0,
             progress: bool = True) -> dict[str, Any]:
    """Graft a fitted head onto its backbone and fine-tune the whole network.

    Parameters
    ----------
    bank : FeatureBank or path-like
        The bank the head was fitted on; its spec rebuilds the backbone and its dataset
        provenance reopens the images.
    head, runs : path-like
        A saved head, or a ``featurebank fit`` output folder (its best graftable head is used).
    data_root : path-like, optional
        Where the images are now, when they moved since the extraction.
    epochs, batch_size : int
    lr : float, default=1e-3
        Learning rate of the head; the backbone's is ``lr * backbone_lr_ratio``.
    backbone_lr_ratio : float, default=0.1
    optimizer : {"adamw", "sgd"}, default="adamw"
        SGD uses ``momentum`` (Nesterov).
    weight_decay, momentum : float
    warmup_epochs : float, default=1.0
        Linear warm-up, then cosine decay to zero at the last step.
    freeze_until : str, optional
        Freeze the backbone's parameters up to and including this module (e.g.
        ``"features.18"``).
    clip_grad_norm : float or None, default=1.0
    patience : int, default=3
        Stop when the validation loss has not improved for this many epochs.
    augment : bool, default=True
        Random crop with padding and horizontal flip, on the device.
    train_bn : bool, default=False
        Let BatchNorm layers update their running statistics and normalise with batch
        statistics while training. By default they stay as they were at extraction (eval mode),
        so the network trains on the same features the head was fitted on, whatever the batch
        size.
    device : {"auto", "cpu", "cuda"}, default="auto"
    out : path-like, default="finetune"
        Folder for ``checkpoint.pt``, ``best_model.pt`` (+ ``.json``), ``metrics.csv``,
        ``metrics.json`` and ``summary.json``.
    resume : bool, default=False
        Continue from ``out/checkpoint.pt``.
    checkpoint_every : int, optional
        Also checkpoint every this many steps (always at each epoch's end).
    handoff_samples : int, default=512
        Images in the hand-off check.
    seed : int, default=0
    progress : bool, default=True

    Returns
    -------
    dict
        The summary: head and fine-tuned test accuracy, best epoch, hand-off agreement, paths.
    """
    bank = bank if isinstance(bank, FeatureBank) else FeatureBank(bank)
    if optimizer not in ("adamw", "sgd"):
        raise FinetuneError(f"optimizer must be 'adamw' or 'sgd', got {optimizer!r}.")
    for name, value in (("epochs", epochs), ("batch_size", batch_size), ("patience", patience)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise FinetuneError(f"{name} must be a positive integer, got {value!r}.")
    est, head_path = _resolve_head(bank, head, runs)
    tap = est.featurebank_["tap"]
    out = Path(out)
    ckpt_path = out / _CHECKPOINT
    if ckpt_path.exists() and not resume:
        raise FinetuneError(f"{str(ckpt_path)!r} exists: pass resume=True (--resume) to continue "
                            f"that run, or choose another out=.")
    config = {"bank_fingerprint": bank.fingerprint, "tap": tap, "classes": list(bank.classes),
              "head": str(head_path), "epochs": int(epochs), "batch_size": int(batch_size),
              "lr": float(lr), "backbone_lr_ratio": float(backbone_lr_ratio),
              "optimizer": optimizer, "weight_decay": float(weight_decay),
              "momentum": float(momentum), "warmup_epochs": float(warmup_epochs),
              "freeze_until": freeze_until, "clip_grad_norm": clip_grad_norm,
              "patience": int(patience), "augment": bool(augment), "train_bn": bool(train_bn),
              "seed": int(seed)}
    ckpt = _load_checkpoint(ckpt_path, config) if resume else None
    dev = resolve_device(device)
    cuda = dev.type == "cuda"
    spec = bank.spec
    size = int(spec["image_size"])
    source = _reopen_source(bank, data_root)
    interp = spec["interpolation"]
    log = (lambda msg: print(msg, file=sys.stderr, flush=True)) if progress else (lambda m: None)

    torch.manual_seed(seed)
    backbone = get_backbone(spec["model"], weights=_weights_for(spec), taps=[tap])
    net = GraftedNetwork(backbone, _trainable_head(est, bank, tap), tap).to(dev)
    if cuda:
        net = net.to(memory_format=torch.channels_last)
    classes = np.asarray(est.classes_)
    labels = bank.labels("train")
    if not np.isin(labels, classes).all():
        raise FinetuneError("the bank's train split has classes the head never saw; refit it.")
    targets = np.searchsorted(classes, labels)
    index = {split: bank.index(split) for split in bank.splits}  # bank row -> source position
    gen = torch.Generator().manual_seed(seed)  # augmentation draws, kept in the checkpoint

    def images(rows: np.ndarray, which: str = "train", augment: bool = False) -> torch.Tensor:
        """Normalised images of bank rows of a split (augmented as uint8 on the device)."""
        x = source.splits[which].take(index[which][rows], image_size=size, interpolation=interp)
        x = torch.from_numpy(x).to(dev, non_blocking=True)
        return backbone.preprocess(_augment(x, gen) if augment else x, size)

    amp_dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float16

    # -- hand-off: the assembled network must reproduce the head's predictions ------------------
    rng = np.random.default_rng(seed)
    n_train_rows = len(labels)
    sample = np.sort(rng.choice(n_train_rows, min(handoff_samples, n_train_rows), replace=False))
    net.eval()
    with torch.inference_mode(), torch.autocast(dev.type, dtype=amp_dtype, enabled=cuda):
        net_logits = torch.cat([net(images(sample[i:i + batch_size])).float().cpu()
                                for i in range(0, len(sample), batch_size)])
    feats = bank.features("train", tap)[sample].astype(np.float32)
    head_pred = np.searchsorted(classes, est.predict(feats))
    with torch.no_grad():
        head_logits = to_torch(est)(torch.from_numpy(feats))
    agreement = float((net_logits.argmax(1).numpy() == head_pred).mean())
    # logit gap relative to the logits' own spread: the bank's float16 rounding stays far below
    gap = float((net_logits - head_logits).abs().median() / head_logits.std().clamp(min=1e-6))
    log(f"hand-off agreement: {agreement:.1%} of {len(sample)} images "
        f"(median logit gap {gap:.2%} of the logits' spread)")
    if agreement < 0.99 or gap > 0.05:
        raise FinetuneError(
            f"the rebuilt network agrees with the head on only {agreement:.1%} of {len(sample)} "
            f"images (median logit gap {gap:.1%}; at least 99% agreement and at most 5% gap "
            f"expected): the weights, images or preprocessing differ from the extraction (a "
            f"changed weights file, moved or edited data?).")

    # -- training set-up ------------------------------------------------------------------------
    val_rows = np.asarray(est.featurebank_["val_rows"], dtype=np.int64)
    train_rows = np.setdiff1d(np.arange(n_train_rows), val_rows)
    _freeze(backbone, freeze_until)
    groups = [{"params": [p for p in backbone.parameters() if p.requires_grad],
               "lr": lr * backbone_lr_ratio},
              {"params": list(net.head.parameters()), "lr": lr}]
    opt = (torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay) if optimizer == "adamw"
           else torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=True,
                                weight_decay=weight_decay))
    steps_per_epoch = math.ceil(len(train_rows) / batch_size)
    total = epochs * steps_per_epoch
    warm = min(total, max(0, round(warmup_epochs * steps_per_epoch)))

    def schedule(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    scaler = torch.amp.GradScaler("cuda", enabled=cuda and amp_dtype == torch.float16)
    state = {"epoch": 0, "step": 0, "best_val_loss": math.inf, "best_epoch": 0, "stale": 0,
             "history": [], "train_loss_sum": 0.0, "order": None}
    best_path = out / "best_model.pt"
    if ckpt is not None:
        net.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        gen.set_state(ckpt["generator"])
        state = ckpt["state"]
        _set_rng_state(ckpt["rng"])
        log(f"resuming {ckpt_path}: epoch {state['epoch'] + 1}, step {state['step']}")
    out.mkdir(parents=True, exist_ok=True)

    def checkpoint() -> None:
        _save_atomic({"config": config, "model": net.state_dict(), "optimizer": opt.state_dict(),
                      "scheduler": sched.state_dict(), "scaler": scaler.state_dict(),
                      "generator": gen.get_state(), "state": state, "rng": _rng_state(),
                      "versions": _versions()}, ckpt_path)

    loss_fn = nn.CrossEntropyLoss()
    y_all = torch.as_tensor(targets, device=dev)

    @torch.no_grad()
    def evaluate(rows: np.ndarray, y: torch.Tensor, which: str = "train") -> tuple[float, float]:
        net.eval()
        loss, correct = 0.0, 0
        for i in range(0, len(rows), batch_size):
            with torch.autocast(dev.type, dtype=amp_dtype, enabled=cuda):
                logits = net(images(rows[i:i + batch_size], which)).float()
            yb = y[i:i + batch_size]
            loss += float(nn.functional.cross_entropy(logits, yb, reduction="sum"))
            correct += int((logits.argmax(1) == yb).sum())
        return loss / len(rows), correct / len(rows)

    y_val = y_all[torch.as_tensor(val_rows, device=dev)]
    if not state["history"]:  # the grafted head before any fine-tuning is epoch 0, the first
        val_loss, val_acc = evaluate(val_rows, y_val)  # best: fine-tuning must beat it
        state["history"].append({"epoch": 0, "train_loss": None, "val_loss": val_loss,
                                 "val_accuracy": val_acc, "lr": 0.0, "seconds": 0.0})
        state.update(best_val_loss=val_loss, best_epoch=0)
        _save_atomic(net.state_dict(), best_path)
        log(f"epoch 0 (head as grafted): val loss {val_loss:.4f}  val acc {val_acc:.4f}")

    # -- epochs ---------------------------------------------------------------------------------
    stopped_early = state["stale"] >= patience
    while state["epoch"] < epochs and not stopped_early:
        epoch = state["epoch"]
        if state["order"] is None:  # the epoch's data order, kept in the checkpoint
            state["order"] = torch.from_numpy(
                np.random.default_rng([seed, epoch]).permutation(train_rows))
        order = state["order"].numpy()
        t0 = time.perf_counter()
        net.train()
        if not train_bn:  # BatchNorm keeps the statistics the bank's features were made with
            for m in net.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        with tqdm(total=len(order), initial=min(state["step"] * batch_size, len(order)),
                  unit="img", desc=f"train epoch {epoch + 1}/{epochs}", leave=False,
                  disable=not progress, file=sys.stderr, dynamic_ncols=True,
                  smoothing=0.1) as bar:
            while state["step"] < steps_per_epoch:
                rows = order[state["step"] * batch_size:(state["step"] + 1) * batch_size]
                x = images(rows, augment=augment)
                with torch.autocast(dev.type, dtype=amp_dtype, enabled=cuda):
                    loss = loss_fn(net(x).float(), y_all[torch.as_tensor(rows, device=dev)])
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if clip_grad_norm:
                    scaler.unscale_(opt)
                    nn.utils.clip_grad_norm_(net.parameters(), clip_grad_norm)
                scaler.step(opt)
                scaler.update()
                sched.step()
                step_loss = float(loss.detach())
                state["train_loss_sum"] += step_loss * len(rows)
                state["step"] += 1
                bar.update(len(rows))
                bar.set_postfix(loss=f"{step_loss:.4f}", refresh=False)
                if checkpoint_every and sched.last_epoch % checkpoint_every == 0:
                    checkpoint()
        val_loss, val_acc = evaluate(val_rows, y_val)
        row = {"epoch": epoch + 1, "train_loss": state["train_loss_sum"] / len(train_rows),
               "val_loss": val_loss, "val_accuracy": val_acc,
               "lr": opt.param_groups[1]["lr"], "seconds": time.perf_counter() - t0}
        state["history"].append(row)
        log(f"epoch {row['epoch']}/{epochs}: train loss {row['train_loss']:.4f}  val loss "
            f"{val_loss:.4f}  val acc {val_acc:.4f}  ({row['seconds']:.1f} s, "
            f"{len(train_rows) / row['seconds']:.1f} img/s)")
        if val_loss < state["best_val_loss"]:
            state.update(best_val_loss=val_loss, best_epoch=epoch + 1, stale=0)
            _save_atomic(net.state_dict(), best_path)
        else:
            state["stale"] += 1
        state.update(epoch=epoch + 1, step=0, train_loss_sum=0.0, order=None)
        stopped_early = state["stale"] >= patience
        checkpoint()

    # -- the best weights, the test split, the report -------------------------------------------
    net.load_state_dict(torch.load(best_path, map_location=dev, weights_only=True))
    summary = {"head": str(head_path), "head_name": est.featurebank_.get("name"), "tap": tap,
               "handoff_agreement": agreement, "handoff_logit_gap": gap,
               "handoff_images": int(len(sample)),
               "best_epoch": state["best_epoch"], "epochs_run": state["epoch"],
               "stopped_early": bool(stopped_early), "best_val_loss": state["best_val_loss"],
               "best_val_accuracy": next(r["val_accuracy"] for r in state["history"]
                                         if r["epoch"] == state["best_epoch"]),
               "head_test_accuracy": None, "test_accuracy": None}
    if "test" in bank.splits and bank.num_rows("test"):
        Xt, yt = bank.load("test", tap)
        summary["head_test_accuracy"] = float(est.score(Xt, yt))
        _, summary["test_accuracy"] = evaluate(
            np.arange(len(yt)), torch.as_tensor(np.searchsorted(classes, yt), device=dev), "test")
    provenance = {"bank": str(bank.path), "bank_fingerprint": bank.fingerprint, "spec": spec,
                  "classes": list(bank.classes), "head_classes": classes.tolist(), "tap": tap,
                  "config": config, "best_epoch": state["best_epoch"], "versions": _versions(),
                  "weights_sha256": hashlib.sha256(best_path.read_bytes()).hexdigest()}
    (out / "best_model.json").write_text(json.dumps(provenance, indent=2, default=str))
    (out / "metrics.json").write_text(json.dumps(state["history"], indent=2))
    with open(out / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(state["history"][0]))
        w.writeheader()
        w.writerows(state["history"])
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    log(f"head test accuracy {summary['head_test_accuracy']}, fine-tuned test accuracy "
        f"{summary['test_accuracy']} (best epoch {state['best_epoch']})")
    return summary
