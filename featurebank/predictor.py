"""Use what you trained: a fine-tuned network or a saved head, as one predictor over images.

:func:`load_model` reads a fine-tune output folder (``best_model.pt`` + ``best_model.json``) or
a saved head (``runs/<head>.joblib``; its backbone is rebuilt from the bank's provenance) and
returns a :class:`Predictor`: images of any size (uint8 arrays, files, a folder, PIL images)
are brought to the model's input exactly as its bank's images were (the same resize policy,
interpolation, mean and std, all read from the recorded spec) and classified.
"""

from __future__ import annotations

import csv
import io
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch import nn

from ._io import (POSITIVE_INT, amp_dtype, atomic_write, autocast, check_output,
                  progress_bar, resolve_device, write_json)
from .artefacts import model_sha256, read_best_model, read_json, up_to_date
from .backbones import TapNetwork
from .bank import FeatureBank
from .exceptions import DataError, FeatureBankError
from .heads import class_probabilities
from .network import GraftedNetwork, load_finetuned
from .records import BankSpec

__all__ = ["Predictor", "load_model"]


def _image_files(folder: Path) -> list[Path]:
    from torchvision.datasets.folder import IMG_EXTENSIONS

    return sorted(p for p in folder.rglob("*") if p.is_file()
                  and p.suffix.lower() in IMG_EXTENSIONS)


_SOURCE_SETS = ("wds", "hf", "csv")  # dataset sources predict reads as input sets


def image_items(images: Any) -> list[tuple[str, Any]]:
    """``(name, image)`` pairs from what a user passes: a uint8 array ``(N, H, W, 3)`` (or one
    image), a PIL image, a path to an image, a folder (searched recursively), an ``.npz`` (its
    ``images`` or ``<split>_images`` arrays), a dataset source (``wds:PATTERN``,
    ``hf:NAME_OR_PATH``, ``csv:FILE``: every split's images, labels not needed), or a list of
    any of these."""
    from PIL import Image

    if isinstance(images, (list, tuple)):
        return [item for x in images for item in image_items(x)]
    if isinstance(images, Image.Image):
        return [("image", images)]
    if isinstance(images, str) and images.partition(":")[0] in _SOURCE_SETS:
        from .data import open_source

        source = open_source(images, labelled=False)  # every split's images, in order
        return [(split.describe_row(i), split.encoded(i)) for split in source.splits.values()
                for i in split.positions()]
    if isinstance(images, (str, os.PathLike)):
        path = Path(images)
        if not path.exists():
            raise DataError(f"image {str(path)!r} does not exist.")
        if path.is_dir():
            return [(str(p), p) for p in _image_files(path)]
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                keys = [k for k in z.files if k == "images" or k.endswith("_images")]
                if not keys:
                    raise DataError(f"npz file {str(path)!r} has no 'images' or '<split>_images' "
                                    f"array (it holds {z.files}).")
                return [(f"{path}:{k}[{i}]", x) for k in keys for i, x in enumerate(z[k])]
        return [(str(path), path)]
    array = np.asarray(images)
    if array.ndim == 3 and array.shape[-1] in (1, 3):
        array = array[None]
    return [(str(i), x) for i, x in enumerate(array)]


