"""Backbone registry: a model name becomes a network, its weights, its named taps and its
preprocessing.

Preprocessing is data, never constants typed in here: mean, std and interpolation come from the
torchvision weights enum (``weights.transforms()``) or from a timm model's ``pretrained_cfg``.
A tap is a named point in the network whose activation becomes a feature vector: ``fc6``,
``fc7`` and ``pool5`` for VGG, ``penultimate`` (the input of the last linear layer) for every
classifier, or the dotted name of any module. Taps are captured with forward hooks, and the
forward pass stops as soon as the last tap has fired, so the layers after it never run.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._io import check_choice, sha256_file
from .exceptions import BackboneError

__all__ = ["Backbone", "Preprocessing", "TapInfo", "TapNetwork", "WeightsId", "get_backbone",
           "list_backbones", "list_taps"]

_TIMM = "timm:"
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

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Preprocessing:
        """The preprocessing a bank (or a model made from one) recorded in its ``spec``."""
        return cls(tuple(spec["mean"]), tuple(spec["std"]), spec["interpolation"],
                   spec.get("preprocessing_source", "spec"))

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


@dataclass(frozen=True)
class WeightsId:
    """Which weights a backbone carries, as the bank's ``spec["weights"]`` records them.

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


class _StopForward(Exception):
    """Raised by the last tap's hook: the layers after it are not needed."""


@dataclass(frozen=True)
class _Tap:
    module: str  # dotted module name
    where: str  # "output" of the module, or "input" (its first positional argument)


def _vgg_taps(model: nn.Module) -> dict[str, _Tap]:
    last_pool = len(model.features) - 1
    # classifier = Linear, ReLU, Dropout, Linear, ReLU, Dropout, Linear: taps are post-ReLU.
    return {"fc6": _Tap("classifier.1", "output"), "fc7": _Tap("classifier.4", "output"),
            "pool5": _Tap(f"features.{last_pool}", "output")}


def _penultimate(model: nn.Module) -> dict[str, _Tap]:
    get_classifier = getattr(model, "get_classifier", None)  # timm
    target = get_classifier() if callable(get_classifier) else None
    last = None
    for name, module in model.named_modules():
        if module is target or (target is None and isinstance(module, nn.Linear)):
            last = name
    return {"penultimate": _Tap(last, "input")} if last else {}


def _named_taps(name: str, model: nn.Module) -> dict[str, _Tap]:
    taps = _penultimate(model)
    if name.startswith("vgg"):
        taps.update(_vgg_taps(model))
    return taps


def _default_tap(name: str) -> str:
    return "fc7" if name.startswith("vgg") else "penultimate"


def list_backbones() -> list[str]:
    """Model names accepted by :func:`get_backbone`: torchvision's classification models.

    Any timm model is accepted too as ``"timm:NAME"`` when timm is installed
    (``pip install "featurebank[timm]"``).
    """
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def _check_name(name: str) -> None:
    if name.startswith(_TIMM):
        return
    names = list_backbones()
    if name not in names:
        close = [n for n in names if n.startswith(name[:3])][:8]
        raise BackboneError(
            f"unknown model {name!r}; expected a torchvision classification model "
            f"(e.g. {close or names[:8]}; featurebank.list_backbones() lists all {len(names)}) "
            f"or 'timm:NAME' with timm installed.")


@dataclass(frozen=True)
class TapInfo:
    """One tap of a model, as :func:`list_taps` (``shapes=True``) describes it.

    Attributes
    ----------
    name : str
        What ``taps=`` / ``--taps`` takes: a named tap (``fc7``) or a module's dotted name.
    module : str
        The module it reads.
    where : {"output", "input"}
    layer : str
        The module's class.
    shape : tuple of int
        Its activation for one image: ``(C, H, W)``, ``(T, D)`` tokens or ``(D,)``.
    pool : {"avg", "cls", "mean", "none", "unsupported"}
        How the activation becomes one vector per image.
    dim : int or None
        The feature size after pooling.
    calls : int
        How often the module runs per image; a tap is ambiguous (refused) above 1.
    """

    name: str
    module: str
    where: str
    layer: str
    shape: tuple[int, ...]
    pool: str
    dim: int | None
    calls: int


