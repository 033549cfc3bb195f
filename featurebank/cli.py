"""The ``featurebank`` command: parse, call the library, print. No logic of its own.

Each command is one :class:`Command` record: its help line, the function that adds its
arguments (called only for the command being run, so ``featurebank --help`` imports no torch),
the function that runs it, and what an interrupted run leaves behind.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ._io import FRACTION, IMAGE_SIZE, NON_NEGATIVE_INT, POSITIVE_INT
from .exceptions import FeatureBankError

__all__ = ["COMMANDS", "Command", "main"]

_DEVICES = ["auto", "cpu", "cuda"]


def _model(name: str) -> str:
    from .extraction import _parse_model

    return _parse_model(name)


def _heads(value: str) -> list[str]:
    from .heads.registry import check_head_names

    try:
        return check_head_names(h.strip() for h in value.split(",") if h.strip())
    except FeatureBankError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _views(value: str) -> str | int:
    """``--views``: all, none, or a count of random views."""
    if value in ("all", "none"):
        return value
    try:
        return NON_NEGATIVE_INT.parse(value)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected all, none or a count of random views "
                                         f"(0, 1, 2, ...); got {value!r}") from None


def _extract_parser(e: argparse.ArgumentParser) -> None:
    from .data import list_datasets
    from .extraction import ExtractConfig

    e.description = ("Run a frozen backbone once over an image dataset and write an HDF5 "
                     "feature bank. Rerunning an interrupted extraction with the same arguments "
                     "resumes it.")
    e.add_argument("--dataset", default="cifar10",
                   help=f"one of {', '.join(list_datasets())} (default: cifar10)")
    _cifar_arguments(e)
    ExtractConfig.add_arguments(e)
    e.add_argument("--device", default="auto", choices=_DEVICES,
                   help="auto = CUDA when present (default: auto)")
    e.add_argument("--out", default=None, metavar="BANK.h5",
                   help="output bank file (default: DATASET_MODEL_WEIGHTS_SIZEpx.h5 in the "
                        "working folder)")
    e.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="continue an unfinished extraction of the same arguments")
    e.add_argument("--overwrite", action="store_true",
                   help="extract again over an existing bank (without it, a bank of the same "
                        "arguments is up to date and one of other arguments is refused)")
    e.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _cifar_arguments(p: argparse.ArgumentParser) -> None:
    """Where CIFAR is, and whether to download it: every command that opens a dataset."""
    p.add_argument("--data-root", default="data", metavar="DIR",
                   help="folder holding cifar-10-batches-py / cifar-100-python (default: data)")
    p.add_argument("--download", action="store_true",
                   help="download CIFAR into --data-root when missing (needs a network)")


def _run_parser(r: argparse.ArgumentParser) -> None:
    from .data import list_datasets
    from .extraction import ExtractConfig

    r.description = ("The whole job in one folder: extract a bank, fit heads on it, fine-tune "
                     "the best one (with --finetune-epochs), write the report. Each step is "
                     "skipped when its result exists for the same arguments, so a rerun does "
                     "nothing and an interrupted run continues.")
    r.add_argument("dataset", metavar="DATASET", help=f"one of {', '.join(list_datasets())}")
    r.add_argument("--out", default="run", metavar="DIR",
                   help="folder for bank.h5, runs/, finetune/ and report/ (default: run)")
    _cifar_arguments(r)
    ExtractConfig.add_arguments(r)
    r.add_argument("--heads", default="logreg,mlp", type=_heads, metavar="HEAD[,HEAD...]",
                   help="heads to fit (default: logreg,mlp)")
    r.add_argument("--tta", action="store_true",
                   help="with --views or --mirror: also score each head with the mirror "
                        "average, chosen on validation (fit --tta)")
    r.add_argument("--finetune-epochs", type=NON_NEGATIVE_INT.parse, default=0, metavar="N",
                   help="fine-tune the best head for N epochs (default: 0, no fine-tune)")
    r.add_argument("--device", default="auto", choices=_DEVICES,
                   help="auto = CUDA when present (default: auto)")
    r.add_argument("--overwrite", action="store_true",
                   help="redo every step (without it, results of the same arguments are kept "
                        "and results of other arguments in DIR are refused)")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def _suite_parser(s: argparse.ArgumentParser) -> None:
    from .heads.registry import list_heads

    s.description = ("A probe suite: every model on every dataset, every tap, head, shot count "
                     "and seed, in one resumable command and one table (results.csv, "
                     "summary.csv, report.html). Each bank is extracted once into a cache; "
                     "rerun the same command to continue a suite that stopped.")
    s.add_argument("config", nargs="?", metavar="SUITE.toml",
                   help="the suite as a TOML file (keys: models, datasets, taps, heads, "
                        "shots, seeds, val_fraction, and an [extract] table); the flags below "
                        "override it")
    s.add_argument("--models", metavar="MODEL[,MODEL...]",
                   help="backbones, as extract --model (vgg19,resnet50,timm:NAME)")
    s.add_argument("--datasets", metavar="DATASET[,DATASET...]",
                   help="datasets, as extract --dataset (cifar10,folder:PATH,npz:PATH,...)")
    s.add_argument("--taps", metavar="TAP[,TAP...]",
                   help="taps to extract and probe (module names work too), or all: each "
                        "model's named taps (default: each model's default tap)")
    s.add_argument("--heads", type=_heads, metavar="HEAD[,HEAD...]",
                   help=f"heads from {{{','.join(list_heads())}}} (default: logreg)")
    s.add_argument("--shots", metavar="K[,K...]",
                   help="training images per class, and all (default: all)")
    s.add_argument("--seeds", metavar="SEED[,SEED...]", help="seeds of the draws (default: 0)")
    s.add_argument("--val-fraction", type=FRACTION.parse, default=None,
                   help="fit's validation fraction for shots 'all' (default: 0.1)")
    s.add_argument("--views", type=NON_NEGATIVE_INT.parse, default=None, metavar="K",
                   help="K random augmented views of each train image (and every image's "
                        "mirror) in each bank; each cell's heads choose on validation between "
                        "the centre rows and the views, with and without the mirror average "
                        "(default: 0, none)")
    for flag, kind, meta, what in (("--image-size", int, "PX", "input size"),
                                   ("--weights", str, "W", "pretrained weights (DEFAULT, none, "
                                                           "NAME, PATH)"),
                                   ("--dtype", str, "DTYPE", "float16 or float32"),
                                   ("--batch-size", int, "N", "extraction batch"),
                                   ("--limit", int, "N", "images per split")):
        s.add_argument(flag, type=kind, default=None, metavar=meta,
                       help=f"every bank's {what} (as extract)")
    s.add_argument("--out", default="suite", metavar="DIR",
                   help="folder for the results, cells/ and banks/ (default: suite)")
    s.add_argument("--cache", default=None, metavar="DIR",
                   help="a folder of banks shared between suites (default: DIR/banks)")
    _cifar_arguments(s)
    s.add_argument("--device", default="auto", choices=_DEVICES)
    s.add_argument("--markdown", action="store_true",
                   help="print the summary as a markdown table to paste")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar or cell lines")


def _run_suite(args: argparse.Namespace) -> None:
    from .suites import SuiteConfig, markdown, summarize, suite

    extract = {k: getattr(args, k) for k in ("image_size", "weights", "dtype", "batch_size",
                                             "limit") if getattr(args, k) is not None}
    given = {"models": args.models, "datasets": args.datasets, "taps": args.taps,
             "heads": args.heads, "shots": args.shots, "seeds": args.seeds,
             "val_fraction": args.val_fraction, "views": args.views}
    if args.config is not None:
        config = SuiteConfig.from_toml(args.config, **given, extract=extract)
    elif args.models is None or args.datasets is None:
        raise FeatureBankError("a suite needs --models and --datasets (or a SUITE.toml).")
    else:
        config = SuiteConfig(**{k: v for k, v in given.items() if v is not None},
                             extract=extract)
    rows = suite(config=config, out=args.out, cache=args.cache, data_root=args.data_root,
                 download=args.download, device=args.device, progress=not args.quiet)
    if not _reports():
        return
    summary = summarize(rows)
    print(markdown(summary) if args.markdown else
          f"{len(rows)} results over {len(summary)} settings; wrote {args.out}/: results.json, "
          f"results.csv, summary.csv, report.html")


def _fit_parser(f: argparse.ArgumentParser) -> None:
    from .heads.registry import list_heads

    f.description = ("Fit heads on cached features, sweep each head's main regulariser on a "
                     "stratified validation split of the train rows, save the heads and a "
                     "leaderboard.")
    f.add_argument("bank", metavar="BANK.h5")
    f.add_argument("--tap", default=None, metavar="TAP[,TAP...]",
                   help="tap(s) to fit on: one, several (fc6,fc7,pool5), all, or taps side by "
                        "side (fc6+fc7) (default: the bank's first)")
    f.add_argument("--heads", default="logreg,mlp", type=_heads, metavar="HEAD[,HEAD...]",
                   help=f"heads from {{{','.join(list_heads())}}} (default: logreg,mlp)")
    f.add_argument("--val-fraction", type=FRACTION.parse, default=0.1,
                   help="fraction of train rows held out for selection (default: 0.1)")
    f.add_argument("--out", default="runs", metavar="RUNS_DIR",
                   help="folder for the heads and the leaderboard (default: runs)")
    f.add_argument("--seed", type=NON_NEGATIVE_INT.parse, default=0,
                   help="validation split and head seed (default: 0)")
    f.add_argument("--device", default="auto", choices=_DEVICES)
    f.add_argument("--metric", default="accuracy",
                   choices=["accuracy", "balanced_accuracy", "f1_macro", "log_loss"],
                   help="what selects each head's setting and ranks the heads on the validation "
                        "split; all four are recorded (default: accuracy)")
    f.add_argument("--class-weight", default="none", choices=["none", "balanced"],
                   help="class weights in every head's loss that takes them (all but knn): "
                        "balanced weighs each class by n / (n_classes * its count), as "
                        "scikit-learn's class_weight='balanced' (default: none)")
    f.add_argument("--calibrate", action="store_true",
                   help="fit a temperature to each chosen head on the validation split (by log "
                        "loss): calibrated probabilities, unchanged predictions")
    f.add_argument("--views", default="all", type=_views, metavar="all|none|N",
                   help="on a bank with augmented views (extract --views K): also fit each "
                        "head on the centre rows plus N random views of each train image "
                        "(all: the bank's K), chosen against the centre rows alone on the "
                        "validation split, which is drawn by image (default: all)")
    f.add_argument("--tta", action="store_true",
                   help="also score each setting on the mean of its probabilities over each "
                        "image and its mirror view (a bank with views or --mirror), chosen on "
                        "validation; predict follows the choice")
    f.add_argument("--refit", action="store_true",
                   help="refit each chosen setting on train + validation rows (off by default: "
                        "finetune needs the validation split unseen, and refuses such heads)")
    f.add_argument("--overwrite", action="store_true",
                   help="replace the results of an earlier fit in RUNS_DIR")
    f.add_argument("--stream", action=argparse.BooleanOptionalAction, default=None,
                   help="read the features from the bank chunk by chunk instead of loading "
                        "them (logreg and mlp; default: when they would take over a quarter "
                        "of this machine's memory)")
    f.add_argument("-q", "--quiet", action="store_true",
                   help="no progress bar and no line per head")


def _finetune_parser(t: argparse.ArgumentParser) -> None:
    from .finetuning.config import FinetuneConfig

    t.description = ("Rebuild the bank's backbone up to the head's tap, attach the head, check "
                     "the hand-off, and train end to end with early stopping and resumable "
                     "checkpoints.")
    t.add_argument("bank", nargs="?", default=None, metavar="BANK.h5",
                   help="the bank the head was fitted on (as every other command takes it)")
    t.add_argument("--bank", dest="bank_option", default=None, metavar="BANK.h5",
                   help="the same, as an option (kept for older scripts)")
    which = t.add_mutually_exclusive_group(required=True)
    which.add_argument("--head", metavar="HEAD.joblib", help="a saved head")
    which.add_argument("--runs", metavar="RUNS_DIR", help="use the best graftable head of a fit")
    t.add_argument("--data-root", default=None, metavar="DIR",
                   help="where the images are now, if they moved since the extraction")
    FinetuneConfig.add_arguments(t)
    t.add_argument("--device", default="auto", choices=_DEVICES,
                   help="auto = CUDA when present (default: auto)")
    t.add_argument("--out", default="finetune", metavar="DIR",
                   help="output folder (default: finetune)")
    t.add_argument("--resume", action="store_true", help="continue from DIR/checkpoint.pt")
    t.add_argument("--overwrite", action="store_true",
                   help="replace a finished fine-tune of other settings in DIR (the same "
                        "settings again are up to date: nothing is trained)")
    t.add_argument("-q", "--quiet", action="store_true", help="no progress bars or log lines")


def _info_parser(i: argparse.ArgumentParser) -> None:
    i.description = ("Print a bank's provenance, splits, taps and shapes. A bank written by "
                     "several processes is checked at open by its shards' sizes and times; "
                     "--verify also checks their content against the SHA-256 recorded when "
                     "the bank was written (it reads every shard).")
    i.add_argument("bank", metavar="BANK.h5")
    i.add_argument("--verify", action="store_true",
                   help="check every shard's content (SHA-256) against the bank's record")


def _model_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL",
                   help="a fine-tune output folder (with best_model.pt) or a saved head "
                        "(runs/HEAD.joblib)")
    p.add_argument("--bank", default=None, metavar="BANK.h5",
                   help="for a head saved by an older featurebank: the bank it was fitted on")
    p.add_argument("--device", default="auto", choices=_DEVICES)


def _predict_parser(p: argparse.ArgumentParser) -> None:
    p.description = ("Classify images with a fine-tuned model or a saved head, preprocessed as "
                     "its bank's images were. Writes a CSV: path, prediction, probability and "
                     "the top k classes with theirs.")
    _model_argument(p)
    p.add_argument("images", nargs="+", metavar="IMAGES",
                   help="image files, folders (searched recursively), .npz files, or "
                        "dataset sources (wds:PATTERN, hf:NAME_OR_PATH, csv:FILE)")
    p.add_argument("--out", default=None, metavar="PREDS.csv",
                   help="CSV file to write (default: the CSV on standard output)")
    p.add_argument("--top-k", type=POSITIVE_INT.parse, default=5, metavar="K",
                   help="classes listed per image (default: 5)")
    p.add_argument("--batch-size", type=POSITIVE_INT.parse, default=None, metavar="N",
                   help="images per forward pass (default: 256 on CUDA, 64 on CPU)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a CSV made with other arguments (the same model, images and "
                        "options again are up to date: nothing is classified)")
    p.add_argument("--skip-bad", action="store_true",
                   help="leave unreadable images out (reported) instead of failing")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="average each image's probabilities with its mirror's (left to right, "
                        "as the bank's mirror view); default: what the model was selected with "
                        "(fit --tta)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")


def _export_parser(p: argparse.ArgumentParser) -> None:
    from ._export import EXPORT_FORMATS

    p.description = ("Write a fine-tuned model (or a linear or MLP head on its backbone) as one "
                     "network from normalised images to logits, with a JSON file beside it "
                     "recording its preprocessing and classes.")
    _model_argument(p)
    p.add_argument("--format", default="onnx", choices=EXPORT_FORMATS,
                   help="onnx or torchscript (default: onnx)")
    p.add_argument("--out", required=True, metavar="FILE", help="the file to write")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an export of another model or format (the same again is up "
                        "to date: nothing is exported)")


def _report_parser(p: argparse.ArgumentParser) -> None:
    p.description = ("An evaluation report of a fit (and a fine-tune): accuracy, top-5, "
                     "balanced accuracy and per-class precision/recall/F1 on the test split, "
                     "confusion matrices, the regulariser sweeps, learning curves and the most "
                     "confidently wrong images, as PNG files and one self-contained "
                     "report.html (needs matplotlib: pip install \"featurebank[plots]\").")
    p.add_argument("runs", metavar="RUNS_DIR", help="a featurebank fit output folder")
    p.add_argument("finetune", nargs="?", default=None, metavar="FT_DIR",
                   help="a featurebank finetune output folder")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="where to write (default: RUNS_DIR/report)")
    p.add_argument("--bank", default=None, metavar="BANK.h5",
                   help="the bank, if it moved since the fit")
    p.add_argument("--data-root", default=None, metavar="DIR",
                   help="where the images are now, if they moved (for the image grids)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a report of another fit or fine-tune in DIR (the same "
                        "again is up to date: nothing is drawn)")


def _merge_parser(p: argparse.ArgumentParser) -> None:
    p.description = ("Copy a bank written by several processes (torchrun), whose rows live in "
                     "BANK.h5.shards/, into one self-contained file.")
    p.add_argument("bank", metavar="BANK.h5")
    p.add_argument("--out", default=None, metavar="OUT.h5",
                   help="where to write it (default: in place of BANK.h5)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace another file at OUT.h5 (the same bank merged there already "
                        "is up to date)")


def _taps_parser(p: argparse.ArgumentParser) -> None:
    p.description = ("List every tap of a model with its activation shape and feature size: the "
                     "named taps, then every module in the order it runs (the network runs on "
                     "the meta device: no weights are loaded).")
    p.add_argument("model", metavar="MODEL", type=_model,
                   help="torchvision model name or timm:NAME")
    p.add_argument("--image-size", type=IMAGE_SIZE.parse, default=224, metavar="PX",
                   help="input size in pixels (default: 224)")
    p.add_argument("--pool", default="cls", choices=["cls", "mean"], dest="token_pool",
                   help="pooling of transformer tokens (default: cls)")


def _stamp(path) -> int | None:
    """A file's modification time before a command, to tell "wrote" from "up to date"."""
    return Path(path).stat().st_mtime_ns if path and Path(path).is_file() else None


