"""``finetune()``: from a bank and its best head to a network trained end to end.

One straight line: resolve the head -> reopen the bank's images -> rebuild the backbone up to
the head's tap and graft the head -> hand-off check -> :class:`Trainer` run (resumed from its
checkpoint when asked) -> test accuracy next to the head's -> provenance, metrics, summary.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._distributed import Rank, current_rank, on_rank_zero, process_group
from .._io import (atomic_write, resolve_device, sha256_file, versions, write_csv,
                   write_json)
from ..artefacts import (BEST_MODEL, BEST_MODEL_JSON, CHECKPOINT, METRICS_CSV, METRICS_JSON,
                         SUMMARY, TEST_PREDICTIONS, read_best_model, read_json,
                         read_leaderboard)
from ..bank import FeatureBank
from ..data import reopen_source
from ..exceptions import FeatureBankError, FinetuneError
from ..heads.calibration import calibration_record
from ..heads.persist import load_head
from .checkpoint import load_checkpoint
from .config import FinetuneConfig
from ..network import describe_head, graft
from .handoff import check_handoff, freeze
from .loop import BankImages, Callback, Trainer

__all__ = ["finetune"]

_CONTEXT_KEYS = ("bank_fingerprint", "tap", "classes")  # what the run is on: also checked


def finetune(bank: FeatureBank | str | os.PathLike, *, head: str | os.PathLike | None = None,
             runs: str | os.PathLike | None = None, data_root: str | os.PathLike | None = None,
             out: str | os.PathLike = "finetune", resume: bool = False,
             overwrite: bool = False, device: str = "auto",
             progress: bool = True, callbacks: Sequence[Callback] = (),
             config: FinetuneConfig | None = None, **options: Any) -> dict[str, Any]:
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
    out : path-like, default="finetune"
        Folder for ``checkpoint.pt``, ``best_model.pt`` (+ ``.json``), ``metrics.csv``,
        ``metrics.json`` and ``summary.json``.
    resume : bool, default=False
        Continue from ``out/checkpoint.pt``.
    overwrite : bool, default=False
        Replace a finished run of other arguments in ``out`` (its files are removed first).
        A finished run of the same arguments is up to date: its summary is returned and
        nothing is trained.
    device : {"auto", "cpu", "cuda"}, default="auto"
    progress : bool, default=True
        A bar per epoch and a log line per epoch on stderr.
    callbacks : sequence of Callback
        Hooks called by the training loop (see :class:`featurebank.Callback`).
    config : FinetuneConfig, optional
        The training settings; ``**options`` override its fields.
    **options
        Any :class:`FinetuneConfig` field: ``epochs``, ``batch_size``, ``lr``,
        ``backbone_lr_ratio``, ``optimizer``, ``weight_decay``, ``momentum``,
        ``warmup_epochs``, ``freeze_until``, ``clip_grad_norm``, ``patience``, ``augment``,
        ``train_bn``, ``seed``, ``checkpoint_every``, ``handoff_samples``, ``keep``,
        ``workers``.

    Returns
    -------
    dict
        The summary: head and fine-tuned test accuracy, best epoch, hand-off agreement, paths.
    """
    bank = bank if isinstance(bank, FeatureBank) else FeatureBank(bank)
    config = FinetuneConfig.merged(config, options, "finetune")
    est, head_path = _resolve_head(bank, head, runs)
    out = Path(out)
    run_config = {"bank_fingerprint": bank.fingerprint, "tap": est.featurebank_["tap"],
                  "classes": list(bank.classes), "head": str(head_path), **config.to_dict()}
    dev, rank = resolve_device(device), current_rank()
    job = _Run(bank, est, head_path, out, run_config, config, data_root, callbacks)
    if rank is None:
        return _train(job, dev, None, resume=resume, overwrite=overwrite, progress=progress)
    if dev.type == "cuda":  # one GPU per rank
        dev = torch.device("cuda", rank.local)
        torch.cuda.set_device(dev)
    with process_group(rank, dev.type == "cuda"):
        return _train(job, dev, rank, resume=resume, overwrite=overwrite,
                      progress=progress and rank.rank == 0)


@dataclass(frozen=True)
class _Run:
    """What a fine-tune trains and where, as :func:`finetune` resolved it."""

    bank: FeatureBank
    est: Any
    head_path: Path
    out: Path
    run_config: dict[str, Any]
    config: FinetuneConfig
    data_root: str | os.PathLike | None
    callbacks: Sequence[Callback]


