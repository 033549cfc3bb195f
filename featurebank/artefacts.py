"""The files of a run folder: their names, and the readers that turn them into records.

A ``featurebank fit`` folder holds the heads (:func:`head_file`), ``leaderboard.json`` /
``.csv`` and ``split.npz``; a ``featurebank finetune`` folder holds ``checkpoint.pt``,
``best_model.pt`` with ``best_model.json``, ``metrics.json`` / ``.csv``, ``summary.json`` and
``test_predictions.npz``. Every module that writes or reads them takes the names from here,
and reads them through :func:`read_leaderboard` / :func:`read_best_model`, so a missing,
truncated or altered file is one clear error naming it, never a traceback.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from .exceptions import FeatureBankError
from .records import BankSpec

__all__ = ["BEST_MODEL", "BEST_MODEL_JSON", "BestModel", "CHECKPOINT", "LEADERBOARD_CSV",
           "LEADERBOARD_JSON", "Leaderboard", "METRICS_CSV", "METRICS_JSON", "REPORT_HTML",
           "SPLIT", "SUMMARY", "TEST_PREDICTIONS", "epoch_checkpoint", "head_file", "model_sha256", "up_to_date", "load_best_weights",
           "read_best_model", "read_json", "read_leaderboard"]

# a fit's folder
LEADERBOARD_JSON, LEADERBOARD_CSV, SPLIT = "leaderboard.json", "leaderboard.csv", "split.npz"
# a fine-tune's folder
CHECKPOINT, BEST_MODEL, BEST_MODEL_JSON = "checkpoint.pt", "best_model.pt", "best_model.json"
METRICS_JSON, METRICS_CSV, SUMMARY = "metrics.json", "metrics.csv", "summary.json"
TEST_PREDICTIONS = "test_predictions.npz"
# a report's folder
REPORT_HTML, REPORT_JSON = "report.html", "report.json"


def up_to_date(out: str | os.PathLike, record: str | os.PathLike, arguments: dict[str, Any],
               overwrite: bool) -> bool:
    """The rerun rule of a command whose output ``out`` has its arguments written in the JSON
    file ``record`` (under ``"arguments"``): True when ``out`` exists and was made with these
    ``arguments`` (nothing to do); False when it must be written (nothing there, or
    ``overwrite``); otherwise a FeatureBankError naming ``--overwrite``."""
    out = Path(out)
    if not out.exists() or overwrite:
        return False
    try:
        saved = json.loads(Path(record).read_text(encoding="utf-8")).get("arguments")
    except (OSError, ValueError, AttributeError):
        saved = None
    if saved == json.loads(json.dumps(arguments, default=str)):
        return True
    raise FeatureBankError(f"{str(out)!r} exists already"
                           f"{', made with other arguments' if saved is not None else ''}; pass "
                           f"overwrite=True (--overwrite) to replace it, or choose another out= "
                           f"(--out).")


def model_sha256(path: str | os.PathLike) -> str:
    """What a trained model is, by content: a fine-tune folder's ``best_model.pt`` (as its
    record holds it) or a saved head's file."""
    from ._io import sha256_file

    path = Path(path)
    if path.is_dir():
        return read_best_model(path).weights_sha256 or sha256_file(path / BEST_MODEL)
    return sha256_file(path)


def epoch_checkpoint(epoch: int) -> str:
    """The file of one epoch's checkpoint, kept with ``finetune --keep all``."""
    return f"checkpoint-epoch{epoch:03d}.pt"


def head_file(head: str, tap: str, several_taps: bool) -> str:
    """A saved head's file name in a fit folder: ``logreg.joblib``, or ``logreg@fc7.joblib``
    when the fit covered several taps."""
    return f"{head}@{tap}.joblib" if several_taps else f"{head}.joblib"


def read_json(path: str | os.PathLike, what: str, fix: str, missing: str | None = None) -> Any:
    """The JSON in ``path``; a missing, unreadable or truncated file is a FeatureBankError
    saying which file it is (``what``) and how to get a good one (``fix``; ``missing``: what
    to do when there is no file at all)."""
    path = Path(path)
    if not path.is_file():
        raise FeatureBankError(f"{str(path)!r} does not exist; "
                               f"{missing or f'{what} is expected there: {fix}'}.")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FeatureBankError(f"{str(path)!r} ({what}) cannot be read ({type(e).__name__}: "
                               f"{e}): the file is damaged or truncated; {fix}.") from None


def _split_known(cls, data: Any, path: Path, what: str
                 ) -> tuple[dict[str, Any], dict[str, Any]]:
    """``data`` as the record's fields and the keys it does not know; an object without the
    fields the record needs is an error naming the file."""
    names = {f.name for f in fields(cls)} - {"extra", "folder", "path"}
    required = [f.name for f in fields(cls) if f.name in names
                and f.default is MISSING and f.default_factory is MISSING]
    missing = [n for n in required if not isinstance(data, Mapping) or n not in data]
    if missing and not (cls is Leaderboard and missing == ["taps"] and "tap" in data):
        raise FeatureBankError(f"{str(path)!r} is not {what} (missing {missing}): the file is "
                               f"damaged, or was not written by featurebank.")
    return ({k: v for k, v in data.items() if k in names},
            {k: v for k, v in data.items() if k not in names})


