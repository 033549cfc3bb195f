"""Saving and loading fitted heads with their provenance (joblib files).

A saved head is ``joblib.dump`` of a dict: the estimator, the fingerprint of the bank it was
fitted on, the tap, the class names, the library versions, its metrics and parameters, and the
validation rows it was selected on. Loading it against another bank or tap is an error.

joblib files are pickles: loading one executes code. Only load heads you wrote.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import joblib
import numpy as np

from ..bank import FeatureBank, _versions
from ..exceptions import HeadError

__all__ = ["load_head", "save_head"]

_FORMAT = "featurebank-head"
_VERSION = 1


def save_head(estimator: Any, path: str | os.PathLike, *, bank: FeatureBank, tap: str,
              name: str | None = None, metrics: dict[str, Any] | None = None,
              params: dict[str, Any] | None = None,
              val_rows: np.ndarray | None = None) -> Path:
    """Write a fitted head and its provenance to ``path`` (atomically).

    Parameters
    ----------
    estimator : fitted estimator
    path : path-like
    bank : FeatureBank
        The bank the head was fitted on.
    tap : str
        The tap its features came from.
    name, metrics, params : optional
        Registry name, scores and chosen hyperparameters, kept for reports.
    val_rows : ndarray, optional
        Rows of the bank's train split held out for validation.

    Returns
    -------
    pathlib.Path
    """
    path = Path(path)
    record = {
        "format": _FORMAT, "format_version": _VERSION, "estimator": estimator,
        "bank_fingerprint": bank.fingerprint, "bank_path": str(bank.path), "tap": tap,
        "classes": list(bank.classes), "versions": _versions(), "name": name,
        "metrics": metrics or {}, "params": params or {},
        "val_rows": None if val_rows is None else np.asarray(val_rows, dtype=np.int64),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    joblib.dump(record, tmp)
    os.replace(tmp, path)
    return path


def load_head(path: str | os.PathLike, bank: FeatureBank | str | os.PathLike | None = None, *,
              tap: str | None = None) -> Any:
    """Load a head saved by ``featurebank fit`` or :func:`save_head`.

    .. warning:: joblib files are pickles and execute code when loaded: only load your own.

    Parameters
    ----------
    path : path-like
    bank : FeatureBank or path-like, optional
        When given, the head must come from this bank (same fingerprint) and its tap must be
        one of the bank's.
    tap : str, optional
        When given, the head must have been fitted on this tap.

    Returns
    -------
    estimator
        The fitted estimator; its provenance (``bank_fingerprint``, ``tap``, ``classes``,
        ``versions``, ``name``, ``metrics``, ``params``, ``val_rows``) is in its
        ``featurebank_`` attribute.
    """
    path = Path(path)
    if not path.is_file():
        raise HeadError(f"head file {str(path)!r} does not exist.")
    try:
        record = joblib.load(path)
    except (EOFError, pickle.UnpicklingError, ValueError, KeyError, IndexError,
            AttributeError, ImportError, ModuleNotFoundError, TypeError, OSError) as e:
        raise HeadError(f"cannot load head file {str(path)!r}: it is truncated or not a "
                        f"featurebank head ({type(e).__name__}: {e}). Refit it with "
                        f"featurebank fit.") from None
    if not isinstance(record, dict) or record.get("format") != _FORMAT:
        raise HeadError(f"{str(path)!r} is a joblib file but not a featurebank head; save heads "
                        f"with featurebank.save_head or featurebank fit.")
    info = {k: v for k, v in record.items() if k not in ("estimator", "format")}
    if tap is not None and info["tap"] != tap:
        raise HeadError(f"head {str(path)!r} was fitted on tap {info['tap']!r}, not {tap!r}.")
    if bank is not None:
        bank = bank if isinstance(bank, FeatureBank) else FeatureBank(bank)
        if info["bank_fingerprint"] != bank.fingerprint:
            raise HeadError(
                f"head {str(path)!r} was fitted on another feature bank (fingerprint "
                f"{info['bank_fingerprint'][:12]}, from {info['bank_path']!r}) than "
                f"{str(bank.path)!r} (fingerprint {bank.fingerprint[:12]}): its features come "
                f"from a different dataset, model, weights or preprocessing. Refit the head on "
                f"this bank.")
        if info["tap"] not in bank.taps:
            raise HeadError(f"head {str(path)!r} uses tap {info['tap']!r}, which bank "
                            f"{str(bank.path)!r} lacks (taps {bank.taps}).")
    estimator = record["estimator"]
    estimator.featurebank_ = info
    return estimator
