"""How an image becomes the uint8 ``(S, S, 3)`` picture a bank row saw: decoders and resizing.

A :class:`Decoding` is the whole recipe (size, interpolation, resize policy, decoder), read from
a bank's ``spec`` by everything that must see the images the way the extraction did (fine-tune,
predictor, report). Image files are brought to size as the extraction recorded in
``spec.resize``: ``shorter_side_center_crop`` (the shorter side resized, antialiased, then the
centre square). Fixed-size arrays (CIFAR, npz) keep their size (``device``: the engine resizes
the whole batch on the device).

Decoders (``spec.decode``, ``--decode``):

``pil``
    PIL decodes and resizes, in DataLoader workers (the default, and every bank before the
    field existed).
``tensor``
    JPEGs decoded straight to tensors (TorchCodec's ``decode_jpeg`` when it is installed, else
    ``torchvision.io``'s, which torchvision 0.29 deprecated in its favour: both libjpeg-turbo,
    the same pixels as PIL's), brought to size by torch's uint8 antialiased resize, in the
    workers: about twice PIL's rate per core on ImageNet-sized JPEGs (the resize is 3x faster).
``gpu``
    Workers only read the files; JPEGs are decoded a batch at a time on the extraction's CUDA
    device (the same ``decode_jpeg``: nvJPEG) and resized there. A JPEG the GPU decoder refuses
    is decoded on the CPU instead (libjpeg-turbo, then PIL), as is every other format.

With bilinear and bicubic resizing all three agree with PIL to within 2 levels per pixel
(tested; with nearest, a row or column can come from its neighbour at some scales). The decoder
is recorded so a resumed extraction, the fine-tune, the predictor and the report use the same
one (the fine-tune's workers decode a ``gpu`` bank on its device, as the extraction did; the
predictor, the report and inline reads decode it on the CPU with the same resize: only the JPEG
decoder itself, nvJPEG against libjpeg-turbo, can differ).
"""

from __future__ import annotations

import functools
import io
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ._io import check_choice
from .exceptions import DataError
from .records import Resize

__all__ = ["DECODERS", "Decoding", "check_images", "jpeg_decoder"]

DECODERS = ("pil", "tensor", "gpu")


def _unreadable() -> tuple[type[Exception], ...]:
    """What counts as an unreadable image (a decoder's complaint); anything else is a bug."""
    from PIL import Image

    return OSError, ValueError, SyntaxError, Image.DecompressionBombError


def _to_rgb(im):
    """An opened PIL image as 8-bit RGB, scaling 16-bit pixels rather than clipping them.

    ``convert("RGB")`` clips every value above 255, so a 16-bit greyscale PNG (mode ``I;16``)
    would come out nearly white: those are scaled to 8 bits (``v * 255 / 65535``). 32-bit
    integer and float pixels have no standard 8-bit scale and are refused (ValueError), unless
    they already lie in 0..255.
    """
    from PIL import Image

    if im.mode.startswith("I;16"):
        a = np.asarray(im).astype(np.uint32)
        return Image.fromarray(((a * 255 + 32767) // 65535).astype(np.uint8), "L").convert("RGB")
    if im.mode in ("I", "F"):
        a = np.asarray(im)
        if a.size and (a.min() < 0 or a.max() > 255 or (im.mode == "F" and (a % 1).any())):
            raise ValueError(
                f"{'32-bit integer' if im.mode == 'I' else 'floating-point'} pixels (mode "
                f"{im.mode!r}) with values from {a.min():g} to {a.max():g} have no standard "
                f"8-bit scale; save the image as 8- or 16-bit")
    return im.convert("RGB")


def check_images(images: Any, what: str) -> np.ndarray:
    """``images`` as uint8 ``(N, H, W, 3)`` (greyscale repeated), or DataError naming
    ``what``."""
    images = np.asarray(images)
    if images.ndim == 4 and images.shape[-1] == 1 or images.ndim == 3:
        images = np.repeat(images.reshape(images.shape[:3] + (1,)), 3, axis=-1)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise DataError(
            f"{what} has shape {images.shape} and dtype {images.dtype}; expected uint8 images "
            f"of shape (N, H, W, 3) (or (N, H, W) greyscale).")
    return images


def _pil_rgb(image: Any):
    """A file path or PIL image as an 8-bit RGB PIL image (a full decode: truncated files
    fail here)."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return _to_rgb(image)
    with Image.open(image) as im:
        return _to_rgb(im)


def _encoded(image: Any) -> bytes | None:
    """The encoded bytes of an image held as bytes or as an object that reads them
    (``read_bytes()``: a member of a tar shard, a Parquet cell, a ``pathlib.Path``); None for
    what is not encoded (a path string, a PIL image, an array)."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    if hasattr(image, "read_bytes"):
        return image.read_bytes()
    return None


def _is_jpeg(data: bytes | np.ndarray) -> bool:
    return bytes(data[:3]) == b"\xff\xd8\xff"


def _as_bytes_tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)  # writable: no torch warning


def _torchcodec_decoder() -> Callable[..., Any]:
    from torchcodec.decoders import decode_jpeg

    return lambda data, device: decode_jpeg(data, mode="RGB", device=device)


def _torchvision_decoder() -> Callable[..., Any]:
    from torchvision.io import ImageReadMode
    from torchvision.io import decode_jpeg

    def decode(data, device):
        with warnings.catch_warnings():  # deprecated for TorchCodec; used where that fails
            warnings.simplefilter("ignore", DeprecationWarning)
            return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)

    return decode