@dataclass(frozen=True)
class Leaderboard:
    """A fit's ``leaderboard.json``: its rows best first, and what they were fitted on.

    ``rows`` are the dicts :func:`featurebank.fit_heads` returned (head, tap, params,
    validation and test accuracy, times, the settings tried, file, best).
    """

    path: Path
    bank: str
    bank_fingerprint: str
    taps: list[str]
    rows: list[dict[str, Any]]
    n_train: int
    n_val: int
    n_test: int
    best_head: str | None = None
    best_file: str | None = None
    notes: list[str] = field(default_factory=list)
    extra: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @property
    def folder(self) -> Path:
        return self.path.parent

    def best(self) -> dict[str, Any] | None:
        """The best graftable head's row (None when no head of the fit can be grafted)."""
        return next((r for r in self.rows if r.get("best")), None)

    def files(self) -> list[str]:
        """The heads' file names."""
        return [r["file"] for r in self.rows if r.get("file")]

    def to_json(self) -> dict[str, Any]:
        """The leaderboard as :func:`featurebank.fit_heads` returns it (and the file holds)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)
               if f.name not in ("path", "extra")}
        return {**self.extra, **out}


def read_leaderboard(runs: str | os.PathLike) -> Leaderboard:
    """The leaderboard of a ``featurebank fit`` output folder."""
    path = Path(runs) / LEADERBOARD_JSON
    what, fix = "a featurebank fit's leaderboard", f"rerun featurebank fit --out {runs}"
    data = read_json(path, what, fix, missing="pass the --out folder of a featurebank fit")
    known, extra = _split_known(Leaderboard, data, path, what)
    if "taps" not in known and "tap" in data:  # a single-tap fit of an early featurebank
        known["taps"] = [data["tap"]]
    try:
        return Leaderboard(path=path, **known, extra=extra)
    except TypeError as e:
        raise FeatureBankError(f"{str(path)!r} is not {what} ({e}); {fix}.") from None


@dataclass(frozen=True)
class BestModel:
    """A fine-tune's ``best_model.json``: what ``best_model.pt`` holds and how to rebuild it.

    Attributes
    ----------
    folder : Path
    spec : BankSpec
        The bank's spec: the backbone, its taps and the preprocessing.
    tap : str
    classes : list of str
        The bank's class names; ``head_classes`` are the head's output columns (indices).
    head_module : dict or None
        The head's layers (``describe_head``); None in folders of early featurebanks.
    weights_sha256 : str or None
        SHA-256 of ``best_model.pt``, verified by :func:`load_best_weights`.
    temperature : float
        What the logits are divided by before the softmax (``finetune --calibrate``; 1.0
        without it).
    calibration : dict or None
        With ``--calibrate``: the temperature's effect, the log loss and the reliability
        (expected calibration error, 15 bins) before and after, on validation and test.
    world_size : int
        The torchrun ranks the run ended with (1: one process); ``metrics.json`` has each
        epoch's.
    """

    folder: Path
    bank: str
    bank_fingerprint: str
    spec: BankSpec
    classes: list[str]
    head_classes: list[int]
    tap: str
    config: dict[str, Any]
    best_epoch: int
    head_module: dict[str, Any] | None = None
    weights_sha256: str | None = None
    temperature: float = 1.0
    calibration: dict[str, Any] | None = None
    world_size: int = 1
    versions: dict[str, str] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)
               if f.name not in ("folder", "extra")}
        return {**out, "spec": self.spec.to_json(), **self.extra}


def read_best_model(folder: str | os.PathLike) -> BestModel:
    """The record of a ``featurebank finetune`` output folder (``best_model.json``, with
    ``best_model.pt`` beside it)."""
    folder = Path(folder)
    path = folder / BEST_MODEL_JSON
    what = "a fine-tuned model's record"
    fix = f"fine-tune again (featurebank finetune --out {folder})"
    if not (path.is_file() and (folder / BEST_MODEL).is_file()):
        raise FeatureBankError(f"{str(folder)!r} is not a fine-tune output folder: "
                               f"{BEST_MODEL_JSON} and {BEST_MODEL} are expected in it.")
    data = read_json(path, what, fix)
    known, extra = _split_known(BestModel, data, path, what)
    try:
        return BestModel(folder=folder, **{**known, "spec": BankSpec.from_json(known["spec"])},
                         extra=extra)
    except (TypeError, KeyError) as e:
        raise FeatureBankError(f"{str(path)!r} is not {what} ({e}); {fix}.") from None


def load_best_weights(best: BestModel) -> dict[str, Any]:
    """The fine-tuned network's ``state_dict`` from ``best_model.pt``, verified against the
    SHA-256 its record holds: a file whose bytes changed is an error, never a network that
    predicts differently."""
    import torch

    from ._io import sha256_file

    path = best.folder / BEST_MODEL
    fix = f"restore it from a backup, or fine-tune again (featurebank finetune --out {best.folder})"
    if best.weights_sha256 is not None and sha256_file(path) != best.weights_sha256:
        raise FeatureBankError(
            f"{str(path)!r} changed since the fine-tune wrote it (its SHA-256 differs from the "
            f"one {BEST_MODEL_JSON} records): it is damaged or was replaced; {fix}.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated zip archive, a pickle of something else
        raise FeatureBankError(f"{str(path)!r} cannot be loaded ({type(e).__name__}: "
                               f"{str(e).splitlines()[0] if str(e) else ''}): the file is "
                               f"damaged or truncated; {fix}.") from None