def _wrote(path, before: int | None) -> str:
    return "up to date:" if before is not None and _stamp(path) == before else "wrote"


def _reports() -> bool:
    """Whether this process prints a command's results: the only one, or torchrun's rank 0."""
    from ._distributed import current_rank

    rank = current_rank()
    return rank is None or rank.rank == 0


def _run_extract(args: argparse.Namespace) -> None:
    from .extraction import ExtractConfig, extract, output_path

    config = ExtractConfig.from_namespace(args)
    out = output_path(args.dataset, args.out, config)
    before = _stamp(out)
    bank = extract(args.dataset, out=out, data_root=args.data_root,
                   download=args.download, device=args.device, resume=args.resume,
                   overwrite=args.overwrite, progress=not args.quiet, config=config)
    if not _reports():
        return
    print(f"{_wrote(bank.path, before)} {bank.path}")
    if not args.quiet:
        print(bank.info())


def _run_run(args: argparse.Namespace) -> None:
    from .extraction import ExtractConfig
    from .fit import format_leaderboard
    from .pipeline import run

    result = run(args.dataset, out=args.out, heads=args.heads, tta=args.tta,
                 finetune_epochs=args.finetune_epochs, data_root=args.data_root,
                 download=args.download, device=args.device, overwrite=args.overwrite,
                 progress=not args.quiet, config=ExtractConfig.from_namespace(args))
    print(format_leaderboard(result.leaderboard))
    if result.finetune is not None:
        print(f"fine-tuned: test accuracy {result.finetune['test_accuracy']} (head "
              f"{result.finetune['head_test_accuracy']}, best epoch "
              f"{result.finetune['best_epoch']})")
    print(f"\n{result.folder}/: bank.h5, runs/ (heads, leaderboard.json)"
          + (", finetune/ (best_model.pt)" if result.finetune is not None else "")
          + (f", report: {result.report}" if result.report else ""))