class Predictor:
    """Images -> classes, with the preprocessing the model's features were made with.

    Build one with :func:`load_model`.

    Attributes
    ----------
    classes_ : ndarray
        Class names, in the column order of :meth:`predict_proba`.
    network : GraftedNetwork or None
        The plain module from normalised ``(N, 3, S, S)`` images to logits (fine-tuned models
        and graftable heads; None for a k-NN head); :meth:`export` writes it.
    backbone : TapNetwork
        Normalised images -> tap features.
    spec : BankSpec
        The bank's spec: model, weights, taps, image size, resize policy, mean, std.
    source : str
        What was loaded.
    temperature : float
        The logits are divided by it before the softmax: a calibrated model's (``fit
        --calibrate``, ``finetune --calibrate``), 1.0 otherwise. Predictions do not depend on
        it.
    tta : bool
        Whether the model was selected with test-time augmentation (``fit --tta`` chose the
        mean of its probabilities over each image and its mirror): what :meth:`predict`
        does unless told otherwise.
    """

    def __init__(self, backbone: TapNetwork, *, classes: np.ndarray, spec: BankSpec,
                 tap: str, head: nn.Module | None = None, estimator: Any = None,
                 source: str = "", device: str = "auto", batch_size: int | None = None,
                 temperature: float = 1.0, tta: bool = False):
        self.device = resolve_device(device)
        self.spec, self.estimator, self.source = BankSpec.from_json(spec), estimator, source
        self.classes_ = np.asarray(classes)
        self.batch_size = POSITIVE_INT.check("batch_size", batch_size or (
            256 if self.device.type == "cuda" else 64))
        self.image_size = self.spec.image_size
        self.decoding = self.spec.decoding
        self.network = (GraftedNetwork(backbone, head, tap).to(self.device).eval()
                        if head is not None else None)
        self.backbone = backbone.to(self.device).eval()
        self.head = self.network.head if self.network is not None else None
        self.temperature = float(temperature)  # probabilities: softmax(logits / temperature)
        self.tta = bool(tta)
        # a saved head's features as its bank's rows were computed (a CPU with native
        # bfloat16 runs a bank extracted in bfloat16 the same way); a fine-tuned network as
        # it trained (float32 on the CPU); CUDA its own autocast
        self.amp = self.spec.amp(self.device) if estimator is not None else amp_dtype(
            self.device)
        self.model_sha256: str | None = None  # what load_model loaded, by content

    def __repr__(self) -> str:
        return (f"Predictor({self.source!r}, model={self.spec.model!r}, "
                f"classes={len(self.classes_)}, device={self.device})")

    # -- prediction ---------------------------------------------------------------------------
    def iter_predict(self, images: Any, *, skip_bad: bool = False, tta: bool | None = None
                     ) -> Iterator[tuple[list[str], np.ndarray, np.ndarray, list[str]]]:
        """Batch by batch: ``(names, predicted classes, probabilities, unreadable names)``.

        An unreadable file raises DataError naming it, unless ``skip_bad`` (then it is left out
        and named in the last element). ``tta``: average the probabilities over each image and
        its mirror (left to right, as the bank's mirror view), the prediction their most
        probable class; default :attr:`tta`, the model's own choice.
        """
        return self._iter_items(image_items(images), skip_bad, self._tta(tta))

    def _tta(self, tta: bool | None) -> bool:
        if tta is not None and not isinstance(tta, (bool, np.bool_)):
            raise FeatureBankError(f"the 'tta' parameter must be True, False or None (the "
                                   f"model's choice, {self.tta}); got {tta!r}.")
        return self.tta if tta is None else bool(tta)

    def _iter_items(self, items: list[tuple[str, Any]], skip_bad: bool, tta: bool):
        for s in range(0, len(items), self.batch_size):
            names, arrays, bad = [], [], []
            for name, image in items[s:s + self.batch_size]:
                array, err = self.decoding.load(image)
                if array is None and not skip_bad:
                    raise DataError(f"cannot read image {name!r} ({err}). Fix or remove it, or "
                                    f"pass skip_bad=True (--skip-bad) to leave it out.")
                if array is None:
                    bad.append(name)
                else:
                    names.append(name)
                    arrays.append(array)
            if arrays:
                labels, proba = self._classify(arrays, tta)
            else:
                labels, proba = self.classes_[:0], np.zeros((0, len(self.classes_)))
            yield names, labels, proba, bad

    def _classify(self, arrays: list[np.ndarray], tta: bool = False
                  ) -> tuple[np.ndarray, np.ndarray]:
        """Predicted classes and probabilities of a batch; with ``tta``, the mean of the
        images' and their mirrors' probabilities and its most probable class."""
        labels, proba = self._classify_view(arrays)
        if not tta:
            return labels, proba
        proba = (proba + self._classify_view([a[:, ::-1] for a in arrays])[1]) / 2
        return self.classes_[proba.argmax(1)], proba

    @torch.inference_mode()
    def _classify_view(self, arrays: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        x = self._input(arrays)
        with autocast(self.device, self.amp):
            feats = self.backbone(x).float()
        if self.estimator is not None:  # a saved head: features as the bank stored them
            X = feats.cpu().numpy().astype(self.spec.dtype).astype(np.float32)
            est = self.estimator
            proba = class_probabilities(est, X)
            return self.classes_[np.searchsorted(est.classes_, est.predict(X))], proba
        proba = torch.softmax(self.head(feats) / self.temperature, 1).cpu().double().numpy()
        return self.classes_[proba.argmax(1)], proba

    def _input(self, arrays: list[np.ndarray]) -> torch.Tensor:
        """Normalised network input; images of different sizes are resized one by one."""
        arrays = [np.ascontiguousarray(a) for a in arrays]  # a mirror's strides are negative
        prep, size = self.backbone.preprocessing, self.image_size
        if len({a.shape for a in arrays}) == 1:
            return prep.apply(torch.from_numpy(np.stack(arrays)).to(self.device), size)
        return torch.cat([prep.apply(torch.from_numpy(a[None]).to(self.device), size)
                          for a in arrays])

    def predict(self, images: Any, *, tta: bool | None = None) -> np.ndarray:
        """The predicted class name of each image (``tta``: as in :meth:`iter_predict`)."""
        return np.concatenate([labels for _, labels, _, _ in self.iter_predict(images,
                                                                               tta=tta)])

    def predict_proba(self, images: Any, *, tta: bool | None = None) -> np.ndarray:
        """Class probabilities ``(n_images, n_classes)``, columns in ``classes_`` order (for
        heads without probabilities, e.g. LinearSVC, the softmax of their scores; ``tta``: as
        in :meth:`iter_predict`)."""
        return np.concatenate([p for _, _, p, _ in self.iter_predict(images, tta=tta)])

    def predict_to_csv(self, images: Any, out: str | os.PathLike | IO[str], *, top_k: int = 5,
                       skip_bad: bool = False, progress: bool = False,
                       overwrite: bool = False, tta: bool | None = None) -> dict[str, Any]:
        """Classify ``images`` into a CSV: ``path, prediction, probability`` and the ``top_k``
        classes (``class_1, prob_1, ...``). ``out`` is a file path (written atomically, with
        ``<out>.json`` recording the arguments and the summary) or an open text file. Returns
        a summary: images classified, unreadable ones left out (``skip_bad``), and the count
        of each predicted class, most frequent first.

        A CSV of the same model, images (names, sizes, times) and options is up to date: its
        summary is returned and nothing is classified; another one is replaced only with
        ``overwrite``."""
        k = min(POSITIVE_INT.check("top_k", top_k), len(self.classes_))
        tta = self._tta(tta)
        items = image_items(images)  # listed once: a folder's files, an npz's arrays
        arguments = {"model": self.source, "model_sha256": self.model_sha256,
                     "images": _signature(items), "top_k": k, "skip_bad": skip_bad,
                     **({"tta": True} if tta else {})}
        record = Path(f"{out}.json") if not hasattr(out, "write") else None
        if record is not None:  # before any image is read: nothing is lost
            check_output(out)
            if self.model_sha256 is not None and up_to_date(out, record, arguments, overwrite):
                return read_json(record, "a prediction's record", "pass --overwrite")["summary"]
        columns = ["path", "prediction", "probability",
                   *(f"{c}_{i}" for i in range(1, k + 1) for c in ("class", "prob"))]
        summary: dict[str, Any] = {"images": 0, "skipped": [], "counts": {}}

        def write(f: IO[str]) -> None:
            w = csv.writer(f)
            w.writerow(columns)
            with progress_bar(total=len(items), desc="predict", enabled=progress) as bar:
                for names, labels, proba, bad in self._iter_items(items, skip_bad, tta):
                    for name, label, p in zip(names, labels, proba):
                        top = np.argsort(-p, kind="stable")[:k]
                        w.writerow([name, label, f"{p.max():.6f}", *(
                            v for j in top for v in (self.classes_[j], f"{p[j]:.6f}"))])
                        summary["counts"][label] = summary["counts"].get(label, 0) + 1
                    summary["images"] += len(names)
                    summary["skipped"] += bad
                    for name in bad:
                        bar.write(f"skipped unreadable image: {name}", file=sys.stderr)
                    bar.update(len(names) + len(bad))

        if hasattr(out, "write"):
            write(out)
        else:
            atomic_write(out, lambda f: _as_text(f, write))
        summary["counts"] = sorted(summary["counts"].items(), key=lambda kv: -kv[1])
        if record is not None:
            write_json(record, {"arguments": arguments, "summary": summary})
        return summary

    # -- export -------------------------------------------------------------------------------
    def export(self, path: str | os.PathLike, *, format: str = "onnx",
               overwrite: bool = False) -> Path:
        """Write :attr:`network` as ``onnx`` or ``torchscript``, with a JSON file beside it
        (``<path>.json``) recording its input, preprocessing and classes. An export of the same
        model and format there is up to date; another is replaced only with ``overwrite``."""
        from ._export import ModelCard, export

        if self.network is None:
            raise FeatureBankError(f"{self.source!r} is not a network (a k-NN head has no "
                                   f"torch form); export a linear or MLP head, or a fine-tuned "
                                   f"model.")
        card = ModelCard(self.spec, tuple(str(c) for c in self.classes_), self.source,
                         self.model_sha256, self.temperature, self.tta)
        return export(self.network, Path(path), format=format, card=card, overwrite=overwrite)


def _signature(items: list[tuple[str, Any]]) -> str:
    """SHA-256 of what a prediction reads: each item's name, and a file's size and time, an
    encoded sample's identity, or an array's bytes."""
    import hashlib

    h = hashlib.sha256()
    for name, image in items:
        h.update(f"{name}\0".encode())
        if isinstance(image, (str, os.PathLike)):
            st = os.stat(image)
            h.update(f"{st.st_size}\0{st.st_mtime_ns}\n".encode())
        elif hasattr(image, "identity"):
            h.update(f"{image.identity()}\n".encode())
        else:
            h.update(np.ascontiguousarray(np.asarray(image)).tobytes())
    return h.hexdigest()


def _as_text(f: IO[bytes], write) -> None:
    """``write(text_file)`` on a binary file, which stays open afterwards."""
    text = io.TextIOWrapper(f, encoding="utf-8", newline="")
    write(text)
    text.flush()
    text.detach()


def load_model(path: str | os.PathLike, *, bank: FeatureBank | str | os.PathLike | None = None,
               device: str = "auto", batch_size: int | None = None) -> Predictor:
    """Load a fine-tuned model or a saved head as a :class:`Predictor`.

    Parameters
    ----------
    path : path-like
        A ``featurebank finetune`` output folder (``best_model.pt`` and ``best_model.json``), or
        a saved head (``runs/<head>.joblib``).
    bank : FeatureBank or path-like, optional
        For a head saved by an older featurebank that did not record its bank's spec: the bank
        it was fitted on (default: the path recorded with it).
    device : {"auto", "cpu", "cuda"}, default="auto"
    batch_size : int, optional
        Images per forward pass; default 256 on CUDA, 64 on the CPU.

    Returns
    -------
    Predictor
    """
    path = Path(path)
    kw = {"device": device, "batch_size": batch_size, "source": str(path)}
    if not path.exists():
        raise FeatureBankError(f"{str(path)!r} does not exist; pass a fine-tune output folder "
                               f"(with best_model.pt) or a saved head (.joblib).")
    model = _load_finetuned(path, **kw) if path.is_dir() else _load_head(path, bank, **kw)
    model.model_sha256 = model_sha256(path)  # what was loaded, by content
    return model


def _load_finetuned(folder: Path, **kw: Any) -> Predictor:
    best = read_best_model(folder)
    net = load_finetuned(best)
    classes = np.asarray(best.classes)[np.asarray(best.head_classes)]
    return Predictor(net.backbone, classes=classes, spec=best.spec, tap=best.tap, head=net.head,
                     temperature=best.temperature, **kw)


def _load_head(path: Path, bank, **kw: Any) -> Predictor:
    from .heads.calibration import calibrated_parts
    from .heads.export import is_graftable, to_torch
    from .heads.persist import load_head

    est = load_head(path)
    info = est.featurebank_
    spec, classes = info.get("spec"), info["classes"]
    if spec is None:  # saved before heads recorded their bank's spec
        bank = FeatureBank(bank if bank is not None else info["bank_path"])
        spec, classes = bank.spec, bank.classes
    spec = BankSpec.from_json(spec)
    names = np.asarray(est.classes_)
    if np.issubdtype(names.dtype, np.integer):
        names = np.asarray(classes)[names]
    head = to_torch(est) if is_graftable(est) else None
    return Predictor(spec.rebuild_backbone(info["tap"]), classes=names, spec=spec,
                     tap=info["tap"], head=head, estimator=est,
                     temperature=calibrated_parts(est)[1],
                     tta=bool(info.get("metrics", {}).get("tta", False)), **kw)