def list_taps(name: str = "vgg19", *, shapes: bool = False, image_size: int = 224,
              token_pool: str = "cls") -> list[str] | list[TapInfo]:
    """The taps of a model.

    Parameters
    ----------
    name : str, default="vgg19"
    shapes : bool, default=False
        False: the names of the named taps (``fc6``, ``fc7``, ``pool5``, ``penultimate``);
        any dotted module name is a tap as well. True: every tap -- the named ones, then every
        module whose output is a tensor, in the order they run -- as :class:`TapInfo`, with its
        activation shape at ``image_size`` and its pooled dimension (what thingsvision's
        ``show-model`` prints). The network runs on the meta device: no weights, no time.
    image_size : int, default=224
    token_pool : {"cls", "mean"}, default="cls"
        How transformer token outputs ``(T, D)`` would be pooled.
    """
    _check_name(name)
    model = skeleton(name)
    named = _named_taps(name, model)
    if not shapes:
        return sorted(named)
    check_choice("token_pool", token_pool, TOKEN_POOLS)
    seen = _activation_shapes(model, named, image_size)
    infos = [(t, d.module, d.where) for t, d in named.items()]
    infos += [(m, m, "output") for m in seen["output"] if m]
    out = []
    for tap, module, where in infos:
        shape, calls = seen[where].get(module, ((), 0))
        kind = _pool_kind(len(shape) + 1, token_pool) if shape else "unsupported"
        dim = (shape[-1] if kind in ("cls", "mean", "none") else shape[0]
               if kind == "avg" else None) if shape else None
        layer = type(dict(model.named_modules())[module]).__name__
        out.append(TapInfo(tap, module, where, layer, shape, kind, dim, calls))
    return out


def _activation_shapes(model: nn.Module, named: dict[str, _Tap], image_size: int):
    """``{"output": {module: (shape, calls)}, "input": {...}}`` of one forward pass of a meta
    image, every module's output in the order they ran (and the inputs of ``input`` taps)."""
    seen: dict[str, dict[str, tuple]] = {"output": {}, "input": {}}

    def record(where, module_name, value):
        if isinstance(value, torch.Tensor):
            shape, calls = seen[where].get(module_name, ((), 0))
            seen[where][module_name] = (tuple(value.shape[1:]), calls + 1)

    modules = dict(model.named_modules())
    handles = [m.register_forward_hook(lambda mod, a, o, n=n: record("output", n, o))
               for n, m in modules.items() if n]
    handles += [modules[d.module].register_forward_pre_hook(
        lambda mod, a, n=d.module: record("input", n, a[0] if a else None))
        for d in named.values() if d.where == "input"]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, image_size, image_size, device="meta"))
    except Exception as e:
        raise BackboneError(f"cannot run the model at image_size={image_size} to read its "
                            f"shapes ({type(e).__name__}: {str(e).splitlines()[0]}).") from None
    finally:
        for h in handles:
            h.remove()
    return seen


def _build(name: str, *, pretrained: Any) -> nn.Module:
    """The bare network; ``pretrained`` is a torchvision weights enum, True (timm) or False."""
    if name.startswith(_TIMM):
        try:
            import timm
        except ImportError:
            raise BackboneError(
                f"model {name!r} needs timm: pip install \"featurebank[timm]\"") from None
        try:
            return timm.create_model(name[len(_TIMM):], pretrained=bool(pretrained))
        except RuntimeError as e:
            if "Unknown model" in str(e):
                raise BackboneError(f"unknown model {name!r}: {e} (timm.list_models() lists "
                                    f"them).") from None
            raise
        except OSError as e:  # the hub could not be reached
            raise _offline_error(name, e) from None
    import torchvision

    try:
        return torchvision.models.get_model(name, weights=pretrained or None)
    except OSError as e:  # URLError: the download server could not be reached
        raise _offline_error(name, e) from None


