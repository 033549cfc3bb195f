"""Typed records of a bank's provenance: what its rows depend on, and where they came from.

A bank stores two JSON attributes, ``spec`` and ``dataset`` (format version 1). They become
:class:`BankSpec` and :class:`DatasetInfo` once, when a bank is made or opened, and go back to
the same JSON (:meth:`BankSpec.to_json`): the fingerprint is the SHA-256 of that JSON less
its location keys, so every bank, head and fine-tune folder written before these records
existed keeps its fingerprint. Keys this version does not know are carried through unchanged.

Nothing here imports torch: the methods that build networks or decoders import them on use.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .exceptions import BackboneError, BankError

if TYPE_CHECKING:
    from ._decode import Decoding
    from .backbones import Preprocessing, TapNetwork

__all__ = ["BankSpec", "DatasetInfo", "Resize", "ShardInfo", "SourceOptions", "TapLayer", "ViewRecipe",
           "TapSelection", "WeightsId", "fingerprint", "tap_selections"]


class Resize(str, enum.Enum):
    """How a bank's images reached ``image_size`` (``spec.resize``)."""

    DEVICE = "device"  # fixed-size arrays (CIFAR, npz): the whole image, resized on the device
    FILES = "shorter_side_center_crop"  # files: shorter side resized, centre crop, when decoded

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class WeightsId:
    """Which weights a backbone carries, as the bank's ``spec.weights`` records them.

    Written (``str``) and read back (:meth:`parse`) here only; :meth:`rebuild_argument` turns
    it into the ``weights=`` argument that builds the same network again.

    Attributes
    ----------
    kind : {"torchvision", "timm", "file", "none"}
    value : str
        The weights enum member (``"VGG19_Weights.IMAGENET1K_V1"``), timm's pretrained tag, the
        file's SHA-256, or ``""`` for a random init.
    """

    kind: str
    value: str = ""

    _PREFIX = {"torchvision": "torchvision:", "timm": "timm:", "file": "file:sha256:"}

    def __str__(self) -> str:
        return "none" if self.kind == "none" else f"{self._PREFIX[self.kind]}{self.value}"

    @classmethod
    def parse(cls, text: str) -> WeightsId:
        """The inverse of ``str``: ``"torchvision:<Enum>.<NAME>"``, ``"timm:<tag>"``,
        ``"file:sha256:<hex>"`` or ``"none"``."""
        if text == "none":
            return cls("none")
        for kind in ("file", "torchvision", "timm"):  # "file:sha256:" before shorter prefixes
            if text.startswith(cls._PREFIX[kind]):
                return cls(kind, text[len(cls._PREFIX[kind]):])
        raise BackboneError(f"unknown weights id {text!r}; expected 'torchvision:<Enum>.<NAME>',"
                            f" 'timm:<tag>', 'file:sha256:<hex>' or 'none'.")

    def rebuild_argument(self, weights_path: str | None = None) -> str:
        """The ``weights=`` argument of :func:`get_backbone` that builds these weights again.

        A weights file must still be at ``weights_path`` with the same content (SHA-256).
        """
        from ._io import sha256_file

        if self.kind == "file":
            if not weights_path or not Path(weights_path).is_file():
                raise BackboneError(
                    f"the bank was extracted with the weights file {weights_path!r}, which is "
                    f"not there any more; put it back (same content, SHA-256 {self.value[:12]}"
                    f"...).")
            if sha256_file(weights_path) != self.value:
                raise BackboneError(
                    f"the weights file {weights_path!r} changed since the bank was extracted "
                    f"(its SHA-256 differs); restore the original file.")
            return weights_path
        if self.kind == "torchvision":
            return self.value.split(".")[-1]
        return "DEFAULT" if self.kind == "timm" else "none"


@dataclass(frozen=True)
class TapSelection:
    """The features a head reads: one tap (``"fc7"``) or taps side by side (``"fc6+fc7"``).

    ``str()`` gives the text back; :attr:`taps` the parts, in order.
    """

    taps: tuple[str, ...]

    @classmethod
    def parse(cls, text: str | TapSelection) -> TapSelection:
        """``"fc7"`` or ``"fc6+fc7"`` (a selection is returned as it is)."""
        if isinstance(text, TapSelection):
            return text
        parts = tuple(p.strip() for p in str(text).split("+"))
        if not all(parts):
            raise BankError(f"tap {text!r} has an empty part; expected a tap name, or tap "
                            f"names joined by '+' (e.g. 'fc6+fc7').")
        return cls(parts)

    @property
    def concatenated(self) -> bool:
        """Whether several taps are read side by side."""
        return len(self.taps) > 1

    def __str__(self) -> str:
        return "+".join(self.taps)

    def __iter__(self):
        return iter(self.taps)


