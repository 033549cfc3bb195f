"""Probe suites: backbones x datasets x taps x heads x shot counts x seeds, one table.

One straight line: extract each (model, dataset) once into a bank cache -> for every tap of
each bank, every shot count and seed, draw the protocol's rows and fit the heads (``fit``'s own
sweeps, selected on the validation rows) -> one result row per model x dataset x tap x head x
shots x seed -> ``results.json`` / ``.csv``, ``summary.csv`` (mean and std over seeds), a
markdown table and ``report.html``.

The protocol, recorded with every result: ``k`` shots are ``k`` training images per class,
drawn from the bank's train split with ``numpy.random.default_rng([seed, k])``; the regulariser
is selected on ``k`` more per class, drawn from the rest of the train split (never the test
split, never the ``k``-shot draw); ``all`` is ``fit``'s own stratified ``val_fraction`` split.
Test rows are the bank's whole test split.

Each finished (bank, tap, shots, seed) is written at once to ``OUT/cells/`` (all its heads); a
suite stopped at any point and run again keeps those and continues, and an interrupted
extraction resumes its partial bank. Banks live in ``OUT/banks/`` or a shared ``cache``, named
by the arguments that make them and checked against their fingerprint by ``extract``, so a
second suite that needs the same bank reuses it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._distributed import current_rank, process_group
from ._io import NON_NEGATIVE_INT, POSITIVE_INT, FRACTION, progress_bar, write_csv, write_json
from .bank import FeatureBank
from .exceptions import FeatureBankError, ParameterError

__all__ = ["SuiteConfig", "few_shot_rows", "markdown", "suite", "summarize"]

PROTOCOL = 1  # the version of the row draws below: a cell of another version is redone
RESULTS_JSON, RESULTS_CSV, SUMMARY_CSV, SUITE_HTML = ("results.json", "results.csv",
                                                      "summary.csv", "report.html")
_COLUMNS = ["model", "weights", "dataset", "image_size", "tap", "head", "shots", "seed",
            "test_accuracy", "test_top5_accuracy", "test_balanced_accuracy", "val_accuracy",
            "chosen", "views", "tta", "fit_seconds", "n_train", "n_val", "n_test", "bank",
            "bank_fingerprint"]


@dataclass(frozen=True)
class SuiteConfig:
    """What a suite runs. ``taps`` is an extraction's (``"fc7,penultimate"``; ``"all"``: each
    model's named taps; None: each model's default); ``shots`` are positive ints and
    ``"all"``; ``views`` random augmented views of each train image (and every image's mirror)
    are extracted into each bank, and each cell's heads choose on validation between the
    centre rows and the views, with and without the mirror average (0: no views);
    ``extract`` holds other :class:`~featurebank.ExtractConfig` options (``image_size``,
    ``weights``, ``dtype``, ``batch_size``, ``limit``, ...), the same for every bank."""

    models: tuple[str, ...]
    datasets: tuple[str, ...]
    taps: str | None = None
    heads: tuple[str, ...] = ("logreg",)
    shots: tuple[int | str, ...] = ("all",)
    seeds: tuple[int, ...] = (0,)
    val_fraction: float = 0.1
    views: int = 0
    extract: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from .extraction import ExtractConfig
        from .heads.registry import check_head_names

        for name in ("models", "datasets", "heads", "shots", "seeds"):
            value = getattr(self, name)
            value = tuple(value.split(",")) if isinstance(value, str) else tuple(value)
            if not value:
                raise ParameterError(f"the suite's {name!r} must name at least one; got none.")
            object.__setattr__(self, name, tuple(v.strip() if isinstance(v, str) else v
                                                 for v in value))
        check_head_names(self.heads)
        object.__setattr__(self, "shots", tuple(_shot(s) for s in self.shots))
        object.__setattr__(self, "seeds", tuple(NON_NEGATIVE_INT.check("seeds", int(s))
                                                for s in self.seeds))
        FRACTION.check("val_fraction", self.val_fraction)
        NON_NEGATIVE_INT.check("views", self.views)
        if "views" in self.extract or "mirror" in self.extract:
            raise ParameterError("the suite's views are its own 'views' key (--views K), not "
                                 "an extract option.")
        try:  # unknown or bad options: named
            ExtractConfig.merged(None, self.extract, "suite")
        except TypeError as e:
            raise ParameterError(f"the suite's extract options: {e}") from None

    @classmethod
    def from_toml(cls, path: str | os.PathLike, **overrides: Any) -> SuiteConfig:
        """A suite file: its keys are this record's fields (``[extract]`` a table of
        extraction options); ``overrides`` (the command line's) replace them."""
        try:
            import tomllib
        except ImportError:  # Python 3.10
            import tomli as tomllib
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise FeatureBankError(f"cannot read suite file {str(path)!r} ({e}); it must be "
                                   f"TOML with keys {[f.name for f in dataclasses.fields(cls)]}."
                                   ) from None
        data = data.get("suite", data)
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise FeatureBankError(f"suite file {str(path)!r} has unknown keys {unknown}; "
                                   f"expected {[f.name for f in dataclasses.fields(cls)]}.")
        extract = {**data.pop("extract", {}), **overrides.pop("extract", {})}
        return cls(**{**data, **{k: v for k, v in overrides.items() if v is not None},
                      "extract": extract})


def _shot(value: Any) -> int | str:
    if value == "all":
        return "all"
    try:
        return POSITIVE_INT.check("shots", int(value))
    except (TypeError, ValueError):
        raise ParameterError(f"the 'shots' parameter takes positive ints and 'all'; got "
                             f"{value!r}.") from None


def few_shot_rows(y: np.ndarray, shots: int | str, seed: int, val_fraction: float = 0.1
                  ) -> tuple[np.ndarray, np.ndarray]:
    """``(train rows, validation rows)`` of a train split with labels ``y``: ``shots`` rows per
    class and as many more per class for validation, disjoint, drawn with
    ``default_rng([seed, shots])``; for ``"all"``, ``fit``'s stratified ``val_fraction``
    split."""
    from .fit import _validation_split

    if shots == "all":
        return _validation_split(y, val_fraction, seed)
    rng = np.random.default_rng([seed, shots])
    train, val = [], []
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        if len(rows) < 2 * shots:
            raise FeatureBankError(
                f"{shots}-shot needs {2 * shots} training images of each class ({shots} to "
                f"train on, {shots} to select on), but class {int(c)} has {len(rows)}; use "
                f"fewer shots or a larger train split.")
        drawn = rng.permutation(rows)
        train.append(drawn[:shots])
        val.append(drawn[shots:2 * shots])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def suite(models: Sequence[str] | str | None = None, datasets: Sequence[str] | str | None = None,
          *, taps: str | None = None, heads: Sequence[str] | str = ("logreg",),
          shots: Sequence[int | str] = ("all",), seeds: Sequence[int] = (0,), views: int = 0,
          out: str | os.PathLike = "suite", cache: str | os.PathLike | None = None,
          data_root: str | os.PathLike = "data", download: bool = False, device: str = "auto",
          progress: bool = True, as_frame: bool = False, config: SuiteConfig | None = None,
          **extract_options: Any):
    """Run a probe suite: every model on every dataset, every tap, head, shot count and seed.

    Parameters
    ----------
    models, datasets : sequence of str
        Backbones (as ``extract --model``: ``vgg19``, ``resnet50``, ``timm:NAME``) and datasets
        (as ``extract --dataset``: ``cifar10``, ``folder:PATH``, ``npz:PATH``, ...).
    taps : str, optional
        Taps to extract and probe (``"fc7,penultimate"``, or module names such as
        ``"layer3,layer4,penultimate"``; ``"all"``: each model's named taps, as
        ``featurebank taps MODEL`` lists them); default each model's default tap.
    heads : sequence of str, default=("logreg",)
    shots : sequence of int or "all", default=("all",)
        Training images per class (see the module's protocol); ``"all"``: the whole train
        split less ``fit``'s validation split.
    seeds : sequence of int, default=(0,)
    views : int, default=0
        Random augmented views of each train image (``extract --views K``, with every
        image's mirror) in each bank; each cell's heads then choose on validation between
        the centre rows and the views, with and without the mirror average (``fit --tta``).
    out : path-like, default="suite"
        Folder for ``results.json``, ``results.csv``, ``summary.csv``, ``report.html``,
        ``cells/`` (finished cells, what a rerun keeps) and ``banks/`` (unless ``cache``).
    cache : path-like, optional
        A folder of banks shared between suites.
    data_root, download, device, progress
        As for :func:`featurebank.extract`; ``progress``: one bar over all cells (ETA) and a
        line per finished cell.
    as_frame : bool, default=False
        Return a pandas DataFrame (pandas needed) instead of a list of dicts.
    config : SuiteConfig, optional
        The suite as a record (``SuiteConfig.from_toml``); the arguments above are ignored.
    **extract_options
        Other :class:`~featurebank.ExtractConfig` options for every bank (``image_size``,
        ``weights``, ``dtype``, ``batch_size``, ``limit``, ...).

    Returns
    -------
    list of dict, or pandas.DataFrame
        One row per model x dataset x tap x head x shots x seed (``_COLUMNS``).
    """
    config = config or SuiteConfig(models or (), datasets or (), taps=taps, heads=heads,
                                   shots=shots, seeds=seeds, views=views,
                                   extract=extract_options)
    out = Path(out)
    folder = Path(cache) if cache is not None else out / "banks"
    rank = current_rank()
    t0 = time.perf_counter()
    with _one_group(rank, device):  # under torchrun every rank extracts every bank
        banks = [_bank(config, model, dataset, folder, data_root=data_root,
                       download=download, device=device, progress=progress)
                 for model in config.models for dataset in config.datasets]
    extract_s = time.perf_counter() - t0
    if rank is not None and rank.rank != 0:
        return []  # rank 0 fits the heads and writes the results
    rows = _cells(config, banks, out, device=device, progress=progress)
    _write(out, config, rows, banks, extract_s, time.perf_counter() - t0 - extract_s)
    if as_frame:
        import pandas as pd

        return pd.DataFrame(rows, columns=_COLUMNS)
    return rows


def _one_group(rank, device: str):
    """Under torchrun, one process group for all the suite's extractions (each would set up
    and tear down its own otherwise, and a second set-up on the same store hangs)."""
    if rank is None:
        return contextlib.nullcontext()
    from ._io import resolve_device

    return process_group(rank, resolve_device(device).type == "cuda")


@dataclass(frozen=True)
class _Bank:
    """A suite's bank: what made it, where it is, and how long its extraction took now."""

    model: str
    dataset: str
    bank: FeatureBank
    seconds: float
    extracted: bool  # False: an up-to-date bank was reused


def _bank(config: SuiteConfig, model: str, dataset: str, folder: Path, **kw: Any) -> _Bank:
    """The bank of ``model`` on ``dataset`` in ``folder``: extracted, resumed, or (up to date)
    as it is."""
    from .extraction import extract

    taps = config.taps
    if taps == "all":  # the model's named taps (`featurebank taps MODEL`)
        from .backbones import list_taps

        taps = ",".join(list_taps(model))
    options = {**config.extract, "model": model, "taps": taps,
               **({"views": config.views} if config.views else {})}
    key = hashlib.sha256(json.dumps([dataset, options], sort_keys=True, default=str)
                         .encode()).hexdigest()[:12]
    name = "".join(c if c.isalnum() else "-" for c in f"{dataset}_{model}")[-60:]
    path = folder / f"{name}_{key}.h5"
    before = path.stat().st_mtime_ns if path.exists() else None
    t = time.perf_counter()
    bank = extract(dataset, out=path, resume=True, **kw, **options)
    return _Bank(model, dataset, bank, time.perf_counter() - t,
                 extracted=before != path.stat().st_mtime_ns)


def _cells(config: SuiteConfig, banks: list[_Bank], out: Path, *, device: str,
           progress: bool) -> list[dict[str, Any]]:
    """Every cell's result rows: kept from ``out/cells/`` when they are there, else fitted
    (all heads of a bank, tap, shots and seed in one ``fit_heads``) and written at once."""
    groups = [(b, tap, k, seed) for b in banks for tap in b.bank.taps for k in config.shots
              for seed in config.seeds]
    rows: list[dict[str, Any]] = []
    with progress_bar(total=len(groups) * len(config.heads), desc="suite", unit="cell",
                      enabled=progress) as bar:
        for b, tap, k, seed in groups:
            path = out / "cells" / f"{b.bank.fingerprint[:16]}_{_slug(tap)}_{k}_{seed}.json"
            key = {"protocol": PROTOCOL, "bank_fingerprint": b.bank.fingerprint, "tap": tap,
                   "shots": k, "seed": seed, "heads": list(config.heads),
                   "val_fraction": config.val_fraction,
                   **({"views": config.views} if config.views else {})}
            cell = _kept(path, key)
            if cell is None:
                cell = _fit_cell(config, b, tap, k, seed, device) | {"key": key}
                write_json(path, cell)
                for r in cell["rows"]:
                    bar.write(_line(r), file=sys.stdout)
            rows += cell["rows"]
            bar.update(len(config.heads))
    return rows


def _kept(path: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """A finished cell of the same key, or None (absent, of other arguments, or damaged)."""
    try:
        cell = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return cell if cell.get("key") == key else None


def _fit_cell(config: SuiteConfig, b: _Bank, tap: str, shots: int | str, seed: int,
              device: str) -> dict[str, Any]:
    """Fit every head of the suite on one bank, tap, shot count and seed; the protocol's rows
    are recorded with the results."""
    from .fit import fit_heads

    bank = b.bank
    train, val = few_shot_rows(bank.labels("train"), shots, seed, config.val_fraction)
    with contextlib.redirect_stderr(io.StringIO()):  # fit's notes go into the cell instead
        board = fit_heads(bank, tap=tap, heads=list(config.heads), out=None,
                          random_state=seed, device=device, progress=False, train_rows=train,
                          val_rows=val, val_fraction=config.val_fraction,
                          views="all", tta=bool(config.views))
    spec = bank.spec
    rows = [{"model": b.model, "weights": str(spec.weights), "dataset": b.dataset,
             "image_size": spec.image_size, "tap": tap, "head": r["head"], "shots": shots,
             "seed": seed, "test_accuracy": _test(r, "accuracy"),
             "test_top5_accuracy": _test(r, "top5_accuracy"),
             "test_balanced_accuracy": _test(r, "balanced_accuracy"),
             "val_accuracy": r["val_accuracy"], "chosen": r["params"],
             "views": r["views"], "tta": r["tta"],
             "fit_seconds": r["sweep_seconds"], "n_train": board["n_train"],
             "n_val": board["n_val"], "n_test": board["n_test"], "bank": str(bank.path),
             "bank_fingerprint": bank.fingerprint}
            for r in sorted(board["rows"], key=lambda r: config.heads.index(r["head"]))]
    return {"rows": rows, "train_rows": train.tolist(), "val_rows": val.tolist(),
            "notes": board["notes"]}


def _test(row: dict[str, Any], metric: str) -> float | None:
    return (row.get("test_scores") or {}).get(metric)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text)


def _line(r: dict[str, Any]) -> str:
    acc = "-" if r["test_accuracy"] is None else f"{r['test_accuracy']:.4f}"
    return (f"  {r['model']} on {r['dataset']} {r['tap']} {r['head']} shots {r['shots']} "
            f"seed {r['seed']}: test {acc}  {json.dumps(r['chosen'])}  "
            f"{r['fit_seconds']:.2f}s")


_METRICS = ("test_accuracy", "test_top5_accuracy", "test_balanced_accuracy")
_GROUP = ("model", "dataset", "tap", "head", "shots")


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation (over seeds, ``ddof=1``) of each test metric per model,
    dataset, tap, head and shot count, in the rows' order."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in _GROUP), []).append(r)
    out = []
    for key, members in groups.items():
        entry: dict[str, Any] = dict(zip(_GROUP, key), seeds=len(members))
        for m in _METRICS:
            values = np.array([r[m] for r in members if r[m] is not None], dtype=float)
            entry[f"{m}_mean"] = float(values.mean()) if len(values) else None
            entry[f"{m}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        out.append(entry)
    return out


def markdown(summary: list[dict[str, Any]], metric: str = "test_accuracy") -> str:
    """The summary as a markdown table to paste: a row per dataset, model, tap and head, a
    column per shot count, ``mean ± std`` of ``metric`` over the seeds."""
    shots = list(dict.fromkeys(s["shots"] for s in summary))
    lines = [f"| dataset | model | tap | head | {' | '.join(f'{k}-shot' if k != 'all' else 'all' for k in shots)} |",
             "|---|---|---|---|" + "---|" * len(shots)]
    rows: dict[tuple, dict[Any, str]] = {}
    for s in summary:
        cell = "-" if s[f"{metric}_mean"] is None else (
            f"{s[f'{metric}_mean']:.4f} ± {s[f'{metric}_std']:.4f}")
        rows.setdefault((s["dataset"], s["model"], s["tap"], s["head"]), {})[s["shots"]] = cell
    for key, cells in rows.items():
        lines.append(f"| {' | '.join(key)} | {' | '.join(cells.get(k, '-') for k in shots)} |")
    return "\n".join(lines)


def _write(out: Path, config: SuiteConfig, rows: list[dict[str, Any]], banks: list[_Bank],
           extract_s: float, fit_s: float) -> None:
    summary = summarize(rows)
    record = {"config": dataclasses.asdict(config), "protocol": PROTOCOL,
              "seconds": {"extract": extract_s, "fit": fit_s},
              "banks": [{"model": b.model, "dataset": b.dataset, "bank": str(b.bank.path),
                         "fingerprint": b.bank.fingerprint, "extracted": b.extracted,
                         "seconds": b.seconds} for b in banks],
              "rows": rows, "summary": summary}
    write_json(out / RESULTS_JSON, record)
    write_csv(out / RESULTS_CSV, [{**r, "chosen": json.dumps(r["chosen"])} for r in rows],
              _COLUMNS)
    write_csv(out / SUMMARY_CSV, summary, list(summary[0]) if summary else list(_GROUP))
    from .report import suite_page

    try:
        suite_page(out / SUITE_HTML, record)
    except FeatureBankError as e:  # matplotlib is missing: the tables are what matter
        print(f"note: {e}; the results are written, {SUITE_HTML} is not.", file=sys.stderr)
