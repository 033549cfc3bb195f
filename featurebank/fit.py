"""Fit heads on a feature bank, select each head's setting on a validation split, rank them.

One straight line: load the train (and test) features of one tap -> hold out a stratified,
seeded validation split of the train rows -> for each head, fit every setting of its grid on
the remaining rows and keep the best on validation -> score it on test -> save it with its
provenance -> write the leaderboard (JSON and CSV) and mark the best graftable head.

The chosen setting is fitted on the train rows outside the validation split only, so that
split stays clean for the fine-tune's early stopping; its row indices are saved with the run.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from tqdm.auto import tqdm

from ._io import FRACTION, atomic_write, write_csv, write_json
from .bank import FeatureBank
from .exceptions import BankError, FeatureBankError
from .heads.persist import save_head
from .heads.registry import check_head_names, get_head_spec

__all__ = ["fit_heads"]


def _check_features(X: np.ndarray, bank: FeatureBank, split: str, tap: str) -> None:
    bad = ~np.isfinite(X).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
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


def _sweep(name: str, X, y, train, val, *, device, random_state, bar):
    """Fit every setting of the head's grid; return (best estimator, params, val acc, seconds),
    the whole sweep's seconds and each setting's validation accuracy."""
    Xva, yva = X[val], y[val]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # reported per setting instead
        fitted = get_head_spec(name).fit_grid(X[train], y[train], on_fit=bar.update,
                                              device=device, random_state=random_state)
    tried = [(est, params, float((est.predict(Xva) == yva).mean()), secs)
             for est, params, secs in fitted]
    best = max(tried, key=lambda r: r[2])  # first of the best: grids go simple to complex
    return best, sum(r[3] for r in tried), [(_short(p), a) for _, p, a, _ in tried]


def fit_heads(bank: FeatureBank | str | os.PathLike, *, tap: str | None = None,
              heads: list[str] | tuple[str, ...] = ("logreg", "mlp"), val_fraction: float = 0.1,
              out: str | os.PathLike | None = "runs", random_state: int = 0,
              device: str = "auto", verbose: bool = True) -> dict[str, Any]:
    """Fit, select and rank heads on a feature bank.

    Parameters
    ----------
    bank : FeatureBank or path-like
    tap : str, optional
        Default: the bank's first tap.
    heads : sequence of str, default=("logreg", "mlp")
        Names from :func:`featurebank.heads.list_heads`.
    val_fraction : float, default=0.1
        Fraction of the train split held out (stratified, seeded) for selection.
    out : path-like or None, default="runs"
        Folder for ``<head>.joblib``, ``leaderboard.json``, ``leaderboard.csv`` and
        ``split.npz``; ``None`` writes nothing.
    random_state : int, default=0
        Seed of the validation split and of the stochastic heads.
    device : {"auto", "cpu", "cuda"}, default="auto"
    verbose : bool, default=True
        Print each head's result as it finishes.

    Returns
    -------
    dict
        The leaderboard: ``rows`` (one per head, best first), ``best_head`` (the best graftable
        head's name, or None), the bank fingerprint, tap and split sizes.
    """
    bank = bank if isinstance(bank, FeatureBank) else FeatureBank(bank)
    tap = tap or bank.taps[0]
    heads = check_head_names(heads)
    X, y, test = _load(bank, tap)
    train, val = _validation_split(y, val_fraction, random_state)
    out = Path(out) if out is not None else None
    rows = []
    with tqdm(total=sum(len(get_head_spec(h).candidates()) for h in heads), unit="fit",
              leave=False, disable=not verbose, file=sys.stderr, dynamic_ncols=True) as bar:
        for name in heads:
            bar.set_description(f"fit {name}")
            best, sweep_s, tried = _sweep(name, X, y, train, val, device=device,
                                          random_state=random_state, bar=bar)
            rows.append(_head_row(name, best, sweep_s, tried, test))
            if out is not None:
                _save(rows[-1], best[0], out, bank=bank, tap=tap, val=val)
            if verbose:
                bar.write(_row_line(rows[-1]), file=sys.stdout)
    rows.sort(key=lambda r: -r["val_accuracy"])
    best_head = next((r["head"] for r in rows if r["graftable"]), None)
    for r in rows:
        r["best"] = r["head"] == best_head
    board = {"bank": str(bank.path), "bank_fingerprint": bank.fingerprint, "tap": tap,
             "val_fraction": val_fraction, "random_state": random_state,
             "n_train": int(len(train)), "n_val": int(len(val)),
             "n_test": 0 if test is None else int(len(test[1])), "best_head": best_head,
             "rows": rows}
    if out is not None:
        _write(out, board, train, val)
    return board


def _load(bank: FeatureBank, tap: str):
    """The train features and labels of ``tap``, and the test split's when it has rows;
    refuses what no head can fit (no rows, one class, NaN or inf)."""
    if "train" not in bank.splits:
        raise BankError(f"feature bank {str(bank.path)!r} has no 'train' split (splits "
                        f"{bank.splits}).")
    X, y = bank.load("train", tap)
    if len(y) == 0:
        raise BankError(f"the train split of {str(bank.path)!r} is empty.")
    _check_features(X, bank, "train", tap)
    if len(np.unique(y)) < 2:
        raise BankError(f"the train split of {str(bank.path)!r} holds only one class "
                        f"({bank.classes[y[0]]!r}); heads need at least two.")
    test = bank.load("test", tap) if "test" in bank.splits and bank.num_rows("test") else None
    if test is not None:
        _check_features(test[0], bank, "test", tap)
    return X, y, test


def _head_row(name: str, best, sweep_s: float, tried, test) -> dict[str, Any]:
    est, params, val_acc, fit_s = best
    return {"head": name, "params": _short(params), "val_accuracy": val_acc,
            "test_accuracy": (float((est.predict(test[0]) == test[1]).mean())
                              if test is not None else None),
            "fit_seconds": fit_s, "sweep_seconds": sweep_s, "tried": tried,
            "graftable": get_head_spec(name).graftable}


def _save(row: dict[str, Any], est, out: Path, *, bank: FeatureBank, tap: str,
          val: np.ndarray) -> None:
    row["file"] = f"{row['head']}.joblib"
    save_head(est, out / row["file"], bank=bank, tap=tap, name=row["head"],
              params=row["params"], val_rows=val,
              metrics={k: row[k] for k in ("val_accuracy", "test_accuracy", "fit_seconds")})


def _row_line(row: dict[str, Any]) -> str:
    test = f"{row['test_accuracy']:.4f}" if row["test_accuracy"] is not None else "-"
    return (f"  {row['head']:<11} val {row['val_accuracy']:.4f}  test {test}  fit "
            f"{row['fit_seconds']:7.2f}s  sweep {row['sweep_seconds']:7.2f}s  {row['params']}")


def _write(out: Path, board: dict[str, Any], train: np.ndarray, val: np.ndarray) -> None:
    atomic_write(out / "split.npz", lambda f: np.savez(f, train_rows=train, val_rows=val))
    write_json(out / "leaderboard.json", {**board, "split": "split.npz"})
    cols = ["head", "val_accuracy", "test_accuracy", "fit_seconds", "sweep_seconds", "params",
            "graftable", "best", "file"]
    write_csv(out / "leaderboard.csv", [{**r, "params": json.dumps(r["params"])}
                                        for r in board["rows"]], cols)


def format_leaderboard(board: dict[str, Any]) -> str:
    """The leaderboard as a text table, best first."""
    lines = [f"{'head':<11} {'val acc':>8} {'test acc':>8} {'fit s':>8} {'sweep s':>8}  "
             f"params", "-" * 72]
    for r in board["rows"]:
        test = f"{r['test_accuracy']:.4f}" if r["test_accuracy"] is not None else "-"
        mark = "  <- best graftable" if r["best"] else ""
        lines.append(f"{r['head']:<11} {r['val_accuracy']:8.4f} {test:>8} "
                     f"{r['fit_seconds']:8.2f} {r['sweep_seconds']:8.2f}  "
                     f"{json.dumps(r['params'])}{mark}")
    return "\n".join(lines)
