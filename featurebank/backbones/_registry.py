"""The backbone families: where models come from, one :class:`Family` record each.

A family says how it recognises a model name, builds the network, turns a ``weights=`` text
into pretrained weights and their :class:`WeightsId`, reads the preprocessing from the
weights' own metadata, names its taps and traces the network with FX. Every dispatch on a
model's origin (the name check, weights, preprocessing, taps, FX, the CLI's ``--model``)
goes through :func:`family_of`. Adding a family is one more record in :data:`FAMILIES`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..exceptions import BackboneError
from ..records import WeightsId
from ._builder import Preprocessing
from ._features import Tap

__all__ = ["FAMILIES", "Family", "check_name", "family_of", "list_backbones"]


@dataclass(frozen=True)
class Family:
    """One source of backbones.

    Attributes
    ----------
    name : str
        ``"torchvision"``, ``"timm"``.
    prefix : str
        What model names of the family start with (``"timm:"``); ``""`` for the family that
        takes plain names.
    names : callable or None
        The model names it lists (:func:`list_backbones`); None when they are not enumerable
        here (any timm model).
    build : callable
        ``(bare name, pretrained) -> nn.Module``; ``pretrained`` is what :attr:`pretrained`
        returned, or None for a random init.
    pretrained : callable
        ``(bare name, weights text) -> pretrained``: the weights ``"DEFAULT"`` or a weights
        name stands for (BackboneError naming the choices otherwise).
    weights_id : callable
        ``(model, pretrained) -> WeightsId`` of the built pretrained model.
    preprocessing : callable
        ``(bare name, model, pretrained or None) -> Preprocessing`` from the weights' metadata
        (a random init or a weights file: the default weights' preprocessing).
    named_taps : callable
        ``(bare name, model) -> {tap: Tap}`` of the family's own named taps (``penultimate``
        is every classifier's, added for all).
    default_tap : callable
        ``bare name -> tap`` stored when ``taps=`` is not given.
    feature_extractor : callable
        ``() -> create_feature_extractor`` (FX), with the family's own leaf modules.
    check : callable
        ``bare name -> None``, BackboneError for a name the family does not have.
    """

    name: str
    prefix: str
    names: Callable[[], list[str]] | None
    build: Callable[[str, Any], nn.Module]
    pretrained: Callable[[str, str], Any]
    weights_id: Callable[[nn.Module, Any], WeightsId]
    preprocessing: Callable[[str, nn.Module, Any], Preprocessing]
    named_taps: Callable[[str, nn.Module], dict[str, Tap]]
    default_tap: Callable[[str], str]
    feature_extractor: Callable[[], Callable]
    check: Callable[[str], None]

    def matches(self, name: str) -> bool:
        return name.startswith(self.prefix)

    def bare(self, name: str) -> str:
        """The name without the family's prefix, as the family's own library spells it."""
        return name[len(self.prefix):]


# -- torchvision -------------------------------------------------------------------------------
def _tv_names() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def _tv_check(name: str) -> None:
    names = _tv_names()
    if name not in names:
        close = [n for n in names if n.startswith(name[:3])][:8]
        raise BackboneError(
            f"unknown model {name!r}; expected a torchvision classification model "
            f"(e.g. {close or names[:8]}; featurebank.list_backbones() lists all {len(names)}) "
            f"or 'timm:NAME' with timm installed.")


def _tv_build(name: str, pretrained: Any) -> nn.Module:
    import torchvision

    return torchvision.models.get_model(name, weights=pretrained)


def _tv_pretrained(name: str, weights: str) -> Any:
    from torchvision.models import get_model_weights

    enum = get_model_weights(name)
    try:
        return enum.DEFAULT if weights.lower() == "default" else enum[weights.split(".")[-1]]
    except KeyError:
        raise BackboneError(
            f"unknown weights {weights!r} for {name!r}; expected 'DEFAULT', 'none', one of "
            f"{[m.name for m in enum]} or the path of a state_dict file (no file "
            f"{weights!r} exists).") from None


def _tv_preprocessing(name: str, model: nn.Module, pretrained: Any) -> Preprocessing:
    from torchvision.models import get_model_weights

    # a random init or a weights file: the preprocessing of the model's default weights,
    # which is what such files are trained with
    chosen = pretrained or get_model_weights(name).DEFAULT
    t = chosen.transforms()
    return Preprocessing(tuple(map(float, t.mean)), tuple(map(float, t.std)),
                         t.interpolation.value, f"torchvision:{chosen}")


def _vgg_taps(name: str, model: nn.Module) -> dict[str, Tap]:
    if not name.startswith("vgg"):
        return {}
    last_pool = len(model.features) - 1
    # classifier = Linear, ReLU, Dropout, Linear, ReLU, Dropout, Linear: taps are post-ReLU.
    return {"fc6": Tap("classifier.1", "output"), "fc7": Tap("classifier.4", "output"),
            "pool5": Tap(f"features.{last_pool}", "output")}


def _tv_feature_extractor():
    from torchvision.models.feature_extraction import create_feature_extractor

    return create_feature_extractor


TORCHVISION = Family(
    name="torchvision", prefix="", names=_tv_names, build=_tv_build,
    pretrained=_tv_pretrained, weights_id=lambda model, chosen: WeightsId("torchvision",
                                                                          str(chosen)),
    preprocessing=_tv_preprocessing, named_taps=_vgg_taps,
    default_tap=lambda name: "fc7" if name.startswith("vgg") else "penultimate",
    feature_extractor=_tv_feature_extractor, check=_tv_check)


# -- timm --------------------------------------------------------------------------------------
def _timm():
    try:
        import timm
    except ImportError:
        raise BackboneError("timm models need timm: pip install \"featurebank[timm]\"") from None
    return timm


def _hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """One short try to reach the Hugging Face hub (where timm's weights are), instead of the
    hub library's own retries, which take about a minute when there is no network."""
    import socket

    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def _hub_offline(offline: bool):
    """The hub library in offline mode for one call: cached weights load, missing ones fail
    at once (``HF_HUB_OFFLINE=1`` does the same for a whole session)."""
    if not offline:
        yield
        return
    from huggingface_hub import constants

    saved, constants.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE, True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


def _timm_build(name: str, pretrained: Any) -> nn.Module:
    offline = bool(pretrained) and not os.environ.get("HF_HUB_OFFLINE") and not _hub_reachable()
    try:
        with _hub_offline(offline):
            return _timm().create_model(name, pretrained=bool(pretrained))
    except RuntimeError as e:
        if "Unknown model" in str(e):
            raise BackboneError(f"unknown model 'timm:{name}': {e} (timm.list_models() lists "
                                f"them).") from None
        raise


def _timm_pretrained(name: str, weights: str) -> Any:
    if weights.lower() != "default":
        raise BackboneError(
            f"weights={weights!r} for 'timm:{name}': expected 'DEFAULT' (timm's pretrained "
            f"weights), 'none' (random init) or the path of a state_dict file.")
    return True


def _timm_preprocessing(name: str, model: nn.Module, pretrained: Any) -> Preprocessing:
    from timm.data import resolve_model_data_config

    cfg = resolve_model_data_config(model)
    return Preprocessing(tuple(map(float, cfg["mean"])), tuple(map(float, cfg["std"])),
                         str(cfg["interpolation"]), f"timm:{name}.pretrained_cfg")


def _timm_feature_extractor():
    _timm()
    from timm.models import create_feature_extractor

    return create_feature_extractor


TIMM = Family(
    name="timm", prefix="timm:", names=None, build=_timm_build, pretrained=_timm_pretrained,
    weights_id=lambda model, _: WeightsId("timm", model.pretrained_cfg.get("tag") or "default"),
    preprocessing=_timm_preprocessing, named_taps=lambda name, model: {},
    default_tap=lambda name: "penultimate", feature_extractor=_timm_feature_extractor,
    check=lambda name: None)  # any timm name: timm.create_model says when it has none

# the family with an empty prefix takes every name the others do not: it comes last
FAMILIES: tuple[Family, ...] = (TIMM, TORCHVISION)


def family_of(name: str) -> Family:
    """The family whose names ``name`` is one of (BackboneError when none has it)."""
    family = next(f for f in FAMILIES if f.matches(name))
    family.check(family.bare(name))
    return family


def check_name(name: str) -> str:
    """``name`` when a family takes it, else BackboneError naming the choices."""
    family_of(name)
    return name


def list_backbones() -> list[str]:
    """Model names accepted by :func:`get_backbone`: torchvision's classification models.

    Any timm model is accepted too as ``"timm:NAME"`` when timm is installed
    (``pip install "featurebank[timm]"``).
    """
    return [f.prefix + n for f in FAMILIES if f.names is not None for n in f.names()]
