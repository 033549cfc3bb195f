"""Taps and the hook backbone: named taps, activation shapes, pooling, :class:`Backbone`.

A tap is a named point in the network whose activation becomes a feature vector: ``fc6``,
``fc7`` and ``pool5`` for VGG, ``penultimate`` (the input of the last linear layer) for every
classifier, or the dotted name of any module. The extraction captures taps with forward hooks,
and the forward pass stops as soon as the last tap has fired, so the layers after it never
run: this works for any model, with no tracing.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from .._io import check_choice
from ..exceptions import BackboneError
from ..records import TapLayer, WeightsId

if TYPE_CHECKING:
    from ._builder import Preprocessing
    from ._features_fx import TapNetwork

__all__ = ["Backbone", "TOKEN_POOLS", "Tap", "TapInfo", "get_backbone", "list_taps",
           "named_taps", "pool"]

TOKEN_POOLS = ("cls", "mean")


class _StopForward(Exception):
    """Raised by the last tap's hook: the layers after it are not needed."""


@dataclass(frozen=True)
class Tap:
    """Where a tap reads: a module's ``output``, or its ``input`` (first positional
    argument)."""

    module: str  # dotted module name
    where: str


def _penultimate(model: nn.Module) -> dict[str, Tap]:
    get_classifier = getattr(model, "get_classifier", None)  # timm
    target = get_classifier() if callable(get_classifier) else None
    last = None
    for name, module in model.named_modules():
        if module is target or (target is None and isinstance(module, nn.Linear)):
            last = name
    return {"penultimate": Tap(last, "input")} if last else {}


def named_taps(name: str, model: nn.Module) -> dict[str, Tap]:
    """The named taps of ``model`` (``name`` in the registry): ``penultimate``, and its
    family's own (VGG's ``fc6``, ``fc7``, ``pool5``)."""
    from ._registry import family_of

    family = family_of(name)
    return {**_penultimate(model), **family.named_taps(family.bare(name), model)}


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
    from ._builder import skeleton

    model = skeleton(name)
    named = named_taps(name, model)
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


def _activation_shapes(model: nn.Module, named: dict[str, Tap], image_size: int):
    """``{"output": {module: (shape, calls)}, "input": {...}}`` of one forward pass of a meta
    image, every module's output in the order the modules started (a block before the layers
    inside it; their outputs come back in the opposite order), and the inputs of ``input``
    taps."""
    seen: dict[str, dict[str, tuple]] = {"output": {}, "input": {}}
    started: dict[str, int] = {}

    def record(where, module_name, value):
        if isinstance(value, torch.Tensor):
            shape, calls = seen[where].get(module_name, ((), 0))
            seen[where][module_name] = (tuple(value.shape[1:]), calls + 1)

    modules = dict(model.named_modules())
    def start(module_name):  # returns None: a pre-hook's value would replace the input
        started.setdefault(module_name, len(started))

    handles = [m.register_forward_pre_hook(lambda mod, a, n=n: start(n))
               for n, m in modules.items() if n]
    handles += [m.register_forward_hook(lambda mod, a, o, n=n: record("output", n, o))
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
    seen["output"] = dict(sorted(seen["output"].items(), key=lambda kv: started[kv[0]]))
    return seen


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
    tap_layers : dict of str to Tap
        Where each tap reads (module and ``"output"`` / ``"input"``).
    preprocessing : Preprocessing
        Mean, std and interpolation of the weights.
    token_pool : {"cls", "mean"}
        How a transformer's (N, T, D) token outputs are pooled.
    model : torch.nn.Module
        The wrapped network.
    """

    def __init__(self, model: nn.Module, *, name: str, weights: WeightsId,
                 weights_path: str | None, taps: dict[str, Tap],
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
        self.tap_layers = dict(taps)

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
    def probe(self, image_size: int,
              device: torch.device | str = "cpu") -> dict[str, TapLayer]:
        """Run one blank image through the whole network; describe each tap.

        Returns ``{tap: TapLayer}`` (module, where, activation shape, pool, dim), where
        ``pool`` is ``"avg"`` (global average over H, W), ``"cls"`` / ``"mean"`` (tokens) or
        ``"none"``.

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
            return {t: TapLayer(self.tap_layers[t].module, self.tap_layers[t].where,
                                tuple(self._shapes[t]),
                                _pool_kind(len(self._shapes[t]) + 1, self.token_pool),
                                int(v.shape[1])) for t, v in out.items()}
        finally:
            self._early_exit = True

    def preprocess(self, images: torch.Tensor, image_size: int) -> torch.Tensor:
        """uint8 ``(N, H, W, 3)`` images to normalised float ``(N, 3, S, S)`` (see
        :meth:`Preprocessing.apply`)."""
        return self.preprocessing.apply(images, image_size)

    def tap_network(self, tap_layers: Mapping[str, TapLayer] | None = None) -> TapNetwork:
        """This backbone as a plain module truncated after its taps (see :class:`TapNetwork`);
        ``tap_layers`` (a bank's ``spec.tap_layers``) gives their pooling, else a probe at
        224 px does."""
        from ._features_fx import TapNetwork

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
    from ._builder import resolve
    from ._registry import family_of

    family = family_of(name)
    check_choice("token_pool", token_pool, TOKEN_POOLS)
    if isinstance(taps, str):
        taps = [t.strip() for t in taps.split(",") if t.strip()]
    taps = list(taps) if taps else [family.default_tap(family.bare(name))]
    if len(set(taps)) != len(taps):
        raise BackboneError(f"taps {taps} name a tap twice.")
    if isinstance(weights, os.PathLike):
        weights = os.fspath(weights)
    model, wid, path, prep = resolve(name, weights)
    model.eval()
    named = named_taps(name, model)
    modules = dict(model.named_modules())
    resolved = {}
    for t in taps:
        if t in named:
            resolved[t] = named[t]
        elif t in modules and t != "":
            resolved[t] = Tap(t, "output")
        else:
            close = difflib.get_close_matches(t, [*named, *(m for m in modules if m)], n=3)
            raise BackboneError(
                f"unknown tap {t!r} for model {name!r}"
                + (f" (did you mean {' or '.join(map(repr, close))}?)" if close else "")
                + f"; expected one of {sorted(named)} or the dotted name of one of its modules "
                f"(e.g. {list(modules)[1:4]}); `featurebank taps {name}` lists every tap with "
                f"its shape.")
    return Backbone(model, name=name, weights=wid, weights_path=str(path) if path else None,
                    taps=resolved, preprocessing=prep, token_pool=token_pool)

