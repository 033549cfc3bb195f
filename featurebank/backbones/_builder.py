"""Building networks: preprocessing, weights (pretrained, a local file, a seeded random init),
and the one way to give a network built on the meta device its tensors."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .._io import sha256_file
from ..exceptions import BackboneError
from ..records import WeightsId

if TYPE_CHECKING:
    from ._registry import Family

__all__ = ["Preprocessing", "adopt_state_dict", "build", "resolve", "skeleton"]

_WEIGHT_FILE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".tar")


@dataclass(frozen=True)
class Preprocessing:
    """How uint8 images are turned into network input, taken from the weights' own metadata.

    Attributes
    ----------
    mean, std : tuple of float
        Per-channel normalisation of [0, 1] pixel values.
    interpolation : str
        ``"bilinear"``, ``"bicubic"`` or ``"nearest"`` (resizing, antialiased).
    source : str
        Where the values came from, e.g. ``"torchvision:VGG19_Weights.IMAGENET1K_V1"``.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str
    source: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def apply(self, images: torch.Tensor, image_size: int) -> torch.Tensor:
        """uint8 ``(N, H, W, 3)`` images to normalised float ``(N, 3, S, S)``, channels_last.

        Runs on the tensor's device: resize (antialiased, this interpolation) when the size
        differs, then ``(x / 255 - mean) / std``.
        """
        x = images.permute(0, 3, 1, 2).float()
        if x.shape[-2:] != (image_size, image_size):
            mode = self.interpolation
            x = torch.nn.functional.interpolate(
                x, size=(image_size, image_size), mode=mode,
                antialias=mode != "nearest",
                **({} if mode == "nearest" else {"align_corners": False}))
            if mode == "bicubic":
                x = x.clamp_(0, 255)  # bicubic overshoots; PIL's result is clamped to uint8 too
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1) * 255
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1) * 255
        return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


def _family(name: str) -> Family:
    from ._registry import family_of

    return family_of(name)


def build(name: str, pretrained: Any = None) -> nn.Module:
    """The bare network of ``name``: with ``pretrained`` weights (what its family's
    ``pretrained`` gave; downloaded once by torchvision or timm), or randomly initialised."""
    family = _family(name)
    try:
        return family.build(family.bare(name), pretrained)
    except OSError as e:  # the download server or hub could not be reached
        raise _offline_error(name, e) from None


def _offline_error(name: str, e: OSError) -> BackboneError:
    reason = getattr(e, "reason", None) or str(e).splitlines()[0]
    return BackboneError(
        f"could not download the pretrained weights of {name!r} ({reason}): this machine has "
        f"no network, or cannot reach the download server. Copy a state_dict file in and pass "
        f"--weights PATH (weights=PATH), or copy the weights cache ($TORCH_HOME/hub/checkpoints "
        f"for torchvision, the Hugging Face cache ($HF_HOME, ~/.cache/huggingface) for timm) "
        f"from a machine that has them; with HF_HUB_OFFLINE=1 timm reads its cache without "
        f"trying the network. README's 'Offline use' shows each.")


def skeleton(name: str) -> nn.Module:
    """The bare network with parameters on the meta device (no memory, no init): the shape
    to load a ``state_dict`` into with :func:`adopt_state_dict`."""
    with torch.device("meta"):
        return build(name).eval()


def random_init(name: str) -> nn.Module:
    """A randomly initialised network, the same on every call: ``weights="none"`` banks are
    reproducible and resumable, and the global RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return build(name)


def adopt_state_dict(module: nn.Module, state: Mapping[str, torch.Tensor],
                     build_real: Callable[[], nn.Module]) -> nn.Module:
    """``module`` (built on the meta device) holding ``state``'s tensors, without an init or a
    second copy; when a tensor the state does not hold (a non-persistent buffer) would stay
    on meta, ``build_real()`` is built for real and loaded instead."""
    module.load_state_dict(state, strict=True, assign=True)
    if any(t.is_meta for t in [*module.parameters(), *module.buffers()]):
        module = build_real()
        module.load_state_dict(state, strict=True)
    return module


def _is_path(weights: str) -> bool:
    return (os.sep in weights or "/" in weights or weights.endswith(_WEIGHT_FILE_SUFFIXES)
            or Path(weights).exists())


def _read_state_dict(path: Path, name: str) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise BackboneError(f"weights file {str(path)!r} does not exist (weights=PATH).")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise BackboneError(
            f"cannot load weights file {str(path)!r} with torch.load(weights_only=True): "
            f"{type(e).__name__}: {str(e).splitlines()[0]}. Save a plain state_dict: "
            f"torch.save(model.state_dict(), PATH).") from None
    for key in ("state_dict", "model", "model_state_dict"):  # common checkpoint wrappers
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise BackboneError(f"weights file {str(path)!r} does not hold a state_dict of "
                            f"tensors for {name!r}.")
    if all(k.startswith("module.") for k in obj):  # saved from DataParallel/DDP
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def _mismatch(path: Path, name: str, model: nn.Module, state: dict, e: Exception) -> BackboneError:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
              for k in expected if k in state and state[k].shape != expected[k].shape]
    detail = "; ".join(filter(None, [
        f"missing keys {missing[:5]}{' ...' if len(missing) > 5 else ''}" if missing else "",
        f"unexpected keys {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}"
        if unexpected else "",
        f"shape mismatches {shapes[:3]}" if shapes else ""])) or str(e).splitlines()[0]
    return BackboneError(
        f"weights file {str(path)!r} does not fit model {name!r} ({detail}). Pass the "
        f"state_dict of a {name!r} model, or the --model it was saved from.")


def _load_weights_file(name: str, path: Path) -> nn.Module:
    state = _read_state_dict(path, name)
    # Built on the meta device, the file's tensors adopted: no time spent on a random init
    # that would be overwritten, and no second copy of the weights in memory.
    model = skeleton(name).train()
    try:
        return adopt_state_dict(model, state, lambda: build(name))
    except RuntimeError as e:
        raise _mismatch(path, name, model, state, e) from None


def resolve(name: str, weights: str | None
            ) -> tuple[nn.Module, WeightsId, Path | None, Preprocessing]:
    """Build the network and read its preprocessing; returns (model, weights id, path, prep).

    ``weights``: ``"DEFAULT"`` or a weights name (the family's pretrained weights), ``"none"``
    (a seeded random init) or the path of a local state_dict file.
    """
    family = _family(name)
    bare = family.bare(name)
    w = "none" if weights is None else str(weights)
    path = Path(w).expanduser() if w.lower() not in ("none", "default") and _is_path(w) else None
    pretrained = None
    if path is not None:
        model, wid = _load_weights_file(name, path), WeightsId("file", sha256_file(path))
    elif w.lower() == "none":
        model, wid = random_init(name), WeightsId("none")
    else:
        pretrained = family.pretrained(bare, w)
        model = build(name, pretrained)
        wid = family.weights_id(model, pretrained)
    return model, wid, path, family.preprocessing(bare, model, pretrained)
