"""An evaluation report of a fit (and a fine-tune): metrics, plots and one HTML page.

For each head of a ``featurebank fit`` folder, and for a fine-tuned model: accuracy, top-5 and
balanced accuracy and scikit-learn's per-class precision / recall / F1 on the test split, a
confusion matrix, the validation accuracy across the regulariser sweep, the most confidently
wrong test images; for the fine-tune, its learning curves. The plots are PNG files (matplotlib,
the ``[plots]`` extra) and one self-contained ``report.html`` embeds them all, so a browser
opens it offline.
"""

from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path
from typing import Any

import numpy as np

from ._io import atomic_write, check_output, write_json
from .artefacts import (METRICS_JSON, REPORT_HTML, REPORT_JSON, SUMMARY, TEST_PREDICTIONS,
                        Leaderboard, model_sha256, read_best_model, read_json, read_leaderboard,
                        up_to_date)
from .bank import FeatureBank
from .exceptions import DataError, FeatureBankError
from .heads.calibration import Reliability

__all__ = ["build_report"]

_WRONG = 16  # images in each "most confidently wrong" grid


def _figure(width: float, height: float):
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise FeatureBankError("featurebank report draws its plots with matplotlib, which is not "
                               "installed: pip install \"featurebank[plots]\"") from None
    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


# -- metrics ---------------------------------------------------------------------------------
def scores(proba: np.ndarray, target: np.ndarray, names: list[str]) -> dict[str, Any]:
    """Accuracy, top-5 accuracy, balanced accuracy, per-class report and confusion matrix of
    probabilities ``(n, k)`` against column indices ``target``."""
    from sklearn.metrics import balanced_accuracy_score, classification_report, confusion_matrix

    pred = proba.argmax(1)
    topk = np.argsort(-proba, axis=1)[:, :5]  # all of them when there are 5 classes or fewer
    labels = list(range(len(names)))
    return {
        "n": int(len(target)), "accuracy": float((pred == target).mean()),
        "top5_accuracy": float((topk == target[:, None]).any(1).mean()),
        "balanced_accuracy": float(balanced_accuracy_score(target, pred)),
        "per_class": classification_report(target, pred, labels=labels, target_names=names,
                                           output_dict=True, zero_division=0),
        "confusion": confusion_matrix(target, pred, labels=labels).tolist()}


# -- plots -------------------------------------------------------------------------------------
def _confusion_png(cm: list[list[int]], names: list[str], title: str) -> bytes:
    cm = np.asarray(cm)
    side = min(12, 3 + 0.35 * len(names))
    fig = _figure(side + 1, side)
    ax = fig.add_subplot()
    im = ax.imshow(cm, cmap="Blues")
    fig.colorbar(im, ax=ax, shrink=0.8)
    if len(names) <= 30:
        ax.set_xticks(range(len(names)), names, rotation=90)
        ax.set_yticks(range(len(names)), names)
    if len(names) <= 15:
        for (i, j), v in np.ndenumerate(cm):
            ax.text(j, i, str(v), ha="center", va="center",
                    color="white" if v > cm.max() / 2 else "black", fontsize=8)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    return _png(fig)


def _sweep_png(tried: list[tuple[dict, float]], chosen: dict, title: str,
               metric: str = "accuracy") -> bytes:
    fig = _figure(6, 3.6)
    ax = fig.add_subplot()
    keys = list(tried[0][0]) if tried else []
    values = [p[keys[0]] for p, _ in tried] if len(keys) == 1 else []
    if values and all(isinstance(v, (int, float)) and v > 0 for v in values):
        order = np.argsort(values)
        ax.plot(np.asarray(values)[order], np.asarray([a for _, a in tried])[order], "o-")
        ax.set_xscale("log" if max(values) / min(values) >= 100 else "linear")
        ax.axvline(chosen[keys[0]], color="tab:red", ls="--", label="chosen")
        ax.set_xlabel(keys[0])
        ax.legend()
    else:  # several parameters: one bar per setting
        labels = [", ".join(f"{k}={v}" for k, v in p.items()) for p, _ in tried]
        ax.bar(range(len(tried)), [a for _, a in tried],
               color=["tab:red" if p == chosen else "tab:blue" for p, _ in tried])
        ax.set_xticks(range(len(tried)), labels, rotation=30, ha="right", fontsize=7)
    ax.set(ylabel=f"validation {metric.replace('_', ' ')}", title=title)
    return _png(fig)