def _offline_error(name: str, e: OSError) -> BackboneError:
    reason = getattr(e, "reason", None) or str(e).splitlines()[0]
    return BackboneError(
        f"could not download the pretrained weights of {name!r} ({reason}): this machine has "
        f"no network, or cannot reach the download server. Copy a state_dict file in and pass "
        f"--weights PATH (weights=PATH), or copy the weights cache ($TORCH_HOME/hub/checkpoints "
        f"for torchvision, the Hugging Face cache for timm) from a machine that has them; "
        f"README's 'Offline use' shows both.")


def skeleton(name: str) -> nn.Module:
    """The bare network with parameters on the meta device (no memory, no init): the shape
    to load a ``state_dict`` into with ``load_state_dict(..., assign=True)``."""
    _check_name(name)
    with torch.device("meta"):
        return _build(name, pretrained=False).eval()


def _random_init(name: str) -> nn.Module:
    """A randomly initialised network, the same on every call: ``weights="none"`` banks are
    reproducible and resumable, and the global RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return _build(name, pretrained=False)


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


def _load_weights_file(name: str, path: Path) -> nn.Module:
    state = _read_state_dict(path, name)
    # Build on the meta device and adopt the file's tensors: no time spent on a random init
    # that would be overwritten, and no second copy of the weights in memory.
    with torch.device("meta"):
        model = _build(name, pretrained=False)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
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
        raise BackboneError(
            f"weights file {str(path)!r} does not fit model {name!r} ({detail}). Pass the "
            f"state_dict of a {name!r} model, or the --model it was saved from.") from None
    if any(t.is_meta for t in [*model.parameters(), *model.buffers()]):
        # A buffer that is not in the state_dict (non-persistent) stayed on meta: build for real.
        real = _build(name, pretrained=False)
        real.load_state_dict(state, strict=True)
        model = real
    return model


def _resolve(name: str, weights: str | None
             ) -> tuple[nn.Module, WeightsId, Path | None, Preprocessing]:
    """Build the network and read its preprocessing; returns (model, weights id, path, prep)."""
    w = "none" if weights is None else str(weights)
    path = Path(w).expanduser() if w.lower() not in ("none", "default") and _is_path(w) else None
    if name.startswith(_TIMM):
        if path is None and w.lower() not in ("none", "default"):
            raise BackboneError(
                f"weights={w!r} for {name!r}: expected 'DEFAULT' (timm's pretrained weights), "
                f"'none' (random init) or the path of a state_dict file.")
        if path is not None:
            model, wid = _load_weights_file(name, path), WeightsId("file", sha256_file(path))
        else:
            pretrained = w.lower() == "default"
            model = _build(name, pretrained=True) if pretrained else _random_init(name)
            wid = (WeightsId("timm", model.pretrained_cfg.get("tag") or "default") if pretrained
                   else WeightsId("none"))
        from timm.data import resolve_model_data_config

        cfg = resolve_model_data_config(model)
        prep = Preprocessing(tuple(map(float, cfg["mean"])), tuple(map(float, cfg["std"])),
                             str(cfg["interpolation"]), f"timm:{name[len(_TIMM):]}.pretrained_cfg")
        return model, wid, path, prep

    from torchvision.models import get_model_weights

    enum = get_model_weights(name)
    if path is None and w.lower() not in ("none",):
        try:
            chosen = enum.DEFAULT if w.lower() == "default" else enum[w.split(".")[-1]]
        except KeyError:
            raise BackboneError(
                f"unknown weights {w!r} for {name!r}; expected 'DEFAULT', 'none', one of "
                f"{[m.name for m in enum]} or the path of a state_dict file (no file "
                f"{w!r} exists).") from None
        model = _build(name, pretrained=chosen)
        wid = WeightsId("torchvision", str(chosen))
    else:
        # Random init or a local file: the preprocessing is that of the model's default
        # weights, which is what such files are trained with.
        chosen = enum.DEFAULT
        if path is not None:
            model, wid = _load_weights_file(name, path), WeightsId("file", sha256_file(path))
        else:
            model, wid = _random_init(name), WeightsId("none")
    t = chosen.transforms()
    prep = Preprocessing(tuple(map(float, t.mean)), tuple(map(float, t.std)),
                         t.interpolation.value, f"torchvision:{chosen}")
    return model, wid, path, prep


TOKEN_POOLS = ("cls", "mean")


def _pool_kind(ndim: int, token_pool: str) -> str:
    """How an activation of ``ndim`` dimensions becomes (N, D): ``avg`` (global average over
    H, W), ``cls`` / ``mean`` (the class token or the mean of a transformer's (N, T, D)
    tokens) or ``none``."""
    return {4: "avg", 3: token_pool, 2: "none"}.get(ndim, "unsupported")


def pool(t: torch.Tensor, kind: str) -> torch.Tensor:
    """An activation pooled to (N, D) as :func:`_pool_kind` named it."""
    if kind == "avg":
        return t.mean(dim=(2, 3))
    if kind == "cls":
        return t[:, 0]
    if kind == "mean":
        return t.mean(dim=1)
    return t


def _pool(t: torch.Tensor, tap: str, token_pool: str = "cls") -> torch.Tensor:
    kind = _pool_kind(t.ndim, token_pool)
    if kind == "unsupported":
        raise BackboneError(
            f"tap {tap!r} gives activations of shape {tuple(t.shape)}; only (N, C, H, W) "
            f"(average-pooled), (N, T, D) tokens (class token or mean) and (N, D) activations "
            f"can be taps.")
    return pool(t, kind)


class Backbone(nn.Module):
    """A network whose forward returns the activations of its taps as ``(N, D)`` tensors.

    Build one with :func:`get_backbone`. The forward pass stops once the last tap has fired.

    Attributes
    ----------
    name : str
        Model name (``"vgg19"``, ``"resnet50"``, ``"timm:convnext_tiny"``).
    weights : WeightsId
        Which weights it carries; ``str(weights)`` is ``"torchvision:VGG19_Weights.IMAGENET1K_V1"``,
        ``"none"``, ``"file:sha256:<hex>"`` or ``"timm:<tag>"``.
    weights_path : str or None
        The local weights file, when one was given.
    taps : list of str
        Tap names, in the order given.
    tap_layers : dict
        Tap name to ``{"module": dotted name, "where": "output" | "input", "pool": ...}``.
    preprocessing : Preprocessing
        Mean, std and interpolation of the weights.
    token_pool : {"cls", "mean"}
        How a transformer's (N, T, D) token outputs are pooled.
    model : torch.nn.Module
        The wrapped network.
    """

    def __init__(self, model: nn.Module, *, name: str, weights: WeightsId,
                 weights_path: str | None, taps: dict[str, _Tap],
                 preprocessing: Preprocessing, token_pool: str = "cls"):
        super().__init__()
        self.model = model
        self.name, self.weights, self.weights_path = name, weights, weights_path
        self.token_pool = token_pool
        self.taps = list(taps)
        self.preprocessing = preprocessing
        self._captured: dict[str, torch.Tensor] | None = None
        self._early_exit = True
        modules = dict(model.named_modules())
        for tap, d in taps.items():
            m = modules[d.module]
            if d.where == "input":
                m.register_forward_pre_hook(self._make_hook(tap, lambda args: args[0]))
            else:
                m.register_forward_hook(self._make_hook(tap, lambda args, out: out))
        self.tap_layers = {t: {"module": d.module, "where": d.where} for t, d in taps.items()}

    def _make_hook(self, tap: str, pick):
        def hook(module, *args):
            if self._captured is None:
                return None
            if tap in self._captured:
                self._calls[tap] += 1
                return None
            self._calls[tap] = 1
            raw = pick(*args)
            self._shapes[tap] = tuple(raw.shape[1:])
            self._captured[tap] = _pool(raw, tap, self.token_pool)
            if self._early_exit and len(self._captured) == len(self.taps):
                raise _StopForward
            return None

        return hook

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run the network on normalised ``(N, 3, H, W)`` input; return ``{tap: (N, D)}``."""
        self._captured, self._calls, self._shapes = {}, {}, {}
        try:
            self.model(x)
        except _StopForward:
            pass
        finally:
            captured, self._captured = self._captured, None
        missing = [t for t in self.taps if t not in captured]
        if missing:
            raise BackboneError(f"taps {missing} of {self.name!r} did not run in the forward "
                                f"pass; choose modules the forward pass uses.")
        return {t: captured[t] for t in self.taps}

    @torch.no_grad()
    def probe(self, image_size: int, device: torch.device | str = "cpu") -> dict[str, dict]:
        """Run one blank image through the whole network; describe each tap.

        Returns ``{tap: {"module", "where", "activation_shape", "pool", "dim"}}``, where
        ``pool`` is ``"avg"`` (global average over H, W) or ``"none"``.

        Raises a clear error for taps that do not run, run more than once per forward pass (an
        ambiguous tap, e.g. a ReLU module that ResNet reuses) or give unsupported shapes.
        """
        self._early_exit = False
        try:
            x = torch.zeros(1, 3, image_size, image_size, device=device)
            try:
                out = self(x)
            except BackboneError:
                raise
            except RuntimeError as e:
                raise BackboneError(f"model {self.name!r} cannot run at image_size="
                                    f"{image_size}: {str(e).splitlines()[0]}") from None
            reused = {t: n for t, n in self._calls.items() if n > 1}
            if reused:
                raise BackboneError(
                    f"tap modules run more than once per forward pass {reused}, so their "
                    f"activation is ambiguous; tap a module that runs once.")
            return {t: {**self.tap_layers[t], "activation_shape": list(self._shapes[t]),
                        "pool": _pool_kind(len(self._shapes[t]) + 1, self.token_pool),
                        "dim": int(v.shape[1])} for t, v in out.items()}
        finally:
            self._early_exit = True

    def preprocess(self, images: torch.Tensor, image_size: int) -> torch.Tensor:
        """uint8 ``(N, H, W, 3)`` images to normalised float ``(N, 3, S, S)`` (see
        :meth:`Preprocessing.apply`)."""
        return self.preprocessing.apply(images, image_size)

    def tap_network(self, tap_layers: dict[str, dict[str, Any]] | None = None) -> TapNetwork:
        """This backbone as a plain module truncated after its taps (see :class:`TapNetwork`);
        ``tap_layers`` (a bank's ``spec["tap_layers"]``) gives their pooling, else a probe at
        224 px does."""
        return TapNetwork(self.model, name=self.name, taps=self.taps,
                          tap_layers=tap_layers or self.probe(224),
                          preprocessing=self.preprocessing)


