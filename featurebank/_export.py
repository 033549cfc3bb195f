"""Export a network to ONNX or TorchScript, with its preprocessing beside it (a model card)."""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ._io import atomic_write, check_choice, check_output, sha256_file, versions, write_json
from .artefacts import up_to_date
from .exceptions import FeatureBankError
from .records import BankSpec, Resize

__all__ = ["EXPORT_FORMATS", "ModelCard", "export"]

EXPORT_FORMATS = ("onnx", "torchscript")


def _onnx_bytes(net: torch.nn.Module, x: torch.Tensor) -> bytes:
    """ONNX through torch.export (the dynamo exporter, needs onnxscript), else TorchScript
    tracing; the batch dimension stays free."""
    buf = io.BytesIO()
    try:
        import onnxscript  # noqa: F401
    except ImportError:
        torch.onnx.export(net, (x,), buf, dynamo=False, input_names=["images"],
                          output_names=["logits"], dynamic_axes={"images": {0: "batch"},
                                                                 "logits": {0: "batch"}})
        return buf.getvalue()
    program = torch.onnx.export(net, (x,), dynamo=True, input_names=["images"],
                                output_names=["logits"], verbose=False,
                                dynamic_shapes=({0: torch.export.Dim("batch")},))
    program.save(buf)
    return buf.getvalue()


def _torchscript_bytes(net: torch.nn.Module, x: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's deprecation notice
        torch.jit.save(torch.jit.trace(net, x), buf)
    return buf.getvalue()


@dataclass(frozen=True)
class ModelCard:
    """What the file beside an exported network records: the bank's spec (input size,
    preprocessing, backbone, weights), the class names in output order, and where the model
    came from."""

    spec: BankSpec
    classes: tuple[str, ...]
    source: str
    model_sha256: str | None = None  # the trained model's content (artefacts.model_sha256)
    temperature: float = 1.0  # probabilities are softmax(logits / temperature)
    tta: bool = False  # selected with the mean over each image and its mirror

    def to_json(self) -> dict[str, Any]:
        spec, size = self.spec, self.spec.image_size
        return {
            "input": {"name": "images", "dtype": "float32", "shape": ["batch", 3, size, size],
                      "layout": "NCHW, RGB"},
            "output": {"name": "logits", "shape": ["batch", len(self.classes)],
                       "softmax": "softmax(logits / temperature): probabilities in 'classes' "
                                  "order",
                       "temperature": self.temperature,
                       "test_time_augmentation": (
                           "mirror: average the probabilities of each image and of the image "
                           "flipped left to right (before preprocessing), as the model was "
                           "selected" if self.tta else None)},
            "preprocessing": {
                "steps": ["decode to RGB uint8", _resize_step(spec),
                          "x = pixels / 255", "x = (x - mean) / std per channel"],
                "image_size": size, "resize": spec.resize.value,
                "interpolation": spec.interpolation, "antialias": spec.antialias,
                "decode": spec.decode if spec.resize == Resize.FILES else None,  # files only
                "mean": list(spec.mean), "std": list(spec.std)},
            "classes": list(self.classes),
            "model": spec.model, "weights": str(spec.weights), "source": self.source,
            "model_sha256": self.model_sha256, "versions": versions(),
        }


def export(network: torch.nn.Module, path: str | os.PathLike, *, format: str = "onnx",
           card: ModelCard, overwrite: bool = False) -> Path:
    """Write ``network`` (normalised images -> logits) to ``path`` in ``format``, and
    ``<path>.json`` with the input it expects, its preprocessing and its classes (``card``).

    The output location is checked before the export runs; an export of the same model and
    format there is up to date (nothing is done), another one is replaced only with
    ``overwrite``. The network is traced on the CPU in float32 and put back on its device
    afterwards."""
    check_choice("format", format, EXPORT_FORMATS)
    path = check_output(path)
    arguments = {"format": format, "source": card.source, "model_sha256": card.model_sha256}
    if card.model_sha256 is not None and up_to_date(path, f"{path}.json", arguments, overwrite):
        return path
    if format == "onnx":
        try:
            import onnx  # noqa: F401  (torch's exporter needs it; say which extra has it)
        except ImportError:
            raise FeatureBankError('ONNX export needs the onnx package: pip install '
                                   '"featurebank[onnx]" (or export --format torchscript).'
                                   ) from None
    param = next(network.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    size = card.spec.image_size
    net = network.to("cpu").eval().float()
    try:
        with torch.no_grad():
            data = (_onnx_bytes if format == "onnx" else _torchscript_bytes)(
                net, torch.zeros(2, 3, size, size))
    except Exception as e:
        raise FeatureBankError(f"exporting {card.source!r} to {format} failed "
                               f"({type(e).__name__}: {str(e).splitlines()[0]}).") from None
    finally:
        network.to(device)
    atomic_write(path, lambda f: f.write(data))
    write_json(Path(f"{path}.json"), {"format": format, "file": path.name,
                                      "sha256": sha256_file(path), **card.to_json(),
                                      "arguments": arguments})
    return path


def _resize_step(spec: BankSpec) -> str:
    size = spec.image_size
    if spec.resize == Resize.DEVICE:
        return f"resize the whole image to {size} x {size} ({spec.interpolation})"
    return (f"resize the shorter side to {size} ({spec.interpolation}), then crop the centre "
            f"{size} x {size}")