def _record(cls, data: Any, what: str, convert: Callable[[dict[str, Any]], dict[str, Any]]):
    """The record ``cls`` of JSON ``data`` (a record is returned as it is): its fields, with
    ``convert(fields)`` replacing those that need a type, and the keys it does not know kept
    in ``extra``; missing or malformed entries are a BankError naming ``what``."""
    if isinstance(data, cls):
        return data
    names = {f.name for f in fields(cls)} - {"extra"}
    try:
        known = {k: v for k, v in data.items() if k in names}
        extra = {k: v for k, v in data.items() if k not in names}
        return cls(**{**known, **convert(known)}, extra=extra)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise BankError(f"{what} is missing or has a malformed entry ({type(e).__name__}: {e}); "
                        f"it was not written by featurebank, or is damaged.") from None


@dataclass(frozen=True)
class TapLayer:
    """One stored tap: the module it reads, how its activation became a row, and the size.

    Attributes
    ----------
    module : str
        The module's dotted name.
    where : {"output", "input"}
        The module's output, or the value flowing into it (``penultimate``).
    activation_shape : tuple of int
        The activation of one image before pooling.
    pool : {"avg", "cls", "mean", "none"}
    dim : int
        The row's length.
    """

    module: str
    where: str
    activation_shape: tuple[int, ...]
    pool: str
    dim: int
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | TapLayer) -> TapLayer:
        return _record(cls, data, "a bank's tap record", lambda k: {
            "activation_shape": tuple(k["activation_shape"]), "dim": int(k["dim"])})

    def to_json(self) -> dict[str, Any]:
        return {"module": self.module, "where": self.where,
                "activation_shape": list(self.activation_shape), "pool": self.pool,
                "dim": self.dim, **self.extra}


