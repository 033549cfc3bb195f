"""Fit heads on a feature bank, select each head's setting on a validation split, rank them.

One straight line: hold out a stratified, seeded validation split of the train rows -> for
each tap (or concatenation of taps) and each head, fit every setting of its grid on the
remaining rows and keep the best on validation -> score it on test -> save it with its
provenance -> write the leaderboard (JSON and CSV) and mark the best graftable head.

The chosen setting is fitted on the train rows outside the validation split only (unless
``refit``), so that split stays clean for the fine-tune's early stopping; its row indices are
saved with the run. A selection that a handful of rows decides (a small validation split, or
ties) is reported as such.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split

from ._io import (FRACTION, POSITIVE_INT, atomic_write, check_choice, progress_bar, write_csv,
                  write_json)
from .artefacts import (LEADERBOARD_CSV, LEADERBOARD_JSON, SPLIT, Leaderboard, head_file,
                        read_leaderboard)
from .bank import FeatureBank
from .exceptions import BankError, FeatureBankError, ParameterError
from .heads import class_probabilities
from .heads._base import check_class_weight
from .heads.calibration import TemperatureScaledClassifier, calibration_record, head_logits
from .heads.persist import save_head
from .heads.registry import check_head_names, fit_weights, get_head_spec
from .records import TapSelection, tap_selections
from .rows import CHUNK_ROWS, StreamedRows, ViewRows, chunks, select

__all__ = ["fit_heads"]

MIN_VAL_PER_CLASS = 20  # below this, a few rows decide the selection
METRICS = ("accuracy", "balanced_accuracy", "f1_macro", "log_loss")  # log loss: lower is better


def _check_features(X, bank: FeatureBank, split: str, tap: str) -> None:
    rows = np.concatenate([s + np.flatnonzero(~np.isfinite(c).all(axis=1))
                           for s, c in chunks(X)])
    if len(rows):
        raise BankError(
            f"feature bank {str(bank.path)!r}, split {split!r}, tap {tap!r} has {len(rows)} rows "
            f"with NaN or infinite features (rows {rows[:5].tolist()}"
            f"{' ...' if len(rows) > 5 else ''}); re-extract the bank (with --dtype float32 if "
            f"the activations overflow float16).")


def _validation_split(y: np.ndarray, val_fraction: float, random_state: int):
    FRACTION.check("val_fraction", val_fraction)
    n, counts = len(y), np.bincount(y)
    n_val = int(round(val_fraction * n))
    n_classes = int((counts > 0).sum())
    if n_val < n_classes or n - n_val < n_classes or counts[counts > 0].min() < 2:
        raise FeatureBankError(
            f"cannot hold out a stratified validation split of val_fraction={val_fraction} from "
            f"{n} training rows of {n_classes} classes (smallest class: "
            f"{counts[counts > 0].min()} rows); each class needs a row on both sides. Use a "
            f"larger bank or another val_fraction.")
    train, val = train_test_split(np.arange(n), test_size=n_val, stratify=y,
                                  random_state=random_state)
    return np.sort(train), np.sort(val)


def _short(params: dict[str, Any]) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in params.items()}


def _merit(scores: dict[str, float], metric: str) -> float:
    """What the selection maximises: the metric, or minus the log loss."""
    return -scores[metric] if metric == "log_loss" else scores[metric]


def _build_kwargs(name: str, *, device, random_state, class_weight) -> dict[str, Any]:
    """What every setting of a head is built with: the device, the seed, and the class
    weights where the head takes them."""
    kw = {"device": device, "random_state": random_state}
    if class_weight is not None and get_head_spec(name).weights:
        kw["class_weight"] = class_weight
    return kw


@dataclass(frozen=True)
class _Setting:
    """One setting a sweep tried: the fitted estimator, its grid parameters, the random
    views per image it trained on (0: the centre rows alone), whether it is scored on the
    mean over the mirror (test-time augmentation), its validation scores, its fit seconds."""

    est: Any
    params: dict[str, Any]
    views: int
    tta: bool
    val: dict[str, float]
    seconds: float

    def described(self, with_views: bool) -> dict[str, Any]:
        return {**_short(self.params), **({"views": self.views, "tta": self.tta}
                                          if with_views else {})}


def _sweep(name: str, data: dict[str, Any], *, metric, build, bar):
    """Fit every setting of the head's grid on each training set (the centre rows, and with
    the views), score each with and without the mirror average where asked; return the best
    :class:`_Setting`, the whole sweep's seconds, each setting's validation value of
    ``metric``, the settings tied with the best on it, and those stopped early for trailing
    on validation (the logistic path's pruning) with the iteration they stopped at."""
    spec, tried = get_head_spec(name), []
    for views, (X, y, w, groups) in data["train_sets"].items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # reported per setting instead
            fitted = spec.fit_grid(X, y, on_fit=bar.update, shared=data["shared"][views],
                                   sample_weight=w if spec.weights else None, groups=groups,
                                   validation=(data["X_val"], data["y_val"]), **build)
        for est, params, secs in fitted:
            plain = _outputs(est, data["X_val"])  # once, with the mirror average or without
            tried += [_Setting(est, params, views, tta,
                               scores(est, data["X_val"], data["y_val"], computed=plain,
                                      mirror=data["M_val"] if tta else None), secs)
                      for tta in data["tta"]]
    best = max(tried, key=lambda r: _merit(r.val, metric))  # the first of the best
    shown = len(data["train_sets"]) > 1 or len(data["tta"]) > 1
    ties = [r.described(shown) for r in tried
            if _merit(r.val, metric) == _merit(best.val, metric) and r is not best]
    pruned = [{**r.described(shown), "n_iter": int(r.est.n_iter_[0])} for r in tried
              if getattr(r.est, "pruned_", False) and not r.tta]
    return (best, sum(r.seconds for r in tried if not r.tta),
            [(r.described(shown), r.val[metric]) for r in tried], ties, pruned)


def _refit(name: str, params: dict[str, Any], X, y, w, *, build, groups=None):
    """The chosen setting fitted again on the train and validation rows together (weighted
    by ``w`` where the head takes weights; with the views of both when it chose views)."""
    spec = get_head_spec(name)
    w = w if spec.weights else None
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        if spec.path is not None:  # the path of one setting: the views' groups reach it
            (est, _), = spec.path(X, y, [params], shared={}, on_fit=lambda n: None,
                                  sample_weight=w, groups=groups, **build)
        else:
            est = spec.build(**params, **build)
            est.fit(X, y, **fit_weights(est, w))
    return est, time.perf_counter() - t


def _taps(bank: FeatureBank, tap: str | list[str] | None) -> list[str]:
    """``None``: the first tap; ``"all"``: every tap; ``"fc6,fc7"``: each; ``"fc6+fc7"``:
    the two side by side as one."""
    selections = tap_selections(tap, bank.taps)
    for t in selections:
        bank.shape(bank.splits[0], t)  # an unknown tap: BankError naming the bank's taps
    return [str(t) for t in selections]


def _same_fit(board: Leaderboard, job: _Job) -> bool:
    """Whether an earlier fit's leaderboard is what these arguments would make."""
    return (board.bank_fingerprint == job.bank.fingerprint and board.taps == job.taps
            and sorted({r["head"] for r in board.rows}) == sorted(job.heads)
            and all(board.extra.get(k, _BEFORE.get(k)) == v
                    for k, v in job.settings().items())
            and all((board.folder / f).is_file() for f in board.files()))


# what a leaderboard of an earlier version that lacks a setting was fitted with
_BEFORE = {"metric": "accuracy", "class_weight": None, "calibrate": False, "split_rows": None,
           "sample_weight": None, "views": 0, "tta": False}


def _sample_weight(sample_weight, bank: FeatureBank) -> np.ndarray | None:
    """One checked weight per row of the bank's train split, or None."""
    from .heads._base import check_sample_weight

    if sample_weight is None:
        return None
    n = bank.num_rows("train") if "train" in bank.splits else 0
    try:
        return check_sample_weight(sample_weight, n)
    except ValueError as e:
        raise ParameterError(f"{e} (sample_weight of fit_heads: one per row of the bank's "
                             f"train split)") from None


def _given_rows(train_rows, val_rows, bank: FeatureBank):
    """``(train rows, validation rows)`` as sorted int64 arrays, checked, or None."""
    if train_rows is None and val_rows is None:
        return None
    if train_rows is None or val_rows is None:
        raise ParameterError("train_rows and val_rows go together: pass both, or neither (a "
                             "stratified val_fraction split of all train rows).")
    n = bank.num_rows("train") if "train" in bank.splits else 0
    out = []
    for name, rows in (("train_rows", train_rows), ("val_rows", val_rows)):
        rows = np.asarray(rows)
        if rows.ndim != 1 or not len(rows) or not np.issubdtype(rows.dtype, np.integer):
            raise ParameterError(f"{name} must be a non-empty 1-D array of row indices; got "
                                 f"shape {rows.shape}, dtype {rows.dtype}.")
        repeats = len(np.unique(rows)) != len(rows)
        if rows.min() < 0 or rows.max() >= n or repeats:
            raise ParameterError(f"{name} must be distinct rows of the bank's train split "
                                 f"(0 to {n - 1}); got values from {rows.min()} to "
                                 f"{rows.max()}{', with repeats' if repeats else ''}.")
        out.append(np.sort(rows).astype(np.int64))
    if len(np.intersect1d(*out)):
        raise ParameterError(f"train_rows and val_rows share {len(np.intersect1d(*out))} rows; "
                             f"the validation rows must be unseen.")
    return tuple(out)


def _rows_digest(train: np.ndarray, val: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(train.tobytes() + b"|" + val.tobytes()).hexdigest()


def _check_out(out: Path | None, overwrite: bool, same: Any,
               progress: bool) -> tuple[list[str], Any]:
    """``(files of an earlier fit in out, to remove once the new one is written; that fit's
    board when it is up to date)``: an earlier fit of the same arguments is kept as it is
    (and said so, with ``progress``), one of other arguments is an error unless
    ``overwrite``."""
    if out is None or not (out / LEADERBOARD_JSON).is_file():
        return [], None
    try:
        board = read_leaderboard(out)
    except FeatureBankError:  # a damaged leaderboard: its heads are simply written anew
        if overwrite:
            return [], None
        raise
    if not overwrite and same(board):
        if progress:
            print(f"{out}/ is up to date: a fit of the same bank, taps, heads and settings "
                  f"(pass overwrite=True, --overwrite, to fit again)", file=sys.stderr)
        return [], board
    if not overwrite:
        raise FeatureBankError(
            f"{str(out)!r} holds the results of an earlier fit of other arguments "
            f"({LEADERBOARD_JSON}); pass overwrite=True (--overwrite) to replace them, or "
            f"choose another out= (--out).")
    return board.files(), None


def _selection_notes(y_val: np.ndarray, classes: list[str], metric: str) -> list[str]:
    """Why the validation split may not tell settings apart on ``metric``: a class with
    fewer than 20 rows there. Balanced accuracy and macro F1 weigh every class equally, so
    each of a small class's rows moves them by about ``1 / (n_classes n_c)``: the classes
    under 20 are named with that step."""
    counts = np.bincount(y_val, minlength=len(classes))
    present = counts[counts > 0]
    if present.min() >= MIN_VAL_PER_CLASS:
        return []
    fix = "raise val_fraction (--val-fraction) or use more data."
    if metric in ("balanced_accuracy", "f1_macro"):
        small = [(classes[c], int(counts[c])) for c in np.argsort(counts, kind="stable")
                 if 0 < counts[c] < MIN_VAL_PER_CLASS]
        named = ", ".join(f"{name!r} {n} (step {1 / (len(present) * n):.3f})"
                          for name, n in small[:5]) + (" ..." if len(small) > 5 else "")
        some = "1 class has" if len(small) == 1 else f"{len(small)} classes have"
        return [f"{metric.replace('_', ' ')} weighs every class equally, and {some} fewer "
                f"than {MIN_VAL_PER_CLASS} validation rows ({named}: what one of their rows "
                f"moves the metric by): those rows decide which setting and head win; {fix}"]
    small = int(np.flatnonzero(counts == present.min())[0])
    return [f"the validation split has {len(y_val)} rows, {present.min()} of class "
            f"{classes[small]!r} (fewer than {MIN_VAL_PER_CLASS} per class): a few rows decide "
            f"which setting and head win; {fix}"]


def _weight_notes(heads: list[str], class_weight, sample_weight) -> list[str]:
    unweighted = [h for h in heads if not get_head_spec(h).weights]
    if (class_weight is None and sample_weight is None) or not unweighted:
        return []
    return [f"{', '.join(unweighted)} take no class or sample weights: fitted unweighted "
            f"(their rows' class_weight and sample_weight are null)."]


def _class_weight(class_weight, classes: list[str]):
    """``class_weight`` for the heads: None, "balanced", or a dict from class index to weight
    (given by the bank's class names or indices)."""
    if not isinstance(check_class_weight(class_weight), dict):
        return class_weight
    index = {name: i for i, name in enumerate(classes)}
    out = {}
    for key, weight in class_weight.items():
        i = index.get(key, key if isinstance(key, (int, np.integer)) else None)
        if i is None or not 0 <= int(i) < len(classes):
            raise ParameterError(f"class_weight names class {key!r}, which the bank lacks "
                                 f"(classes {classes[:10]}{' ...' if len(classes) > 10 else ''}).")
        out[int(i)] = float(weight)
    return out


def fit_heads(bank: FeatureBank | str | os.PathLike, *, tap: str | list[str] | None = None,
              heads: list[str] | tuple[str, ...] = ("logreg", "mlp"), val_fraction: float = 0.1,
              out: str | os.PathLike | None = "runs", random_state: int = 0,
              metric: str = "accuracy", class_weight=None, sample_weight=None,
              calibrate: bool = False, views="all", tta: bool = False, device: str = "auto",
              refit: bool = False, train_rows=None, val_rows=None, overwrite: bool = False,
              stream: bool | None = None, chunk_rows: int | None = None, progress: bool = True,
              verbose: bool | None = None) -> dict[str, Any]:
    """Fit, select and rank heads on a feature bank.

    Parameters
    ----------
    bank : FeatureBank or path-like
    tap : str or list of str, optional
        Default: the bank's first tap. Several (``"fc6,fc7"`` or a list) fit every head on
        each; ``"all"``: every tap of the bank; ``"fc6+fc7"``: taps side by side.
    heads : sequence of str, default=("logreg", "mlp")
        Names from :func:`featurebank.heads.list_heads`.
    val_fraction : float, default=0.1
        Fraction of the train split held out (stratified, seeded) for selection.
    out : path-like or None, default="runs"
        Folder for the heads (``<head>.joblib``; ``<head>@<tap>.joblib`` for several taps),
        ``leaderboard.json`` / ``.csv`` and ``split.npz``; ``None`` writes nothing.
    random_state : int, default=0
        Seed of the validation split and of the stochastic heads.
    metric : {"accuracy", "balanced_accuracy", "f1_macro", "log_loss"}, default="accuracy"
        What selects each setting and ranks the heads on validation (all four are recorded).
    class_weight : None, "balanced" or dict, default=None
        Class weights (scikit-learn's meanings; a dict maps class names or indices to weights)
        in the loss of every head that takes them (all but ``knn``).
    sample_weight : array-like of shape (n_train_rows,), optional
        A weight per row of the train split, in the loss and standardisation of those heads;
        the validation scores that select stay unweighted.
    calibrate : bool, default=False
        Fit a temperature to each chosen head on validation (by log loss): calibrated
        probabilities, unchanged predictions, their effect recorded in the leaderboard.
    views : {"all", "none"} or int, default="all"
        With augmented views in the bank: each head is also fitted on the centre rows plus
        this many random views of each train image (``"all"``: the bank's), chosen on the
        validation split, which is drawn by image (no validation or test view is trained on).
    tta : bool, default=False
        Also score each setting on the mean of its probabilities over the centre and mirror
        views, chosen on validation like any setting; saved heads and ``predict`` follow it.
    device : {"auto", "cpu", "cuda"}, default="auto"
    refit : bool, default=False
        Refit each chosen setting on train + validation rows (``finetune`` refuses such heads:
        it stops early on that split).
    train_rows, val_rows : array of int, optional
        Train-split rows to fit on and to select on (both or neither, disjoint) instead of the
        ``val_fraction`` split: a few-shot draw, or a split of your own.
    overwrite : bool, default=False
        Replace the results of an earlier fit in ``out``; without it, that is an error.
    stream : bool, optional
        Read the features chunk by chunk on every pass (banks larger than memory; ``logreg``
        and ``mlp``). Default: when a tap's float32 train features exceed a quarter of memory.
    chunk_rows : int, optional
        Rows per read when streaming (default 16,384: 128 MiB of 4,096 float16 features).
    progress : bool, default=True
        A progress bar and a line per head (``verbose``: its deprecated name); the selection
        notes (``note:`` on stderr) are printed either way.

    Returns
    -------
    dict
        The leaderboard: ``rows`` (per head and tap, best first), ``best_head`` (the best
        graftable head, or None), ``notes``, the bank fingerprint, taps and split sizes.
    """
    if verbose is not None:
        warnings.warn("fit_heads(verbose=) is deprecated; use progress=, as the other "
                      "functions do.", DeprecationWarning, stacklevel=2)
        progress = verbose
    job = _arguments(bank, tap, heads, stream=stream, chunk_rows=chunk_rows, metric=metric,
                     val_fraction=val_fraction, random_state=random_state, refit=refit,
                     calibrate=calibrate, class_weight=class_weight, sample_weight=sample_weight,
                     train_rows=train_rows, val_rows=val_rows, views=views, tta=tta)
    return _run(job, Path(out) if out is not None else None, overwrite=overwrite,
                device=device, progress=progress)


def _run(job: _Job, out: Path | None, *, overwrite: bool, device, progress) -> dict[str, Any]:
    """The fit of checked arguments: kept when ``out`` holds it already, else every head on
    every tap, the leaderboard written and its notes said."""
    old_files, done = _check_out(out, overwrite, lambda b: _same_fit(b, job), progress)
    if done is not None:
        return done.to_json()
    rows, (train, val, y_val, sizes) = _fit_taps(job, out, device=device, progress=progress)
    board = _board(job, rows, y_val, sizes)
    if out is not None:
        _write(out, board, train, val, old_files)
    for note in board["notes"]:  # what the selection rests on: said even without progress
        print(f"note: {note}", file=sys.stderr)
    return board


@dataclass(frozen=True)
class _Job:
    """A fit's arguments, checked: what it fits, on which rows, with which weights."""

    bank: FeatureBank
    taps: list[str]
    heads: list[str]
    stream: int  # rows per read when streaming; 0: in memory
    metric: str
    val_fraction: float
    random_state: int
    refit: bool
    calibrate: bool
    class_weight: Any  # None, "balanced" or {class index: weight}
    rows: tuple[np.ndarray, np.ndarray] | None  # train and validation rows given
    sw: np.ndarray | None  # a weight per train row
    views: int = 0  # random views per train image to try besides none (0: the centre rows)
    tta: bool = False  # whether the mirror average at test time is tried too

    def settings(self) -> dict[str, Any]:
        """What the leaderboard records of them and an up-to-date check compares."""
        return dict(val_fraction=self.val_fraction, random_state=self.random_state,
                    refit=self.refit, metric=self.metric,
                    class_weight=_as_json(self.class_weight), calibrate=self.calibrate,
                    split_rows=None if self.rows is None else _rows_digest(*self.rows),
                    sample_weight=None if self.sw is None
                    else hashlib.sha256(self.sw.tobytes()).hexdigest(),
                    views=self.views, tta=self.tta)


def _arguments(bank, tap, heads, *, stream: bool | None, chunk_rows: int | None, metric: str,
               class_weight, sample_weight, train_rows, val_rows, views, tta,
               **settings) -> _Job:
    """The fit's arguments, each checked: the bank, its taps, the heads, the rows per read
    when streaming, the class and sample weights, the rows given, the views."""
    chunk_rows = POSITIVE_INT.check("chunk_rows", chunk_rows or CHUNK_ROWS)
    check_choice("metric", metric, METRICS)
    clash = ("refit=True (--refit) trains on" if settings["refit"] else
             "tta=True (--tta) averages two views' probabilities over" if tta else None)
    if settings["calibrate"] and clash:
        raise ParameterError(f"calibrate=True (--calibrate) fits the temperature on the "
                             f"validation split, which {clash}; pass one of them.")
    bank = bank if isinstance(bank, FeatureBank) else FeatureBank(bank)
    taps, heads = _taps(bank, tap), check_head_names(heads)
    views, tta = _view_options(bank, views, tta)
    stream = _needs_streaming(bank, taps, 1 + views) if stream is None else stream
    if stream:
        _check_streamable(heads)
    return _Job(bank, taps, heads, chunk_rows if stream else 0, metric,
                class_weight=_class_weight(class_weight, bank.classes),
                rows=_given_rows(train_rows, val_rows, bank),
                sw=_sample_weight(sample_weight, bank), views=views, tta=tta, **settings)


def _view_options(bank: FeatureBank, views, tta) -> tuple[int, bool]:
    """``(random views per train image to try besides none, whether to try the mirror
    average)``: ``views`` is ``"all"`` (every random view of the bank's train split; none
    when it has none), ``"none"`` or a count up to the bank's."""
    have = (len(bank.view_names("train")) - 1) if "train" in bank.splits else 0
    if isinstance(views, str) and views in ("all", "none"):
        count = max(have, 0) if views == "all" else 0
    elif isinstance(views, (int, np.integer)) and not isinstance(views, bool) and views >= 0:
        count = int(views)
    else:
        raise ParameterError(f"the 'views' parameter must be 'all', 'none' or a count of "
                             f"random views (a non-negative int); got {views!r}.")
    if count > max(have, 0):
        raise ParameterError(
            f"views={count} asks for {count} random views per train image, and the bank "
            f"{str(bank.path)!r} holds {max(have, 0)}; pass views={max(have, 0)} or 'all', or "
            f"extract a bank with --views {count}.")
    if not isinstance(tta, (bool, np.bool_)):
        raise ParameterError(f"the 'tta' parameter must be True or False; got {tta!r}.")
    if tta and bank.spec.views is None:
        raise ParameterError(f"tta=True (--tta) averages each image's probabilities with its "
                             f"mirror view's, and the bank {str(bank.path)!r} holds no views; "
                             f"extract it with --mirror (or --views K).")
    return count, bool(tta)


def _fit_taps(job: _Job, out: Path | None, *, device, progress):
    """Every head on every tap, each saved as it finishes: the leaderboard's rows, and the
    split (train and validation rows, the validation labels, the split sizes)."""
    rows, bank, taps, heads = [], job.bank, job.taps, job.heads
    n_settings = sum(len(get_head_spec(h).candidates()) for h in heads) * sum(
        2 if job.views and not TapSelection.parse(t).concatenated else 1 for t in taps)
    with progress_bar(total=n_settings, unit="fit", desc="fit", leave=False,
                      enabled=progress) as bar:
        for t in taps:
            X, y, test = _load(bank, t, job.stream)
            train, val = job.rows or _validation_split(y, job.val_fraction, job.random_state)
            sizes = {"n_train": int(len(train)), "n_val": int(len(val)),
                     "n_test": 0 if test is None else int(len(test[1]))}
            data = _tap_data(job, t, X, y, test, train, val)
            for name in heads:
                bar.set_description(f"fit {name} on {t}")
                row, est = _fit_head(name, t, data, job, device=device, bar=bar)
                rows.append(row)
                if out is not None:
                    _save(row, est, out, bank=bank, val=val, several_taps=len(taps) > 1)
                if progress:
                    bar.write(_row_line(row), file=sys.stdout)
    return rows, (train, val, y[val], sizes)


def _tap_data(job: _Job, tap: str, X, y, test, train, val) -> dict[str, Any]:
    """What every head of one tap is fitted and scored on, read, split and standardised once:
    the training sets (the centre rows, and with ``job.views`` random views of each train
    image: never of a validation or test image), the validation rows, the test split, the
    mirror rows scored with test-time augmentation, and (``refit``) what refit fits on."""
    sw, per_tap = job.sw, not TapSelection.parse(tap).concatenated  # views are a tap's own
    views, tta = (job.views, job.tta) if per_tap else (0, False)
    sets = {0: (select(X, train), y[train], None if sw is None else sw[train], None)}
    if views:
        sets[views] = _with_views(job, tap, X, y, sw, train, views)
    data = {"train_sets": sets, "X_val": select(X, val), "y_val": y[val], "test": test,
            "shared": {v: {} for v in sets}, "w_train": sets[0][2],
            "tta": [False, True] if tta else [False]}
    if tta:
        data["M_val"] = _mirror(job, tap, "train", X, val)
        if test is not None:
            data["M_test"] = _mirror(job, tap, "test", test[0], np.arange(len(test[1])))
    if job.refit:  # every train row, or the rows given (and their views, for a head that
        # chose them)
        both = np.arange(len(y)) if job.rows is None else np.union1d(train, val)
        data["refit"] = {0: (X, y, sw, None) if job.rows is None else
                         (select(X, both), y[both], None if sw is None else sw[both], None)}
        if views:
            data["refit"][views] = _with_views(job, tap, X, y, sw, both, views)
    return data


def _view_rows(job: _Job, tap: str, split: str, X, images: np.ndarray, view_index, *,
               with_centre: bool) -> tuple[Any, np.ndarray]:
    """``images``' rows of ``split`` with their views ``view_index`` (a :class:`ViewRows`
    read chunk by chunk when streaming, else its array), and each row's image."""
    rows = ViewRows(X.ds if isinstance(X, StreamedRows) else X, job.bank.views(split, tap),
                    images, view_index, chunk=job.stream or CHUNK_ROWS, with_centre=with_centre)
    return (rows if job.stream else rows.array()), rows.groups


def _with_views(job: _Job, tap: str, X, y, sw, images: np.ndarray, views: int):
    """``(rows, labels, weights, groups)`` of ``images``' centre rows each followed by its
    first ``views`` random views."""
    rows, groups = _view_rows(job, tap, "train", X, images, range(1, views + 1),
                              with_centre=True)
    per = 1 + views
    return (rows, np.repeat(y[images], per),
            None if sw is None else np.repeat(sw[images], per), groups)


def _mirror(job: _Job, tap: str, split: str, X, rows: np.ndarray):
    """The mirror-view features of ``rows`` of ``split``, aligned with their centre rows."""
    return _view_rows(job, tap, split, X, rows, [0], with_centre=False)[0]


def _check_streamable(heads: list[str]) -> None:
    unable = [h for h in heads if not get_head_spec(h).streams]
    if unable:
        raise FeatureBankError(
            f"heads {unable} need their features in memory, and this bank's are streamed "
            f"(larger than a quarter of this machine's memory, or stream=True): fit "
            f"{[h for h in heads if h not in unable] or ['logreg', 'mlp']} on it, or pass "
            f"stream=False on a machine with more memory.")


def _fit_head(name, tap, data: dict[str, Any], job: _Job, *, device, bar):
    """One head on one tap: its sweep, the chosen setting (refitted or calibrated when
    asked), its row."""
    metric, refit = job.metric, job.refit
    build = _build_kwargs(name, device=device, random_state=job.random_state,
                          class_weight=job.class_weight)
    best, sweep_s, tried, ties, pruned = _sweep(name, data, metric=metric, build=build,
                                                bar=bar)
    est, params, val, fit_s = best.est, best.params, best.val, best.seconds
    if refit:  # the train and validation rows are all the rows (and their views)
        X, y, w, groups = data["refit"][best.views]
        est, fit_s = _refit(name, params, X, y, w, build=build, groups=groups)
    calibration = None
    if job.calibrate:  # one temperature on the validation split; the argmax does not move
        est, calibration = _calibrate(est, data)
        val = scores(est, data["X_val"], data["y_val"])
    test = (scores(est, *data["test"], mirror=data.get("M_test") if best.tta else None)
            if data["test"] is not None else None)
    row = {"head": name, "tap": tap, "params": _short(params), "views": best.views,
           "tta": best.tta, "val_accuracy": val["accuracy"],
           "n_val": int(len(data["y_val"])),
           "test_accuracy": test["accuracy"] if test is not None else None,
           "metric": metric, "val_scores": val, "test_scores": test,
           "fit_seconds": fit_s, "sweep_seconds": sweep_s, "tried": tried, "tied_with": ties,
           "pruned": pruned,
           "refit": refit, "graftable": get_head_spec(name).graftable,
           "class_weight": _as_json(build.get("class_weight")),
           "sample_weight": data["w_train"] is not None and get_head_spec(name).weights,
           "temperature": calibration["temperature"] if calibration else None,
           "calibration": calibration}
    return row, est


def _calibrate(est, data: dict[str, Any]):
    """The head with a temperature fitted on the validation split, and the record of what it
    does (:func:`~featurebank.heads.calibration.calibration_record`)."""
    logits = {"val": head_logits(est, data["X_val"])}  # each split's logits, once
    calibrated = TemperatureScaledClassifier(est)._fit_logits(logits["val"], data["y_val"])
    labels = {"val": data["y_val"]}
    if data["test"] is not None:
        logits["test"], labels["test"] = head_logits(est, data["test"][0]), data["test"][1]
    record = calibration_record(
        {k: (z, np.searchsorted(calibrated.classes_, labels[k])) for k, z in logits.items()},
        calibrated.temperature_)
    return calibrated, record


def _as_json(class_weight) -> Any:
    """A class-weight rule as leaderboards record it: None, "balanced", or {class: weight}."""
    if isinstance(class_weight, dict):
        return {str(k): float(v) for k, v in class_weight.items()}
    return class_weight


def _board(job: _Job, rows: list[dict[str, Any]], y_val: np.ndarray,
           sizes: dict[str, int]) -> dict[str, Any]:
    """The leaderboard: rows best first by the selection metric, the best graftable one
    marked, the selection notes."""
    bank, taps, metric, fields = job.bank, job.taps, job.metric, {**job.settings(), **sizes}
    notes = (_selection_notes(y_val, bank.classes, metric)
             + _weight_notes(job.heads, job.class_weight, job.sw)
             + [f"{t}: views belong to each tap; fitted on the centre rows alone." for t in taps
                if (job.views or job.tta) and TapSelection.parse(t).concatenated])
    said = metric.replace("_", " ")
    rows.sort(key=lambda r: -_merit(r["val_scores"], metric))
    best = next((r for r in rows if r["graftable"]), None)
    for r in rows:
        r["best"] = r is best
        if r["tied_with"]:
            tied = r["tied_with"][:3] + ([f"{len(r['tied_with']) - 3} more"]
                                     if len(r["tied_with"]) > 3 else [])
            notes.append(f"{r['head']} on {r['tap']}: settings {tied} scored the same "
                         f"validation {said} as the chosen {r['params']}{_view_text(r)} (the "
                         f"first of them in the head's grid order was kept; a tie says the "
                         f"validation split cannot tell them apart).")
        if r.get("pruned"):
            stopped = ", ".join(f"{ {k: v for k, v in p.items() if k != 'n_iter'} } at "
                                f"iteration {p['n_iter']}" for p in r["pruned"])
            notes.append(f"{r['head']} on {r['tap']}: stopped early, trailing on validation "
                         f"(accuracy below an ended setting's at 3 checks in a row): "
                         f"{stopped}.")
    top = [r for r in rows if r["val_scores"][metric] == rows[0]["val_scores"][metric]]
    if len(top) > 1:
        tied = ", ".join(f"{r['head']} on {r['tap']}" for r in top)
        notes.append(f"{tied} tie for the best validation {said}; the ranking among them is "
                     f"arbitrary.")
    return {"bank": str(bank.path), "bank_fingerprint": bank.fingerprint, "tap": taps[0],
            "taps": taps, **fields, "best_head": best["head"] if best else None,
            "best_file": best.get("file") if best else None, "notes": notes, "rows": rows}


def _features(bank: FeatureBank, split: str, tap: str, stream: int | bool):
    """A split's features and labels: in memory, or streamed from the bank (``stream``
    rows per read)."""
    if not stream:
        return bank.load(split, tap)
    if TapSelection.parse(tap).concatenated:
        raise FeatureBankError(f"concatenated taps ({tap!r}) are read into memory; fit them "
                               f"on a bank that fits, or one tap at a time (stream=True).")
    return StreamedRows(bank.features(split, tap), chunk=int(stream)), bank.labels(split)


def _outputs(est, X) -> tuple[np.ndarray, np.ndarray]:
    """``est``'s predictions and class probabilities on features in memory or streamed, chunk
    by chunk (what :func:`scores` scores)."""
    parts = [(est.predict(c), class_probabilities(est, c)) for _, c in chunks(X)]
    return np.concatenate([p for p, _ in parts]), np.concatenate([q for _, q in parts])


def scores(est, X, y: np.ndarray, mirror=None, *, computed=None) -> dict[str, float]:
    """Every selection metric of ``est`` on features in memory or streamed, chunk by chunk:
    accuracy, balanced accuracy, macro F1 (from ``predict``) and log loss (from the class
    probabilities; the softmax of the scores for heads that have none); and the top-5
    accuracy (the label among the 5 most probable classes), recorded, never selecting.

    With ``mirror`` (the same rows' mirror-view features), the probabilities are the mean of
    the two views' and the prediction their most probable class (test-time augmentation).
    ``computed``: :func:`_outputs` of ``est`` on ``X`` already in hand (a sweep scores each
    setting with and without the mirror from one evaluation of its rows)."""
    from sklearn.metrics import balanced_accuracy_score, f1_score

    labels = np.asarray(est.classes_)
    pred, proba = computed if computed is not None else _outputs(est, X)
    if mirror is not None:
        proba = (proba + np.concatenate([class_probabilities(est, c)
                                         for _, c in chunks(mirror)])) / 2
        pred = labels[proba.argmax(1)]
    with warnings.catch_warnings():  # a class absent from a small split: scored all the same
        warnings.simplefilter("ignore")
        top = labels[np.argsort(-proba, axis=1, kind="stable")[:, :5]]
        return {"accuracy": float((pred == y).mean()),
                "top5_accuracy": float((top == y[:, None]).any(1).mean()),
                "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
                "f1_macro": float(f1_score(y, pred, labels=labels, average="macro",
                                           zero_division=0)),
                "log_loss": _log_loss(y, proba, labels)}


def _log_loss(y: np.ndarray, proba: np.ndarray, labels) -> float:
    from sklearn.metrics import log_loss

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(log_loss(y, np.clip(proba, 1e-15, 1), labels=labels))


def _needs_streaming(bank: FeatureBank, taps: list[str], per_image: int = 1) -> bool:
    """Whether the largest tap's train features (``per_image`` rows an image: the centre
    row and its views), as float32, take over a quarter of this machine's memory: then they
    are streamed from the bank instead of loaded."""
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return False
    n, d = max(bank.shape("train", t) for t in taps) if "train" in bank.splits else (0, 0)
    return n * per_image * d * 4 > memory / 4


def _load(bank: FeatureBank, tap: str, stream: int | bool = False):
    """The train features and labels of ``tap``, and the test split's when it has rows;
    refuses what no head can fit (no rows, one class, NaN or inf)."""
    if "train" not in bank.splits:
        raise BankError(f"feature bank {str(bank.path)!r} has no 'train' split (splits "
                        f"{bank.splits}).")
    X, y = _features(bank, "train", tap, stream)
    if len(y) == 0:
        raise BankError(f"the train split of {str(bank.path)!r} is empty.")
    _check_features(X, bank, "train", tap)
    if len(np.unique(y)) < 2:
        raise BankError(f"the train split of {str(bank.path)!r} holds only one class "
                        f"({bank.classes[y[0]]!r}); heads need at least two.")
    test = (_features(bank, "test", tap, stream)
            if "test" in bank.splits and bank.num_rows("test") else None)
    if test is not None:
        _check_features(test[0], bank, "test", tap)
    return X, y, test


def _save(row: dict[str, Any], est, out: Path, *, bank: FeatureBank, val: np.ndarray,
          several_taps: bool) -> None:
    row["file"] = head_file(row["head"], row["tap"], several_taps)
    save_head(est, out / row["file"], bank=bank, tap=row["tap"], name=row["head"],
              params=row["params"], val_rows=val, refit=row["refit"],
              metrics={k: row[k] for k in ("val_accuracy", "n_val", "test_accuracy", "metric",
                                           "val_scores", "test_scores", "fit_seconds",
                                           "class_weight", "temperature", "views", "tta")})


def _value(row: dict[str, Any], split: str) -> str:
    """The row's selection metric on ``split`` (``val``, ``test``) as text, ``-`` if none
    (leaderboards of earlier versions hold accuracy alone)."""
    scores = row.get(f"{split}_scores") or {"accuracy": row.get(f"{split}_accuracy")}
    value = scores.get(row.get("metric", "accuracy"))
    return "-" if value is None else f"{value:.4f}"


def _row_line(row: dict[str, Any]) -> str:
    return (f"  {row['head']:<11} {row['tap']:<8} val {_value(row, 'val')} "
            f"({row['n_val']})  test {_value(row, 'test')}  fit {row['fit_seconds']:7.2f}s  "
            f"sweep {row['sweep_seconds']:7.2f}s  {row['params']}{_view_text(row)}")


def _view_text(row: dict[str, Any]) -> str:
    """The views a row chose, as text ('' for the centre rows without the mirror)."""
    n = row.get("views") or 0
    parts = ([f"{n} view{'s' if n > 1 else ''}"] if n else []) + (
        ["mirror average"] if row.get("tta") else [])
    return f" + {', '.join(parts)}" if parts else ""


_CSV_COLUMNS = ["head", "tap", "val_accuracy", "n_val", "test_accuracy", "fit_seconds",
                "sweep_seconds", "params", "refit", "graftable", "best", "file", "metric",
                *(f"{split}_{m}" for split in ("val", "test")
                  for m in (*METRICS[1:], "top5_accuracy")),
                "class_weight", "temperature", "views", "tta",
                *(f"{split}_ece_{when}" for split in ("val", "test")
                  for when in ("before", "after"))]


def _csv_row(row: dict[str, Any]) -> dict[str, Any]:
    flat = {f"{split}_{m}": v for split in ("val", "test")
            for m, v in (row.get(f"{split}_scores") or {}).items()}
    ece = {k: v for k, v in (row.get("calibration") or {}).items() if "_ece_" in k}
    weights = row.get("class_weight")
    return {**row, **flat, **ece, "params": json.dumps(row["params"]),
            "class_weight": json.dumps(weights) if isinstance(weights, dict) else weights}


def _write(out: Path, board: dict[str, Any], train: np.ndarray, val: np.ndarray,
           old_files: list[str]) -> None:
    atomic_write(out / SPLIT, lambda f: np.savez(f, train_rows=train, val_rows=val))
    write_json(out / LEADERBOARD_JSON, {**board, "split": SPLIT})
    write_csv(out / LEADERBOARD_CSV, [_csv_row(r) for r in board["rows"]], _CSV_COLUMNS)
    for name in set(old_files) - {r.get("file") for r in board["rows"]}:
        (out / name).unlink(missing_ok=True)  # heads of the replaced fit that this one lacks


def format_leaderboard(board: dict[str, Any]) -> str:
    """The leaderboard as a text table, best first, with the validation size."""
    metric = board.get("metric", "accuracy")
    short = _SHORT[metric]
    lines = [f"{'head':<11} {'tap':<9} {'val ' + short:>12} {'test ' + short:>13} {'fit s':>8} "
             f"{'sweep s':>8}  params", "-" * 88]
    for r in board["rows"]:
        mark = "  <- best graftable" if r["best"] else ""
        lines.append(f"{r['head']:<11} {r['tap']:<9} {_value(r, 'val'):>12} "
                     f"{_value(r, 'test'):>13} {r['fit_seconds']:8.2f} "
                     f"{r['sweep_seconds']:8.2f}  {json.dumps(r['params'])}{_view_text(r)}"
                     f"{mark}")
    weights = board.get("class_weight")
    lines.append(f"(validation {metric.replace('_', ' ')} on {board['n_val']} held-out train "
                 f"rows, which selected each setting"
                 + ("; heads refitted on train + validation" if board.get("refit") else "")
                 + (f"; class weights {json.dumps(weights)}" if weights is not None else "")
                 + ("; probabilities calibrated by a temperature on validation"
                    if board.get("calibrate") else "")
                 + (f"; views none or {board['views']} per train image" if board.get("views")
                    else "")
                 + ("; with and without the mirror average" if board.get("tta") else "")
                 + "; leaderboard.json holds all four metrics)")
    calibrated = [r for r in board["rows"] if r.get("calibration")]
    for r in calibrated:
        c, split = r["calibration"], "test" if "test_ece_after" in r["calibration"] else "val"
        lines.append(f"  {r['head']} on {r['tap']}: temperature {c['temperature']:.3f}, "
                     f"{split} ECE {c[f'{split}_ece_before']:.4f} -> "
                     f"{c[f'{split}_ece_after']:.4f}, log loss "
                     f"{c[f'{split}_log_loss_before']:.4f} -> "
                     f"{c[f'{split}_log_loss_after']:.4f}")
    return "\n".join(lines)


_SHORT = {"accuracy": "acc", "balanced_accuracy": "bal acc", "f1_macro": "F1 macro",
          "log_loss": "log loss"}