def _run_info(args: argparse.Namespace) -> None:
    from .bank import FeatureBank

    bank = FeatureBank(args.bank)
    print(bank.info())
    if args.verify:
        shards = bank.verify()
        print(f"verified: {len(shards)} shards, each as written (SHA-256)" if shards else
              "verified: a self-contained bank (no shards to check)")


def _run_fit(args: argparse.Namespace) -> None:
    from .fit import fit_heads, format_leaderboard

    if not args.quiet:
        print(f"fitting {', '.join(args.heads)} on {args.bank} ...", flush=True)
    board = fit_heads(args.bank, tap=args.tap, heads=args.heads, val_fraction=args.val_fraction,
                      out=args.out, random_state=args.seed, metric=args.metric,
                      class_weight=None if args.class_weight == "none" else args.class_weight,
                      calibrate=args.calibrate, views=args.views, tta=args.tta,
                      device=args.device,
                      refit=args.refit, overwrite=args.overwrite, stream=args.stream,
                      progress=not args.quiet)
    print(f"\n{'taps' if len(board['taps']) > 1 else 'tap'} {', '.join(board['taps'])}: "
          f"{board['n_train']} train rows, {board['n_val']} validation rows, "
          f"{board['n_test']} test rows")
    print(format_leaderboard(board))
    print(f"\nwrote {args.out}/: {', '.join(r['file'] for r in board['rows'])}, "
          f"leaderboard.json, leaderboard.csv, split.npz")
    print(f"report (plots, per-class metrics): featurebank report {args.out} "
          f"--out {args.out}/report")