def get_backbone(name: str = "vgg19", *, weights: str | os.PathLike | None = "DEFAULT",
                 taps: str | list[str] | tuple[str, ...] | None = None,
                 token_pool: str = "cls") -> Backbone:
    """Build a backbone with named taps.

    Parameters
    ----------
    name : str, default="vgg19"
        A torchvision classification model (see :func:`list_backbones`) or ``"timm:NAME"``.
    weights : str, path-like or None, default="DEFAULT"
        ``"DEFAULT"`` (the model's best pretrained weights; downloaded once by torchvision or
        timm), a torchvision weights name such as ``"IMAGENET1K_V1"``, ``"none"``/``None``
        (random init, seeded: the same network every time) or the path of a local state_dict
        file (loaded with ``weights_only=True``).
    taps : str or sequence of str, optional
        Tap names (comma-separated string or list): named taps (:func:`list_taps`) or dotted
        module names. Default: ``fc7`` for VGG, ``penultimate`` otherwise.
    token_pool : {"cls", "mean"}, default="cls"
        How a tap that gives transformer tokens (N, T, D) becomes (N, D): the class token (the
        first), or the mean over tokens.

    Returns
    -------
    Backbone
        In eval mode, on the CPU.
    """
    _check_name(name)
    check_choice("token_pool", token_pool, TOKEN_POOLS)
    if isinstance(taps, str):
        taps = [t.strip() for t in taps.split(",") if t.strip()]
    taps = list(taps) if taps else [_default_tap(name)]
    if len(set(taps)) != len(taps):
        raise BackboneError(f"taps {taps} name a tap twice.")
    if isinstance(weights, os.PathLike):
        weights = os.fspath(weights)
    model, wid, path, prep = _resolve(name, weights)
    model.eval()
    named = _named_taps(name, model)
    modules = dict(model.named_modules())
    resolved = {}
    for t in taps:
        if t in named:
            resolved[t] = named[t]
        elif t in modules and t != "":
            resolved[t] = _Tap(t, "output")
        else:
            raise BackboneError(
                f"unknown tap {t!r} for model {name!r}; expected one of {sorted(named)} or the "
                f"dotted name of one of its modules (e.g. {list(modules)[1:4]}).")
    return Backbone(model, name=name, weights=wid, weights_path=str(path) if path else None,
                    taps=resolved, preprocessing=prep, token_pool=token_pool)


