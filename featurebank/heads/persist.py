"""Saving and loading fitted heads with their provenance (joblib files).

A saved head is ``joblib.dump`` of ``{format, format_version, record, sha256}``: ``record`` is
the joblib bytes of a dict holding the estimator, the fingerprint of the bank it was fitted on,
the tap, the class names, the library versions, its metrics and parameters, and the validation
rows it was selected on; ``sha256`` is their checksum, verified before they are unpickled, so a
file whose bytes changed (a flipped bit in a coefficient) is refused instead of predicting
differently. Loading a head against another bank or tap is an error.

joblib files are pickles: loading one executes code. Only load heads you wrote.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import joblib
import numpy as np

from .._io import atomic_write, versions
from ..bank import FeatureBank
from ..exceptions import HeadError
from ..records import BankSpec, TapSelection

__all__ = ["load_head", "save_head"]

_FORMAT = "featurebank-head"
_VERSION = 2  # 1: the record itself, without a checksum (still read)
_UNREADABLE = (EOFError, pickle.UnpicklingError, ValueError, KeyError, IndexError,
               AttributeError, ImportError, ModuleNotFoundError, TypeError, OSError)


def save_head(estimator: Any, path: str | os.PathLike, *, bank: FeatureBank, tap: str,
              name: str | None = None, metrics: dict[str, Any] | None = None,
              params: dict[str, Any] | None = None,
              val_rows: np.ndarray | None = None, refit: bool = False) -> Path:
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
    refit : bool, default=False
        Whether the head was fitted on those validation rows too (after its selection).

    Returns
    -------
    pathlib.Path
    """
    path = Path(path)
    record = {
        "estimator": estimator,
        "bank_fingerprint": bank.fingerprint, "bank_path": str(bank.path), "tap": tap,
        "classes": list(bank.classes), "spec": bank.spec.to_json(), "versions": versions(),
        "name": name,
        "metrics": metrics or {}, "params": params or {},
        "val_rows": None if val_rows is None else np.asarray(val_rows, dtype=np.int64),
        "refit": bool(refit),
    }
    buf = io.BytesIO()
    joblib.dump(record, buf)
    data = buf.getvalue()
    outer = {"format": _FORMAT, "format_version": _VERSION, "record": data,
             "sha256": hashlib.sha256(data).hexdigest()}
    return atomic_write(path, lambda f: joblib.dump(outer, f))


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
    record = _read(Path(path))
    info = {k: v for k, v in record.items() if k != "estimator"}
    if info.get("spec") is not None:  # stored as the bank's JSON; typed once, here
        info["spec"] = BankSpec.from_json(info["spec"])
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
        if not set(TapSelection.parse(info["tap"])) <= set(bank.taps):
            raise HeadError(f"head {str(path)!r} uses tap {info['tap']!r}, which bank "
                            f"{str(bank.path)!r} lacks (taps {bank.taps}).")
    estimator = record["estimator"]
    estimator.featurebank_ = info
    return estimator


def _read(path: Path) -> dict[str, Any]:
    """The record of a head file, its checksum verified before it is unpickled."""
    if not path.is_file():
        raise HeadError(f"head file {str(path)!r} does not exist.")
    try:
        outer = joblib.load(path)
    except _UNREADABLE as e:
        raise _unreadable(path, e) from None
    if not isinstance(outer, dict) or outer.get("format") != _FORMAT:
        raise HeadError(f"{str(path)!r} is a joblib file but not a featurebank head; save heads "
                        f"with featurebank.save_head or featurebank fit.")
    if outer.get("format_version") == 1:  # written before heads carried a checksum
        warnings.warn(f"head file {str(path)!r} has no checksum (format 1); refit it with this "
                      f"version of featurebank to have its content verified.", stacklevel=3)
        return {k: v for k, v in outer.items() if k not in ("format", "format_version")}
    data = outer.get("record")
    if not isinstance(data, bytes) or hashlib.sha256(data).hexdigest() != outer.get("sha256"):
        raise HeadError(f"head file {str(path)!r} is damaged: its content does not match the "
                        f"checksum it was saved with (the file changed on disk). Refit it with "
                        f"featurebank fit, or restore it from a copy.")
    try:
        return joblib.load(io.BytesIO(data))
    except _UNREADABLE as e:
        raise _unreadable(path, e) from None


def _unreadable(path: Path, e: BaseException) -> HeadError:
    return HeadError(f"cannot load head file {str(path)!r}: it is truncated or not a "
                     f"featurebank head ({type(e).__name__}: {e}). Refit it with featurebank "
                     f"fit.")