@dataclass(frozen=True)
class ViewRecipe:
    """The augmented views a bank holds beside each image's centre row (``spec["views"]``):
    view 0 of every split is the mirror (the centre input flipped left to right); the splits
    in ``splits`` also hold ``count`` random views, 1 to ``count``.

    ``kind`` is ``"pad_crop_flip"`` for sources of 64 px or less (their images' shorter side,
    before any resize: zero padding of 1/8 of the side, a random crop back to the side, a
    random flip: the fine-tune's augmentation) and ``"resized_crop_flip"`` for larger ones (a random crop of ``scale`` of the area and
    ``ratio`` aspect, resized back, a random flip: RandomResizedCrop's rule). View ``v`` of
    the image at source position ``p`` draws from ``numpy.random.default_rng([seed, p, v])``,
    so a rerun, a resumed extraction and any number of ranks make the same views.
    """

    count: int
    splits: tuple[str, ...]
    seed: int
    kind: str
    scale: tuple[float, float] = (0.35, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)

    def per_split(self, split: str) -> int:
        """How many views each row of ``split`` has: the mirror, and the random ones."""
        return 1 + (self.count if split in self.splits else 0)

    def names(self, split: str) -> list[str]:
        return ["mirror", *(f"random{v}" for v in range(1, self.per_split(split)))]

    def to_json(self) -> dict[str, Any]:
        return {"count": self.count, "splits": list(self.splits), "seed": self.seed,
                "kind": self.kind, "scale": list(self.scale), "ratio": list(self.ratio)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ViewRecipe:
        return cls(int(data["count"]), tuple(data["splits"]), int(data["seed"]),
                   str(data["kind"]), tuple(data["scale"]), tuple(data["ratio"]))


@dataclass(frozen=True)
class BankSpec:
    """Everything about the network and preprocessing a bank's rows depend on (``spec``).

    Attributes
    ----------
    model : str
        Backbone name (``"vgg19"``, ``"timm:convnext_tiny"``).
    weights : WeightsId
    weights_path : str or None
        The local weights file, when one was used (a location: not in the fingerprint).
    taps : tuple of str
    tap_layers : dict of str to TapLayer
    image_size : int
    resize : Resize
    interpolation : str
    antialias : bool
    mean, std : tuple of float
    preprocessing_source : str
        Where mean, std and interpolation came from (the weights' own metadata).
    dtype : {"float16", "float32"}
        Storage dtype of the rows.
    decode : {"pil", "tensor", "gpu"}
        How image files were decoded; ``pil`` is recorded by the key's absence, as in every
        bank made before it existed.
    views : ViewRecipe or None
        The augmented views stored beside the rows (``extract --views``/``--mirror``); None,
        recorded by the key's absence, for a bank of centre rows alone.
    autocast : {"bfloat16", "float16"} or None
        The dtype the forward passes ran in (autocast: a GPU's, or a CPU's with native
        bfloat16); None, by the key's absence, for float32. Where it ran, not what was asked:
        not in the fingerprint.
    """

    model: str
    weights: WeightsId
    weights_path: str | None
    taps: tuple[str, ...]
    tap_layers: Mapping[str, TapLayer]
    image_size: int
    resize: Resize
    interpolation: str
    antialias: bool
    mean: tuple[float, ...]
    std: tuple[float, ...]
    preprocessing_source: str
    dtype: str
    decode: str = "pil"
    views: ViewRecipe | None = None
    autocast: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | BankSpec) -> BankSpec:
        """The record of a bank's ``spec`` JSON (as stored, or as a head recorded it)."""
        return _record(cls, data, "a bank spec", lambda k: {
            "weights": WeightsId.parse(k["weights"]), "taps": tuple(k["taps"]),
            "tap_layers": {t: TapLayer.from_json(v) for t, v in k["tap_layers"].items()},
            "image_size": int(k["image_size"]), "resize": Resize(k["resize"]),
            "mean": tuple(k["mean"]), "std": tuple(k["std"]),
            "decode": k.get("decode") or "pil",
            "views": ViewRecipe.from_json(k["views"]) if k.get("views") else None})

    def to_json(self) -> dict[str, Any]:
        """The ``spec`` JSON, key for key as extraction has always written it."""
        out = {"model": self.model, "weights": str(self.weights),
               "weights_path": self.weights_path, "taps": list(self.taps),
               "tap_layers": {t: v.to_json() for t, v in self.tap_layers.items()},
               "image_size": self.image_size, "resize": self.resize.value,
               "interpolation": self.interpolation, "antialias": self.antialias,
               "mean": list(self.mean), "std": list(self.std),
               "preprocessing_source": self.preprocessing_source, "dtype": self.dtype}
        if self.decode != "pil":  # absent means PIL: older fingerprints stay valid
            out["decode"] = self.decode
        if self.views is not None:  # absent means none: a bank without views is unchanged
            out["views"] = self.views.to_json()
        if self.autocast is not None:
            out["autocast"] = self.autocast
        return {**out, **self.extra}

    def replace(self, **changes: Any) -> BankSpec:
        return replace(self, **changes)

    # -- what the spec rebuilds ------------------------------------------------------------
    def amp(self, device) -> Any:
        """The autocast dtype that computes features as this bank's were, on ``device``:
        CUDA's own; on the CPU bfloat16 for a bank computed in bfloat16, where the CPU has it
        natively; else None (float32)."""
        from ._io import amp_dtype

        return amp_dtype(device, cpu_bf16=self.autocast == "bfloat16")

    @property
    def preprocessing(self) -> Preprocessing:
        """Mean, std and interpolation as the backbone applies them."""
        from .backbones import Preprocessing

        return Preprocessing(self.mean, self.std, self.interpolation, self.preprocessing_source)

    @property
    def decoding(self) -> Decoding:
        """How an image becomes the uint8 picture a row saw (decoder, size, resize)."""
        from ._decode import Decoding

        return Decoding(self.image_size, self.interpolation, self.resize, self.decode)

    def rebuild_backbone(self, tap: str | TapSelection, *,
                         state_dict: Mapping[str, Any] | None = None) -> TapNetwork:
        """The backbone as a plain module up to ``tap`` (:class:`~featurebank.TapNetwork`):
        the bank's own weights (a weights file must still hash to the recorded value), or
        those of ``state_dict`` (a fine-tuned network's), adopted without an init."""
        from .backbones import rebuild_tap_network

        return rebuild_tap_network(self, TapSelection.parse(tap), state_dict)