def _run_finetune(args: argparse.Namespace) -> None:
    from .finetuning import FinetuneConfig, finetune

    if args.bank and args.bank_option and args.bank != args.bank_option:
        raise FeatureBankError(f"two banks were given ({args.bank!r} and --bank "
                               f"{args.bank_option!r}); pass one.")
    bank = args.bank or args.bank_option
    if bank is None:
        raise FeatureBankError("pass the bank the head was fitted on: featurebank finetune "
                               "BANK.h5 --runs RUNS_DIR (or --head HEAD.joblib).")
    summary = finetune(bank, head=args.head, runs=args.runs, data_root=args.data_root,
                       device=args.device, out=args.out, resume=args.resume,
                       overwrite=args.overwrite, progress=not args.quiet,
                       config=FinetuneConfig.from_namespace(args))
    if not _reports():
        return
    print(f"head test accuracy {summary['head_test_accuracy']}, fine-tuned "
          f"{summary['test_accuracy']} (best epoch {summary['best_epoch']}"
          + ("; training diverged: lower --lr" if summary["diverged"] else "")
          + f"); wrote {args.out}/")
    runs = args.runs or Path(args.head).parent
    print(f"report (learning curves, plots, per-class metrics): featurebank report {runs} "
          f"{args.out} --out {args.out}/report")