def _train(job: _Run, dev: torch.device, rank: Rank | None, *, resume: bool, overwrite: bool,
           progress: bool) -> dict[str, Any]:
    """The fine-tune itself, in one process or as one torchrun rank: what is decided once
    (up to date, the hand-off) is rank 0's, given to all."""
    bank, est, out, config = job.bank, job.est, job.out, job.config
    done = on_rank_zero(lambda: _finished_run(out, job.run_config, overwrite, resume), rank)
    if done is not None:
        if progress:
            print(f"{out}/ is up to date: a finished fine-tune of the same bank, head and "
                  f"settings (pass overwrite=True, --overwrite, to train it again)",
                  file=sys.stderr, flush=True)
        return done
    ckpt = _checkpoint_to_resume(out, job.run_config, resume)
    source = reopen_source(bank.dataset, data_root=job.data_root)
    torch.manual_seed(config.seed)
    net = graft(bank.spec, est, job.run_config["tap"]).to(dev)
    if dev.type == "cuda":
        net = net.to(memory_format=torch.channels_last)
    images = BankImages(source, bank, net.backbone.preprocess, dev)
    targets, train_rows, val_rows = _rows(bank, est)
    handoff = on_rank_zero(lambda: _handoff(net, est, bank, images, config, progress), rank)
    freeze(net.backbone, config.freeze_until)
    trainer = Trainer(net, config, images, targets, train_rows=train_rows, val_rows=val_rows,
                      out=out, run_config=job.run_config, callbacks=job.callbacks,
                      progress=progress, rank=rank)
    if ckpt is not None:
        trainer.restore(ckpt)
    stopped_early = trainer.run()
    return _finish(trainer, bank, est, job.head_path, handoff, stopped_early)


def _resolve_head(bank: FeatureBank, head, runs) -> tuple[Any, Path]:
    if (head is None) == (runs is None):
        raise FinetuneError("pass exactly one of head= (--head HEAD.joblib) and runs= "
                            "(--runs RUNS_DIR).")
    if runs is not None:
        board = read_leaderboard(runs)
        best = board.best()
        if best is None:
            raise FinetuneError(f"the leaderboard {str(board.path)!r} has no graftable head; fit "
                                f"one (e.g. --heads logreg).")
        head = board.folder / best["file"]
    est = load_head(head, bank=bank)
    if est.featurebank_.get("val_rows") is None:
        raise FinetuneError(f"head {str(head)!r} records no validation rows; refit it with "
                            f"featurebank fit so the fine-tune validates on unseen rows.")
    if est.featurebank_.get("refit"):
        raise FinetuneError(f"head {str(head)!r} was refitted on its validation rows (fit "
                            f"--refit), so they are no longer unseen and cannot drive early "
                            f"stopping; fine-tune a head fitted without --refit.")
    return est, Path(head)


def _finished_run(out: Path, run_config: dict[str, Any], overwrite: bool, resume: bool
                  ) -> dict[str, Any] | None:
    """The summary of a finished run in ``out`` with the same result-changing settings (up to
    date), None when there is none (or it was removed: ``overwrite``; or ``resume`` asks the
    checkpoint, which says what differs); another finished run is refused, never trained
    over."""
    if not (out / SUMMARY).is_file():
        return None
    keys = _CONTEXT_KEYS + FinetuneConfig.result_keys() + ("head", "calibrate")
    try:  # a folder of an earlier version, without a setting, had its default
        saved = {"calibrate": False, **read_best_model(out).config}
    except FeatureBankError:
        saved = {}
    if not overwrite and all(saved.get(k) == run_config.get(k) for k in keys):
        return read_json(out / SUMMARY, "a fine-tune's summary", "rerun with --overwrite")
    if resume and not overwrite:
        return None
    if not overwrite:
        changed = "; ".join(f"{k}: finished {saved.get(k)!r}, now {run_config.get(k)!r}"
                            for k in keys if saved.get(k) != run_config.get(k))
        raise FinetuneError(f"{str(out)!r} holds a finished fine-tune of other settings "
                            f"({changed}); pass overwrite=True (--overwrite) to replace it, or "
                            f"choose another out= (--out).")
    for name in (CHECKPOINT, BEST_MODEL, BEST_MODEL_JSON, METRICS_JSON, METRICS_CSV, SUMMARY,
                 TEST_PREDICTIONS):
        (out / name).unlink(missing_ok=True)
    for old in out.glob("checkpoint-epoch*.pt"):
        old.unlink()
    return None


def _checkpoint_to_resume(out: Path, run_config: dict[str, Any], resume: bool):
    path = out / CHECKPOINT
    if not resume:
        if path.exists():
            raise FinetuneError(f"{str(path)!r} exists: pass resume=True (--resume) to continue "
                                f"that run, or choose another out= (--out).")
        return None
    return load_checkpoint(path, run_config, _CONTEXT_KEYS + FinetuneConfig.result_keys())