@dataclass(frozen=True)
class ShardInfo:
    """The share of a distributed extraction one rank's shard bank holds."""

    rank: int
    world: int
    rows: Mapping[str, tuple[int, int]]  # split -> [start, stop) of the whole split

    def to_json(self) -> dict[str, Any]:
        return {"rank": self.rank, "world": self.world,
                "rows": {k: list(v) for k, v in self.rows.items()}}


@dataclass(frozen=True)
class SourceOptions:
    """How a source's samples become images and labels, where the format leaves it open.

    Attributes
    ----------
    label_key : str, optional
        ``wds``: the key of a sample's ``json`` member that holds its label (default: the
        ``cls`` member).
    classes : str, optional
        ``wds``, ``csv``: a text file of class names, one per line, in label order (default: a
        ``classes.txt`` beside the shards, else the labels themselves).
    image_column, label_column : str, optional
        ``hf``: the columns (default: the dataset's ``Image`` and ``ClassLabel`` features).
    limit : int, optional
        At most this many images of each split, stratified by class (any source): a first
        run sized for a laptop.
    """

    label_key: str | None = None
    classes: str | None = None
    image_column: str | None = None
    label_column: str | None = None
    limit: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)
                if getattr(self, f.name) is not None}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | SourceOptions | None) -> SourceOptions:
        if isinstance(data, SourceOptions):
            return data
        return cls(**(data or {}))


@dataclass(frozen=True)
class DatasetInfo:
    """Where a bank's images came from (``dataset``).

    Attributes
    ----------
    name : str
        The source kind (``cifar10``, ``folder``, ``npz``, ``arrays``...).
    source : str
        Its location (a location: not in the fingerprint).
    classes : tuple of str
    splits : dict of str to int
        Source images per split.
    resize : Resize
    fingerprint : str
        SHA-256 of the source's images (or file list) and labels.
    shard : ShardInfo or None
        A rank's share, in a shard bank of a distributed extraction.
    options : SourceOptions
        How the source's samples became images and labels (recorded only when set).
    """

    name: str
    source: str
    classes: tuple[str, ...]
    splits: Mapping[str, int]
    resize: Resize
    fingerprint: str
    shard: ShardInfo | None = None
    options: SourceOptions = field(default_factory=SourceOptions)
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | DatasetInfo) -> DatasetInfo:
        def shard(s: Mapping[str, Any] | None) -> ShardInfo | None:
            return None if s is None else ShardInfo(
                int(s["rank"]), int(s["world"]), {k: tuple(v) for k, v in s["rows"].items()})

        return _record(cls, data, "a bank's dataset record", lambda k: {
            "classes": tuple(k["classes"]), "resize": Resize(k["resize"]),
            "splits": {name: int(n) for name, n in k["splits"].items()},
            "shard": shard(k.get("shard")), "options": SourceOptions.from_json(k.get("options"))})

    def to_json(self) -> dict[str, Any]:
        out = {"name": self.name, "source": self.source, "classes": list(self.classes),
               "splits": dict(self.splits), "resize": self.resize.value,
               "fingerprint": self.fingerprint}
        if self.shard is not None:
            out["shard"] = self.shard.to_json()
        if self.options.to_json():  # absent when unset: older fingerprints stay valid
            out["options"] = self.options.to_json()
        return {**out, **self.extra}

    def replace(self, **changes: Any) -> DatasetInfo:
        return replace(self, **changes)


# Keys that say where things are or ran, not what they are: moving data or weights, or
# extracting on another device, keeps the fingerprint.
_LOCATION_KEYS = {"spec": ("weights_path", "autocast"), "dataset": ("source",)}


def fingerprint(spec: BankSpec, dataset: DatasetInfo) -> str:
    """SHA-256 of the spec and dataset JSON, less their location keys (sorted keys)."""
    content = {part: {k: v for k, v in d.to_json().items() if k not in _LOCATION_KEYS[part]}
               for part, d in (("spec", spec), ("dataset", dataset))}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def tap_selections(text: str | Iterable[str] | None, available: Iterable[str]
                   ) -> list[TapSelection]:
    """``None``: the first available tap; ``"all"``: each; ``"fc6,fc7"`` (or a list): each
    one named; ``"fc6+fc7"``: those side by side as one selection."""
    available = list(available)
    if text is None:
        return [TapSelection((available[0],))]
    names = [t.strip() for t in text.split(",")] if isinstance(text, str) else list(text)
    names = available if names == ["all"] else [t for t in names if t]
    return [TapSelection.parse(t) for t in names]