def _calibration(record: dict[str, Any] | None) -> tuple[dict[str, Any] | None, bytes | None]:
    """The summary of a temperature's effect (on test, else validation) and its reliability
    diagram: accuracy against confidence per bin, before and after, with each ECE."""
    if not record:
        return None, None
    split = "test" if "test_ece_after" in record else "val"
    summary = {"temperature": record["temperature"], "split": split,
               **{f"{m}_{when}": record[f"{split}_{m}_{when}"]
                  for m in ("ece", "log_loss") for when in ("before", "after")}}
    fig = _figure(4.6, 4.2)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="0.6", ls="--", lw=1, label="perfectly calibrated")
    for when, colour in (("before", "tab:blue"), ("after", "tab:orange")):
        rel = Reliability.from_json(record[f"{split}_reliability_{when}"])
        seen = np.asarray(rel.count) > 0
        ax.plot(np.asarray(rel.confidence)[seen], np.asarray(rel.accuracy)[seen], "o-",
                color=colour, label=f"{when} (ECE {rel.ece:.3f})")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top-class probability)",
           ylabel="accuracy", title=f"reliability on {split}, T = {record['temperature']:.2f}")
    ax.legend(fontsize=8, loc="upper left")
    return summary, _png(fig)


def _curves_png(history: list[dict[str, Any]]) -> bytes:
    fig = _figure(9, 3.6)
    loss, acc = fig.subplots(1, 2)
    epochs = [r["epoch"] for r in history]
    train = [(r["epoch"], r["train_loss"]) for r in history if r["train_loss"] is not None]
    if train:
        loss.plot(*zip(*train), "o-", label="train loss")
    loss.plot(epochs, [r["val_loss"] for r in history], "o-", label="validation loss")
    loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss (epoch 0: the head as grafted)")
    loss.legend()
    acc.plot(epochs, [r["val_accuracy"] for r in history], "o-", color="tab:green")
    acc.set(xlabel="epoch", ylabel="validation accuracy", title="validation accuracy")
    from matplotlib.ticker import MaxNLocator

    for ax in (loss, acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return _png(fig)


def _grid_png(images: np.ndarray, captions: list[str], title: str) -> bytes:
    cols = min(8, max(1, len(images)))
    rows = max(1, -(-len(images) // cols))
    fig = _figure(1.6 * cols, 1.8 * rows + 0.4)
    fig.suptitle(title)
    for i, ax in enumerate(fig.subplots(rows, cols, squeeze=False).ravel()):
        ax.axis("off")
        if i < len(images):
            ax.imshow(images[i])
            ax.set_title(captions[i], fontsize=7)
    return _png(fig)


# -- one model's section -----------------------------------------------------------------------
class _Images:
    """Test images of a bank's source, for the grids (None when they cannot be reopened)."""

    def __init__(self, bank: FeatureBank, data_root: str | os.PathLike | None):
        from .data import reopen_source

        self.bank, self.note = bank, ""
        try:
            self.source = reopen_source(bank.dataset, data_root=data_root)
        except (DataError, KeyError) as e:
            self.source, self.note = None, f"no image grids: {e}"

    def take(self, rows: np.ndarray) -> np.ndarray | None:
        if self.source is None:
            return None
        return self.source.splits["test"].take(self.bank.index("test")[rows],
                                                decoding=self.bank.spec.decoding)


def _section(name: str, proba: np.ndarray, target: np.ndarray, names: list[str],
             images: _Images) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Metrics and plots of one model's test predictions."""
    result = scores(proba, target, names)
    plots = {"confusion": _confusion_png(result["confusion"], names, f"{name}: confusion")}
    wrong = np.flatnonzero(proba.argmax(1) != target)
    wrong = wrong[np.argsort(-proba[wrong].max(1), kind="stable")][:_WRONG]
    pictures = images.take(wrong) if len(wrong) else None
    if pictures is not None:
        captions = [f"{names[proba[i].argmax()]} {proba[i].max():.2f}\n(true {names[target[i]]})"
                    for i in wrong]
        plots["wrong"] = _grid_png(pictures, captions,
                                   f"{name}: most confidently wrong test images")
    return result, plots


def _head_sections(board: Leaderboard, bank: FeatureBank, images: _Images):
    from .heads import class_probabilities
    from .heads.persist import load_head

    names = list(bank.classes)
    tests: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for row in board.rows:
        est = load_head(board.folder / row["file"], bank=bank)
        if row["tap"] not in tests:
            tests[row["tap"]] = bank.load("test", row["tap"])
        X, y = tests[row["tap"]]
        proba = np.zeros((len(y), len(names)))
        proba[:, np.asarray(est.classes_)] = class_probabilities(est, X)  # columns: the bank's classes
        title = f"{row['head']} on {row['tap']}"
        result, plots = _section(title, proba, y, names, images)
        metric = row.get("metric", "accuracy")
        plots["sweep"] = _sweep_png([(p, a) for p, a in row["tried"]], row["params"],
                                    f"{title}: regulariser sweep (selected by {metric})", metric)
        calibration, diagram = _calibration(row.get("calibration"))
        if diagram is not None:
            plots["reliability"] = diagram
        yield title, {**result, "params": row["params"], "val_accuracy": row["val_accuracy"],
                      "selected_by": metric, "val_scores": row.get("val_scores"),
                      "class_weight": row.get("class_weight"), "calibration": calibration,
                      "n_val": row["n_val"], "best": row["best"]}, plots


def _finetune_section(ft: Path, bank: FeatureBank, images: _Images):
    best = read_best_model(ft)
    history = read_json(ft / METRICS_JSON, "a fine-tune's per-epoch metrics",
                        f"rerun the fine-tune (featurebank finetune --out {ft})")
    names = list(bank.classes)
    plots = {"curves": _curves_png(history)}
    result: dict[str, Any] = {"best_epoch": best.best_epoch}
    preds = ft / TEST_PREDICTIONS
    if preds.is_file():
        z = np.load(preds)
        proba = np.zeros((len(z["labels"]), len(names)))
        proba[:, np.asarray(best.head_classes)] = z["proba"]
        section, more = _section("fine-tuned", proba, z["labels"], names, images)
        result.update(section)
        plots.update(more)
    result["calibration"], diagram = _calibration(best.calibration)
    if diagram is not None:
        plots["reliability"] = diagram
    return result, plots


# -- the page ----------------------------------------------------------------------------------
def build_report(runs: str | os.PathLike, finetune: str | os.PathLike | None = None, *,
                 out: str | os.PathLike | None = None, bank: str | os.PathLike | None = None,
                 data_root: str | os.PathLike | None = None, overwrite: bool = False) -> Path:
    """Write the evaluation report of a fit folder (and a fine-tune folder).

    Parameters
    ----------
    runs : path-like
        A ``featurebank fit`` output folder (``leaderboard.json`` and the heads).
    finetune : path-like, optional
        A ``featurebank finetune`` output folder: its learning curves and test predictions.
    out : path-like, optional
        Folder for the PNG files, ``report.html`` and ``metrics.json``; default ``runs/report``.
    bank : path-like, optional
        The bank, when it moved since the fit (default: the path in the leaderboard).
    data_root : path-like, optional
        Where the bank's images are now, for the image grids, if they moved.
    overwrite : bool, default=False
        Replace a report of other inputs in ``out``. A report of the same fit and fine-tune
        (their files' content) is up to date: nothing is drawn (``report.json`` records them).

    Returns
    -------
    pathlib.Path
        The HTML page.
    """
    runs = Path(runs)
    _figure(1, 1)  # matplotlib missing: say so before any work
    out = check_output(out if out is not None else runs / "report", folder=True)
    board = read_leaderboard(runs)
    arguments = _inputs(board, finetune)
    if up_to_date(out / REPORT_HTML, out / REPORT_JSON, arguments, overwrite):
        return out / REPORT_HTML
    bank = FeatureBank(bank if bank is not None else board.bank)
    if "test" not in bank.splits or not bank.num_rows("test"):
        raise FeatureBankError(f"bank {str(bank.path)!r} has no test split to report on.")
    images = _Images(bank, data_root)
    sections = list(_head_sections(board, bank, images))
    if finetune is not None:
        result, plots = _finetune_section(Path(finetune), bank, images)
        sections.append(("fine-tuned model", result, plots))
    page = _write(out, sections, board, bank, images.note, finetune)
    write_json(out / REPORT_JSON, {"arguments": arguments})
    return page


def report_is_current(runs: str | os.PathLike, finetune: str | os.PathLike | None,
                      out: str | os.PathLike) -> bool:
    """Whether ``out`` holds the report of this fit and fine-tune as they are now."""
    try:
        return up_to_date(Path(out) / REPORT_HTML, Path(out) / REPORT_JSON,
                          _inputs(read_leaderboard(runs), finetune), overwrite=False)
    except FeatureBankError:
        return False


def _inputs(board: Leaderboard, finetune: str | os.PathLike | None) -> dict[str, Any]:
    """What a report shows, by content: the leaderboard, and the fine-tune's summary and
    weights."""
    from ._io import sha256_file

    out = {"runs": str(board.folder), "leaderboard": sha256_file(board.path)}
    if finetune is not None:
        ft = Path(finetune)
        out.update(finetune=str(ft), summary=sha256_file(ft / SUMMARY) if (
            ft / SUMMARY).is_file() else None, weights=model_sha256(ft))
    return out


def _slug(title: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in title).strip("_")


def _write(out: Path, sections, board: Leaderboard, bank: FeatureBank, note: str,
           finetune) -> Path:
    metrics = {}
    for title, result, plots in sections:
        metrics[title] = {k: v for k, v in result.items()}
        for kind, data in plots.items():
            atomic_write(out / f"{kind}_{_slug(title)}.png", lambda f, d=data: f.write(d))
    write_json(out / METRICS_JSON, metrics)
    page = _html(sections, board, bank, note, finetune).encode()
    return atomic_write(out / REPORT_HTML, lambda f: f.write(page))


def _table(rows: list[list[Any]], header: list[str]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _html(sections, board: Leaderboard, bank: FeatureBank, note: str, finetune) -> str:
    parts = [f"<h1>featurebank report</h1><p>bank <code>{html.escape(str(bank.path))}</code> "
             f"({html.escape(bank.spec.model)}, {len(bank.classes)} classes); test split "
             f"{bank.num_rows('test')} images; validation {board.n_val} rows"
             + (f"; fine-tune <code>{html.escape(str(finetune))}</code>" if finetune else "")
             + "</p>"]
    if note:
        parts.append(f"<p class=note>{html.escape(note)}</p>")
    summary = [[t, *(f"{r[k]:.4f}" if isinstance(r.get(k), float) else r.get(k, "-")
                     for k in ("accuracy", "top5_accuracy", "balanced_accuracy"))]
               for t, r, _ in sections]
    parts.append(_table(summary, ["model", "test accuracy", "top-5", "balanced accuracy"]))
    for title, result, plots in sections:
        parts.append(f"<h2>{html.escape(title)}</h2>")
        if result.get("val_scores"):
            rows = [[m.replace("_", " "), f"{v:.4f}"] for m, v in result["val_scores"].items()]
            parts.append(_table(rows, [f"validation (selected by "
                                       f"{result['selected_by'].replace('_', ' ')})", "value"]))
        if result.get("calibration"):
            c = result["calibration"]
            rows = [[m, f"{c[f'{key}_before']:.4f}", f"{c[f'{key}_after']:.4f}"]
                    for m, key in (("expected calibration error (15 bins)", "ece"),
                                   ("log loss", "log_loss"))]
            parts.append(_table(rows, [f"{c['split']} calibration, temperature "
                                       f"{c['temperature']:.3f}", "before", "after"]))
        if "per_class" in result:
            rows = [[c, *(f"{v[m]:.3f}" for m in ("precision", "recall", "f1-score")),
                     int(v["support"])] for c, v in result["per_class"].items()
                    if isinstance(v, dict)]
            parts.append(_table(rows, ["class", "precision", "recall", "F1", "support"]))
        parts += [_img(f"{title} {kind}", data) for kind, data in plots.items()]
    return _page("featurebank report", parts)


def _img(alt: str, png: bytes) -> str:
    """A PNG embedded in the page (the page stays one self-contained file)."""
    return (f'<img alt="{html.escape(alt)}" '
            f'src="data:image/png;base64,{base64.b64encode(png).decode()}">')


def _page(title: str, parts: list[str]) -> str:
    style = ("body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:"
             "collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:2px 8px;text-align:"
             "right}img{max-width:100%;display:block;margin:1em 0}.note{color:#a60}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title><style>{style}</style></head><body>{''.join(parts)}</body></html>")


# -- a probe suite's page ----------------------------------------------------------------------
def _largest(shots: list[Any]) -> Any:
    """The largest shot count: ``all`` when run."""
    return "all" if "all" in shots else max(shots)


def _best(summary: list[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    """The summary entry with the highest mean test accuracy among those matching."""
    found = [s for s in summary if all(s[k] == v for k, v in match.items())
             and s["test_accuracy_mean"] is not None]
    return max(found, key=lambda s: s["test_accuracy_mean"]) if found else None


def _heatmap_png(summary, models, datasets, shots) -> bytes:
    fig = _figure(1.8 + 1.6 * len(datasets), 1.2 + 0.6 * len(models))
    ax = fig.add_subplot()
    grid = np.full((len(models), len(datasets)), np.nan)
    for i, m in enumerate(models):
        for j, d in enumerate(datasets):
            best = _best(summary, model=m, dataset=d, shots=shots)
            if best is not None:
                grid[i, j] = best["test_accuracy_mean"]
                ax.text(j, i, f"{grid[i, j]:.3f}\n{best['tap']}", ha="center", va="center",
                        fontsize=8)
    image = ax.imshow(grid, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(datasets)), datasets, rotation=20, ha="right", fontsize=8)
    ax.set_yticks(range(len(models)), models, fontsize=8)
    ax.set_title(f"best tap's test accuracy ({shots}{'-shot' if shots != 'all' else ''})")
    fig.colorbar(image, ax=ax)
    return _png(fig)


def _shots_png(summary, models, dataset, shots) -> bytes:
    """Test accuracy against shots on one dataset: a line per model, each at the tap and head
    that are best at the largest shot count."""
    fig = _figure(5.5, 3.6)
    ax = fig.add_subplot()
    for m in models:
        top = _best(summary, model=m, dataset=dataset, shots=_largest(shots))
        if top is None:
            continue
        ys = [next((s for s in summary if (s["model"], s["dataset"], s["tap"], s["head"],
                                           s["shots"]) == (m, dataset, top["tap"],
                                                           top["head"], k)), None)
              for k in shots]
        xs = [i for i, s in enumerate(ys) if s is not None]
        ax.errorbar(xs, [ys[i]["test_accuracy_mean"] for i in xs],
                    yerr=[ys[i]["test_accuracy_std"] for i in xs], marker="o", capsize=3,
                    label=f"{m} ({top['tap']}, {top['head']})")
    ax.set_xticks(range(len(shots)), [str(k) for k in shots])
    ax.set(xlabel="training images per class", ylabel="test accuracy", title=dataset)
    ax.legend(fontsize=7)
    return _png(fig)


def _taps_png(summary, models, dataset, shots) -> bytes:
    """Test accuracy per tap (the layer sweep) on one dataset, at the largest shot count."""
    fig = _figure(5.5, 3.6)
    ax = fig.add_subplot()
    for m in models:
        taps = list(dict.fromkeys(s["tap"] for s in summary if s["model"] == m))
        values = [_best(summary, model=m, dataset=dataset, shots=shots, tap=t) for t in taps]
        ax.plot(range(len(taps)), [v["test_accuracy_mean"] if v else np.nan for v in values],
                "o-", label=m)
        for i, t in enumerate(taps):
            ax.annotate(t, (i, values[i]["test_accuracy_mean"] if values[i] else 0),
                        fontsize=6, rotation=30)
    ax.set(xlabel="tap (in the model's order)", ylabel="test accuracy",
           title=f"{dataset}: per tap ({shots}{'-shot' if shots != 'all' else ''})")
    ax.legend(fontsize=7)
    return _png(fig)


def suite_page(path: Path, record: dict[str, Any]) -> Path:
    """A probe suite's self-contained page: a model x dataset heatmap of the best tap,
    accuracy against shots per dataset, accuracy per tap per model, and the summary table."""
    summary, config = record["summary"], record["config"]
    models, datasets = list(config["models"]), list(config["datasets"])
    shots = list(config["shots"])
    plots = [("heatmap", _heatmap_png(summary, models, datasets, _largest(shots)))]
    for d in datasets:
        plots.append((f"shots {d}", _shots_png(summary, models, d, shots)))
        plots.append((f"taps {d}", _taps_png(summary, models, d, _largest(shots))))
    rows = [[s["dataset"], s["model"], s["tap"], s["head"], s["shots"], s["seeds"],
             *(f"{s[f'{m}_mean']:.4f} ± {s[f'{m}_std']:.4f}" if s[f"{m}_mean"] is not None
               else "-" for m in ("test_accuracy", "test_top5_accuracy",
                                  "test_balanced_accuracy"))] for s in summary]
    parts = [f"<h1>featurebank suite</h1><p>{len(models)} models × {len(datasets)} datasets, "
             f"shots {shots}, seeds {list(config['seeds'])}, heads {list(config['heads'])}; "
             f"extraction {record['seconds']['extract']:.1f} s, fits "
             f"{record['seconds']['fit']:.1f} s</p>",
             _table(rows, ["dataset", "model", "tap", "head", "shots", "seeds", "test accuracy",
                           "top-5", "balanced accuracy"])]
    parts += [_img(name, data) for name, data in plots]
    page = _page("featurebank suite", parts).encode()
    return atomic_write(path, lambda f: f.write(page))