def _calibration(trainer: Trainer, test_logits, bank: FeatureBank, est: Any) -> dict[str, Any]:
    """A temperature for the final network, fitted on its validation logits by log loss, and
    the log loss and reliability before and after on validation and test."""
    val = trainer.val_rows
    splits = {"val": (trainer.logits(val, "train").cpu().double().numpy(),
                      trainer.y[torch.as_tensor(val, device=trainer.device)].cpu().numpy())}
    if test_logits is not None:
        splits["test"] = (test_logits.cpu().double().numpy(),
                          np.searchsorted(np.asarray(est.classes_), bank.labels("test")))
    return calibration_record(splits)


def _rows(bank: FeatureBank, est: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Class index of every train row, and the train rows outside / inside the head's
    validation split."""
    classes, labels = np.asarray(est.classes_), bank.labels("train")
    if not np.isin(labels, classes).all():
        raise FinetuneError("the bank's train split has classes the head never saw; refit it.")
    val_rows = np.asarray(est.featurebank_["val_rows"], dtype=np.int64)
    train_rows = np.setdiff1d(np.arange(len(labels)), val_rows)
    return np.searchsorted(classes, labels), train_rows, val_rows


def _handoff(net, est, bank, images, config: FinetuneConfig, progress: bool) -> dict[str, Any]:
    n = bank.num_rows("train")
    rng = np.random.default_rng(config.seed)
    rows = np.sort(rng.choice(n, min(config.handoff_samples, n), replace=False))
    agreement, gap = check_handoff(net, est, bank, rows, images, batch_size=config.batch_size)
    if progress:
        print(f"hand-off agreement: {agreement:.1%} of {len(rows)} images (median logit gap "
              f"{gap:.2%} of the logits' spread)", file=sys.stderr, flush=True)
    return {"handoff_agreement": agreement, "handoff_logit_gap": gap,
            "handoff_images": int(len(rows))}


def _finish(trainer: Trainer, bank: FeatureBank, est: Any, head_path: Path,
            handoff: dict[str, Any], stopped_early: bool) -> dict[str, Any]:
    """Test accuracy of the best weights and of the head; write the run's files."""
    st, out, tap = trainer.state, trainer.out, trainer.run_config["tap"]
    summary = {"head": str(head_path), "head_name": est.featurebank_.get("name"), "tap": tap,
               **handoff, "best_epoch": st["best_epoch"], "epochs_run": st["epoch"],
               "stopped_early": bool(stopped_early), "diverged": bool(st.get("diverged")),
               "best_val_loss": st["best_val_loss"],
               "best_val_accuracy": next(r["val_accuracy"] for r in st["history"]
                                         if r["epoch"] == st["best_epoch"]),
               "head_test_accuracy": None, "test_accuracy": None}
    has_test = "test" in bank.splits and bank.num_rows("test")
    test_logits = trainer.logits(np.arange(bank.num_rows("test")), "test") if has_test else None
    calibration = _calibration(trainer, test_logits, bank, est) if trainer.config.calibrate \
        else None
    temperature = calibration["temperature"] if calibration else 1.0
    summary.update(temperature=temperature, world_size=trainer.world_size)
    if has_test:
        Xt, yt = bank.load("test", tap)
        summary["head_test_accuracy"] = float(est.score(Xt, yt))
        proba = torch.softmax(test_logits / temperature, 1).cpu().numpy()
        target = np.searchsorted(np.asarray(est.classes_), yt)
        summary["test_accuracy"] = float((proba.argmax(1) == target).mean())
    if not trainer.writer:  # rank 0 writes the run's files
        return summary
    if has_test:  # for `featurebank report`: columns in head_classes order, labels as the bank's
        atomic_write(out / TEST_PREDICTIONS, lambda f: np.savez(
            f, proba=proba.astype(np.float32), labels=yt, rows=np.arange(len(yt))))
    write_json(out / BEST_MODEL_JSON, {
        "bank": str(bank.path), "bank_fingerprint": bank.fingerprint, "spec": bank.spec.to_json(),
        "classes": list(bank.classes), "head_classes": np.asarray(est.classes_).tolist(),
        "tap": tap, "head_module": describe_head(trainer.net.head),
        "config": trainer.run_config, "best_epoch": st["best_epoch"],
        "temperature": temperature, "calibration": calibration,
        "world_size": trainer.world_size,
        "versions": versions(), "weights_sha256": sha256_file(out / BEST_MODEL)})
    write_json(out / METRICS_JSON, st["history"])
    write_csv(out / METRICS_CSV, st["history"], list(dict.fromkeys(
        k for row in st["history"] for k in row)))  # rows of older versions lack world_size
    if trainer.config.keep == "best":  # the training state goes: the run cannot be resumed
        (out / CHECKPOINT).unlink(missing_ok=True)
    summary["kept"] = sorted(p.name for p in out.iterdir() if p.suffix == ".pt")
    write_json(out / SUMMARY, summary)
    return summary