def _run_predict(args: argparse.Namespace) -> None:
    from ._io import check_output
    from .predictor import load_model

    if args.out:  # before the model is loaded or any image read
        check_output(args.out)
    model = load_model(args.model, bank=args.bank, device=args.device,
                       batch_size=args.batch_size)
    before = _stamp(args.out)
    summary = model.predict_to_csv(args.images, args.out or sys.stdout, top_k=args.top_k,
                                   skip_bad=args.skip_bad, progress=not args.quiet,
                                   overwrite=args.overwrite, tta=args.tta)
    if not args.quiet:
        counts = ", ".join(f"{c} {n}" for c, n in summary["counts"][:5])
        print(f"predicted {summary['images']} images with {args.model}"
              + (f" ({len(summary['skipped'])} unreadable, left out)" if summary["skipped"]
                 else "") + f"; most predicted: {counts}"
              + (f"; {_wrote(args.out, before)} {args.out}" if args.out else ""),
              file=sys.stderr)


def _run_export(args: argparse.Namespace) -> None:
    from ._io import check_output
    from .predictor import load_model

    check_output(args.out)  # before the model is loaded
    before = _stamp(args.out)
    path = load_model(args.model, bank=args.bank, device=args.device).export(
        args.out, format=args.format, overwrite=args.overwrite)
    print(f"{_wrote(path, before)} {path} and {path}.json (input, preprocessing, classes)")


