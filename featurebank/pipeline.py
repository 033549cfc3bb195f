"""``featurebank run``: images -> bank -> heads -> (fine-tune) -> report, in one folder.

Each step is the library's own (``extract``, ``fit_heads``, ``finetune``, ``build_report``)
and each is skipped when its artefact exists and matches: the same arguments again find every
step up to date, so a rerun does nothing but say where everything is, and an interrupted run
continues (the extraction from its partial bank, the fine-tune from its checkpoint).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .artefacts import CHECKPOINT, SUMMARY
from .exceptions import FeatureBankError

__all__ = ["RunResult", "run"]


@dataclass(frozen=True)
class RunResult:
    """What :func:`run` made: the bank, the leaderboard, the fine-tune's summary (None when
    not asked for) and the report page (None without matplotlib), and where they are."""

    folder: Path
    bank: Any
    leaderboard: dict[str, Any]
    finetune: dict[str, Any] | None
    report: Path | None


def run(dataset: str, *, out: str | os.PathLike = "run", heads=("logreg", "mlp"),
        tta: bool = False, finetune_epochs: int = 0, data_root: str | os.PathLike = "data",
        download: bool = False, device: str = "auto", overwrite: bool = False,
        progress: bool = True, config: Any = None, **options: Any) -> RunResult:
    """Extract, fit, fine-tune (with ``finetune_epochs``) and report, into ``out``.

    ``out`` gets ``bank.h5``, ``runs/`` (heads and leaderboard), ``finetune/`` and
    ``report/``. ``config`` / ``**options`` are the extraction's (:class:`ExtractConfig`:
    ``model``, ``weights``, ``image_size``, ``taps``...). Without ``overwrite``, each step
    whose artefact was made with the same arguments is kept and one of other arguments is
    refused; ``overwrite`` redoes every step. With views in the bank (``views=K`` or
    ``mirror=True``), the heads choose them on validation as ``fit_heads`` does, with the
    mirror average too when ``tta``.
    """
    from .extraction import extract
    from .fit import fit_heads

    folder = Path(out)
    bank = extract(dataset, out=folder / "bank.h5", data_root=data_root, download=download,
                   device=device, overwrite=overwrite, progress=progress, config=config,
                   **options)
    board = fit_heads(bank, heads=list(heads), out=folder / "runs", device=device, tta=tta,
                      overwrite=overwrite, progress=progress)
    summary = None
    if finetune_epochs:
        from .finetuning import finetune

        ft = folder / "finetune"
        unfinished = (ft / CHECKPOINT).is_file() and not (ft / SUMMARY).is_file()
        summary = finetune(bank, runs=folder / "runs", out=ft, epochs=finetune_epochs,
                           resume=unfinished, overwrite=overwrite, device=device,
                           progress=progress)
    return RunResult(folder, bank, board, summary, _report(folder, summary, overwrite,
                                                           progress))


def _report(folder: Path, summary: dict[str, Any] | None, overwrite: bool,
            progress: bool) -> Path | None:
    from .artefacts import REPORT_HTML
    from .report import build_report, report_is_current

    ft = folder / "finetune" if summary is not None else None
    out = folder / "report"
    if not overwrite and report_is_current(folder / "runs", ft, out):
        return out / REPORT_HTML  # drawn from the fit and fine-tune as they are
    try:  # the run's own report: redrawn whenever what it shows changed
        return build_report(folder / "runs", ft, out=out, overwrite=True)
    except FeatureBankError as e:
        if "matplotlib" not in str(e):
            raise
        if progress:
            print(f"no report: {e}", file=sys.stderr)
        return None
