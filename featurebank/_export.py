"""Export a predictor's network to ONNX or TorchScript, with its preprocessing beside it."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ._decode import FILES, Decoding
from ._io import atomic_write, check_choice, sha256_file, versions, write_json
from .exceptions import FeatureBankError

if TYPE_CHECKING:
    from .predictor import Predictor

__all__ = ["EXPORT_FORMATS", "export"]

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


def export(predictor: Predictor, path: Path, *, format: str = "onnx") -> Path:
    """Write ``predictor.network`` (normalised images -> logits) to ``path`` in ``format``,
    and ``<path>.json`` with the input it expects, its preprocessing and its classes."""
    check_choice("format", format, EXPORT_FORMATS)
    net = predictor.network.to("cpu").eval().float()
    size = predictor.image_size
    x = torch.zeros(2, 3, size, size)
    try:
        with torch.no_grad():
            data = (_onnx_bytes if format == "onnx" else _torchscript_bytes)(net, x)
    except Exception as e:
        raise FeatureBankError(f"exporting {predictor.source!r} to {format} failed "
                               f"({type(e).__name__}: {str(e).splitlines()[0]}).") from None
    finally:
        predictor.network.to(predictor.device)
    atomic_write(path, lambda f: f.write(data))
    write_json(Path(f"{path}.json"), _sidecar(predictor, path, format))
    return path


def _sidecar(predictor: Predictor, path: Path, format: str) -> dict[str, Any]:
    spec = predictor.spec
    decoding = Decoding.from_spec(spec)
    return {
        "format": format, "file": path.name, "sha256": sha256_file(path),
        "input": {"name": "images", "dtype": "float32",
                  "shape": ["batch", 3, predictor.image_size, predictor.image_size],
                  "layout": "NCHW, RGB"},
        "output": {"name": "logits", "shape": ["batch", len(predictor.classes_)],
                   "softmax": "probabilities in 'classes' order"},
        "preprocessing": {
            "steps": ["decode to RGB uint8", _resize_step(spec),
                      "x = pixels / 255", "x = (x - mean) / std per channel"],
            "image_size": predictor.image_size, "resize": spec["resize"],
            "interpolation": spec["interpolation"], "antialias": spec.get("antialias", True),
            "decode": decoding.decoder if decoding.resize == FILES else None,  # files only
            "mean": list(spec["mean"]), "std": list(spec["std"])},
        "classes": [str(c) for c in predictor.classes_],
        "model": spec["model"], "weights": spec["weights"], "source": predictor.source,
        "versions": versions(),
    }


def _resize_step(spec: dict[str, Any]) -> str:
    size = spec["image_size"]
    if spec["resize"] == "device":
        return f"resize the whole image to {size} x {size} ({spec['interpolation']})"
    return (f"resize the shorter side to {size} ({spec['interpolation']}), then crop the centre "
            f"{size} x {size}")