def _run_taps(args: argparse.Namespace) -> None:
    from .backbones import list_taps

    rows = list_taps(args.model, shapes=True, image_size=args.image_size,
                     token_pool=args.token_pool)
    width = max(len(r.name) for r in rows)
    print(f"{'tap':<{width}}  {'layer':<18} {'where':<6} {'activation':<18} {'pool':<5} dim")
    for r in rows:
        shape = "(" + ", ".join(map(str, r.shape)) + ")" if r.shape else "-"
        note = f"  (runs {r.calls} times: ambiguous)" if r.calls > 1 else ""
        print(f"{r.name:<{width}}  {r.layer[:18]:<18} {r.where:<6} {shape:<18} {r.pool:<5} "
              f"{r.dim if r.dim is not None else '-'}{note}")


def _run_report(args: argparse.Namespace) -> None:
    from .report import build_report

    out = Path(args.out) if args.out else Path(args.runs) / "report"
    before = _stamp(out / "report.html")
    page = build_report(args.runs, args.finetune, out=out, bank=args.bank,
                        data_root=args.data_root, overwrite=args.overwrite)
    print(f"{_wrote(page, before)} {page} (open it in a browser) and the PNG files beside it")


def _run_merge(args: argparse.Namespace) -> None:
    from .bank import merge_bank

    before = _stamp(args.out)
    bank = merge_bank(args.bank, args.out, overwrite=args.overwrite)
    if before is not None and _stamp(args.out) == before:
        print(f"up to date: {bank.path}")
        return
    print(f"wrote {bank.path}: self-contained; the shards in {args.bank}.shards/ are no longer "
          f"needed by it")