def _feature_extractor(name: str):
    """torchvision's FX ``create_feature_extractor``, or timm's (its own leaf modules)."""
    if name.startswith(_TIMM):
        from timm.models import create_feature_extractor
    else:
        from torchvision.models.feature_extraction import create_feature_extractor
    return create_feature_extractor


def _truncate(model: nn.Module, name: str, layers: dict[str, dict[str, Any]]) -> nn.Module:
    """The model traced with FX and cut after the nodes that give ``layers`` (tap ->
    ``{"module", "where"}``): a GraphModule returning ``{tap: activation}``. An ``input`` tap
    (``penultimate``) is the value that flows into its module, which is then dropped."""
    import torch.fx

    create = _feature_extractor(name)
    try:
        gm = create(model, return_nodes={d["module"]: t for t, d in layers.items()})
    except Exception as e:  # FX cannot trace every model
        raise BackboneError(
            f"model {name!r} cannot be traced with torch.fx ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}), so it has no plain-module form for "
            f"fine-tuning and export.") from None
    output = next(n for n in gm.graph.nodes if n.op == "output")
    values = dict(output.args[0])
    for tap, d in layers.items():
        if d["where"] == "input":
            call = next(n for n in gm.graph.nodes
                        if n.op == "call_module" and n.target == d["module"])
            values[tap] = call.args[0]
    output.args = (values,)
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return torch.fx.GraphModule(gm, gm.graph)