_JPEG_DECODERS = {"TorchCodec": _torchcodec_decoder, "torchvision.io": _torchvision_decoder}


@functools.cache
def jpeg_decoder(device_type: str = "cpu") -> Callable[..., Any]:
    """``decode(data, device)``: 1-D uint8 JPEG bytes (or a list, one batch) to RGB
    ``(3, H, W)`` uint8 on ``device``. TorchCodec's ``decode_jpeg`` when it works on this
    kind of device (its wheels pair with particular torch versions, and not every build has
    CUDA), else torchvision.io's: libjpeg-turbo on the CPU and nvJPEG on CUDA either way.
    Each is tried on a small JPEG first, so a missing decoder is an error before any work,
    never a silent slow path."""
    from PIL import Image

    probe = io.BytesIO()
    Image.new("RGB", (16, 8), (200, 30, 90)).save(probe, format="JPEG")
    data = _as_bytes_tensor(probe.getvalue())
    failures = []
    for name, make in _JPEG_DECODERS.items():
        try:
            decode = make()
            if decode([data], torch.device(device_type))[0].shape == (3, 8, 16):
                return decode
        except Exception as e:  # noqa: BLE001 - any failure means "not usable here"
            failures.append(f"{name}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
    raise DataError(
        f"no JPEG decoder works on the {device_type} device ({'; '.join(failures)}); install "
        f"a TorchCodec or torchvision build for it (pip install torchcodec), or use "
        f"decode='pil' (--decode pil).")


def _decode_cpu(data: bytes) -> np.ndarray:
    """An encoded image as uint8 ``(H, W, 3)`` on the CPU: libjpeg-turbo for JPEGs, PIL for
    the rest and for JPEGs that refuses (so every format PIL reads is read)."""
    if _is_jpeg(data):
        try:
            return jpeg_decoder("cpu")(_as_bytes_tensor(data), "cpu").permute(1, 2, 0).numpy()
        except RuntimeError:
            pass  # e.g. a JPEG flavour libjpeg-turbo's API refuses: PIL's own reader next
    return np.asarray(_pil_rgb(io.BytesIO(data)), dtype=np.uint8)


def _chw(array: np.ndarray) -> torch.Tensor:
    """uint8 ``(H, W, 3)`` as a ``(3, H, W)`` tensor view (a copy only if read-only, as
    PIL's arrays are: torch refuses to share those)."""
    return torch.from_numpy(array if array.flags.writeable else array.copy()).permute(2, 0, 1)


def _shorter_side(h: int, w: int, size: int) -> tuple[int, int]:
    """The ``(height, width)`` whose shorter side is ``size``, as torchvision computes it."""
    if h <= w:
        return size, int(size * w / h)
    return int(size * h / w), size


def _mode(interpolation: str):
    from torchvision.transforms import InterpolationMode

    # torch's "nearest" picks other pixels than PIL's; "nearest-exact" picks PIL's but for
    # an occasional row or column
    return InterpolationMode.NEAREST_EXACT if interpolation == "nearest" else InterpolationMode(
        interpolation)


def _crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """The centre ``size`` x ``size`` of ``(..., H, W)``, as torchvision's ``center_crop``."""
    h, w = x.shape[-2:]
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return x[..., top:top + size, left:left + size]


def _resize_uint8(x: torch.Tensor, size: int, interpolation: str) -> torch.Tensor:
    """``(..., 3, H, W)`` uint8 to the centre square of side ``size``: torch's uint8 kernel
    (fast on the CPU)."""
    from torchvision.transforms.v2 import functional as F

    hw = _shorter_side(*x.shape[-2:], size)
    return _crop(F.resize(x, list(hw), interpolation=_mode(interpolation), antialias=True), size)


def _resize_float(x: torch.Tensor, size: int, interpolation: str) -> torch.Tensor:
    """The same in float on any device: width, then height, rounded to 8 bits in between as
    PIL and the uint8 kernel do (one 2-D float pass overshoots theirs by up to ~20 levels
    with bicubic)."""
    from torchvision.transforms.v2 import functional as F

    h, w = x.shape[-2:]
    nh, nw = _shorter_side(h, w, size)
    mode = _mode(interpolation)
    y = x.float()
    for shape in ((h, nw), (nh, nw)):
        if tuple(y.shape[-2:]) != shape:
            y = F.resize(y, list(shape), interpolation=mode, antialias=True).round_().clamp_(0, 255)
    return _crop(y.to(torch.uint8), size)


@dataclass(frozen=True)
class Decoding:
    """How images become a bank's uint8 ``(S, S, 3)`` input: size, interpolation, resize
    policy (``shorter_side_center_crop`` for files, ``device`` for arrays) and decoder (one of
    :data:`DECODERS`)."""

    image_size: int
    interpolation: str
    resize: Resize = Resize.FILES
    decoder: str = "pil"

    def __post_init__(self) -> None:
        check_choice("decode", self.decoder, DECODERS)  # e.g. a bank of a later version
        object.__setattr__(self, "resize", Resize(self.resize))

    def load(self, image: Any) -> tuple[np.ndarray | None, str | None]:
        """One image (a file path, encoded bytes or an object that reads them, a PIL image or
        a uint8 array) as uint8 ``(H, W, 3)`` on the CPU: ``(S, S, 3)`` for files, the array's
        own size with ``resize="device"``.

        Returns ``(array, None)``, or ``(None, the decoder's error)`` for an unreadable file.
        """
        from PIL import Image

        try:
            if isinstance(image, (str, os.PathLike)) and self.decoder != "pil":
                with open(image, "rb") as f:
                    picture = _decode_cpu(f.read())
            elif (data := None if isinstance(image, os.PathLike) else _encoded(image)) is not None:
                picture = _decode_cpu(data) if self.decoder != "pil" else _pil_rgb(
                    io.BytesIO(data))
            elif isinstance(image, (str, os.PathLike, Image.Image)):
                picture = _pil_rgb(image)  # kept a PIL image for PIL's own resize
            else:
                picture = check_images(np.asarray(image)[None], "image")[0]
            return self.fit(picture), None
        except _unreadable() as e:
            return None, f"{type(e).__name__}: {e}"

    def fit(self, picture: Any) -> np.ndarray:
        """A decoded image (uint8 ``(H, W, 3)`` array or RGB PIL image) brought to size by
        this decoder's resize, as a uint8 array."""
        from PIL import Image

        if self.resize == Resize.DEVICE:
            return np.asarray(picture, dtype=np.uint8)
        if self.decoder == "pil":
            from torchvision.transforms import InterpolationMode
            from torchvision.transforms import functional as F

            if not isinstance(picture, Image.Image):
                picture = Image.fromarray(picture)
            im = F.resize(picture, self.image_size, antialias=True,
                          interpolation=InterpolationMode(self.interpolation))
            return np.asarray(F.center_crop(im, [self.image_size] * 2), dtype=np.uint8)
        resize = _resize_uint8 if self.decoder == "tensor" else _resize_float
        array = np.asarray(picture, dtype=np.uint8)
        return resize(_chw(array), self.image_size, self.interpolation).permute(1, 2, 0).numpy()

    def read(self, path: Any) -> tuple[Any, str | None]:
        """A DataLoader worker's part of decoding the file at ``path`` (or the encoded image
        an object reads, as :meth:`load` takes): the finished image, or for ``gpu`` the JPEG's
        bytes (1-D uint8) or another format's decoded pixels (numpy arrays: pickled to the
        main process, not one shared-memory file each). ``(None, error)`` when unreadable."""
        if self.decoder != "gpu":
            return self.load(path)
        try:
            data = _encoded(path) if not isinstance(path, (str, os.PathLike)) else None
            if data is None:
                with open(path, "rb") as f:
                    data = f.read()
            if _is_jpeg(data):
                return np.frombuffer(bytearray(data), np.uint8), None
            return _decode_cpu(data), None
        except _unreadable() as e:
            return None, f"{type(e).__name__}: {e}"

    def assemble(self, parts: list[Any], device: torch.device | None = None
                 ) -> tuple[torch.Tensor, list[str | None]]:
        """Worker parts (from :meth:`read`) as one uint8 ``(B, S, S, 3)`` batch, and per
        part ``None`` or why it is unreadable (those parts are not in the batch). With
        ``gpu``, JPEGs are decoded and every image resized on ``device``."""
        if self.decoder != "gpu":
            s = self.image_size
            stacked = np.stack(parts) if parts else np.empty((0, s, s, 3), np.uint8)
            return torch.from_numpy(stacked), [None] * len(parts)
        return _assemble_on_device(parts, device or torch.device("cpu"), self)


def _decode_jpegs(data: list[torch.Tensor], device: torch.device
                  ) -> list[torch.Tensor | str]:
    """JPEG bytes as ``(3, H, W)`` uint8 on ``device``, a batch in one call; if the batch
    fails, image by image, each falling back to the CPU (then PIL); an error string for an
    image nothing decodes."""
    if not data:
        return []
    decode = jpeg_decoder(device.type)
    try:
        return list(decode(data, device))
    except (RuntimeError, TypeError):
        pass  # one bad image fails the whole batch (a torchvision before 0.19 takes no list)
    out: list[torch.Tensor | str] = []
    for d in data:
        try:
            out.append(decode(d, device))
        except RuntimeError:
            try:
                out.append(_chw(_decode_cpu(d.numpy().tobytes())))
            except _unreadable() as e:
                out.append(f"{type(e).__name__}: {e}")
    return out


def _assemble_on_device(parts: list[Any], device: torch.device, decoding: Decoding
                        ) -> tuple[torch.Tensor, list[str | None]]:
    """The ``gpu`` decoder's batch: JPEG bytes decoded on ``device``, other formats' pixels
    moved there, then every image resized there (images of one size together)."""
    jpeg = [i for i, p in enumerate(parts) if p.ndim == 1]
    images: list[Any] = [_chw(p) if p.ndim == 3 else None for p in parts]
    data = [torch.from_numpy(parts[i]) for i in jpeg]
    for i, x in zip(jpeg, _decode_jpegs(data, device)):
        images[i] = x
    errors = [x if isinstance(x, str) else None for x in images]
    good = [i for i, e in enumerate(errors) if e is None]
    s = decoding.image_size
    out = torch.empty((len(good), 3, s, s), dtype=torch.uint8, device=device)
    by_shape: dict[tuple, list[int]] = {}
    for j, i in enumerate(good):
        by_shape.setdefault(tuple(images[i].shape), []).append(j)
    for rows in by_shape.values():
        batch = torch.stack([images[good[j]].to(device) for j in rows])  # CPU fallbacks too
        out[rows] = _resize_float(batch, s, decoding.interpolation)
    return out.permute(0, 2, 3, 1), errors