@dataclass(frozen=True)
class Command:
    """One ``featurebank`` command."""

    name: str
    help: str  # its line in ``featurebank --help``
    arguments: Callable[[argparse.ArgumentParser], None]  # adds its arguments
    run: Callable[[argparse.Namespace], None]  # calls the library, prints
    after_interrupt: Callable[[argparse.Namespace], str]  # what Ctrl-C leaves, how to go on


def _unchanged(args: argparse.Namespace) -> str:
    return "nothing was changed."


COMMANDS = {c.name: c for c in [
    Command("run", "the whole job: extract, fit, fine-tune, report, into one folder",
            _run_parser, _run_run,
            lambda a: (f"what each step finished is kept in {a.out}/; rerun the same command "
                       f"to continue.")),
    Command("extract", "run a frozen backbone over a dataset into a feature bank",
            _extract_parser, _run_extract,
            lambda a: "rows written so far are kept, rerun the same command to resume."),
    Command("info", "print a bank's provenance, splits, taps and shapes", _info_parser,
            _run_info, _unchanged),
    Command("fit", "fit heads on a bank, select on a validation split, rank", _fit_parser,
            _run_fit, lambda a: (f"heads finished so far are saved in {a.out}/, the "
                                 f"leaderboard is written when every head is done: rerun the "
                                 f"command.")),
    Command("finetune", "graft the best head onto the backbone and fine-tune",
            _finetune_parser, _run_finetune,
            lambda a: (f"rerun with --resume to continue from the last checkpoint "
                       f"({a.out}/checkpoint.pt, written at each epoch's end and every "
                       f"--checkpoint-every steps).")),
    Command("predict", "classify images with a fine-tuned model or a saved head",
            _predict_parser, _run_predict, lambda a: "no CSV was written; rerun the command."),
    Command("export", "write a model as ONNX or TorchScript with its preprocessing",
            _export_parser, _run_export, lambda a: "nothing was written; rerun the command."),
    Command("report", "write an evaluation report (metrics, plots, HTML) of a fit and a "
                      "fine-tune", _report_parser, _run_report,
            lambda a: "the report may be incomplete; rerun the command."),
    Command("suite", "probe models x datasets x taps x heads x shots x seeds: one table",
            _suite_parser, _run_suite,
            lambda a: (f"finished cells are kept in {a.out}/cells/ and a partial bank resumes: "
                       f"rerun the same command to continue.")),
    Command("taps", "list a model's taps with their shapes and feature sizes", _taps_parser,
            _run_taps, _unchanged),
    Command("merge", "copy a bank written by several processes into one self-contained file",
            _merge_parser, _run_merge, lambda a: "the bank is as it was; rerun the command."),
]}


def _parser(argv: Sequence[str] = (), *, full: bool = False) -> argparse.ArgumentParser:
    """The parser; only the command named in ``argv`` gets its arguments (all: ``full``)."""
    from . import __version__

    command = next((a for a in argv if not a.startswith("-")), None)
    p = argparse.ArgumentParser(
        prog="featurebank",
        description="Cache frozen-backbone features once; train heads on them in seconds.")
    p.add_argument("--version", action="version", version=f"featurebank {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for c in COMMANDS.values():
        sp = sub.add_parser(c.name, help=c.help, description=c.help)
        if full or c.name == command:
            c.arguments(sp)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``featurebank`` and ``python -m featurebank``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser(argv).parse_args(argv)
    try:
        COMMANDS[args.command].run(args)
    except FeatureBankError as e:
        from ._distributed import current_rank

        rank = current_rank()  # under torchrun, which of the processes says it
        print(f"featurebank {args.command}{f' ({rank})' if rank else ''}: error: {e}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nfeaturebank {args.command}: interrupted; "
              f"{COMMANDS[args.command].after_interrupt(args)}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` or `less`, which stopped reading: the
        # work is done; send the rest of stdout (and the flush at exit) nowhere, quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as a shell reports a command killed by it
    return 0