class TapNetwork(nn.Module):
    """Normalised images -> the pooled features of a backbone's taps, as one plain module.

    The backbone is traced with torchvision's FX feature extraction and truncated after the
    last tap, so nothing past it runs, and, unlike :class:`Backbone` (which stops its forward
    by raising from a hook), ``torch.export``, TorchScript and ONNX work on it. Several taps
    are concatenated in the order given.

    Parameters
    ----------
    model : nn.Module
        The classification network.
    name : str
        Its registry name (``timm:`` models are traced with timm's leaf modules).
    taps : list of str
    tap_layers : dict
        Tap to ``{"module", "where", "pool"}`` (a bank's ``spec["tap_layers"]``).
    preprocessing : Preprocessing
    """

    def __init__(self, model: nn.Module, *, name: str, taps: list[str],
                 tap_layers: dict[str, dict[str, Any]], preprocessing: Preprocessing):
        super().__init__()
        self.model = _truncate(model, name, {t: tap_layers[t] for t in taps})
        self.taps = list(taps)
        self.pools = [tap_layers[t]["pool"] for t in taps]
        self.preprocessing = preprocessing

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        feats = [pool(out[t], kind) for t, kind in zip(self.taps, self.pools)]
        return feats[0] if len(feats) == 1 else torch.cat(feats, dim=1)

    def preprocess(self, images: torch.Tensor, image_size: int) -> torch.Tensor:
        """uint8 ``(N, H, W, 3)`` -> normalised input (see :meth:`Preprocessing.apply`)."""
        return self.preprocessing.apply(images, image_size)
