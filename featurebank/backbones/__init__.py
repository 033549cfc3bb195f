"""Backbone registry: a model name becomes a network, its weights, its named taps and its
preprocessing.

Laid out by mechanism, as timm's ``models`` package is:

``_registry``
    :class:`Family` records (torchvision, timm): how a family recognises a name, builds,
    resolves weights, reads preprocessing, names its taps and traces; ``list_backbones``.
``_builder``
    :class:`Preprocessing`, building (pretrained, a seeded random init, a local weights
    file), and adopting a ``state_dict`` on the meta device.
``_features``
    Taps: named taps, activation shapes (``list_taps``), pooling, the hook
    :class:`Backbone` the extraction runs, ``get_backbone``.
``_features_fx``
    :class:`TapNetwork`, the FX-truncated plain module that fine-tuning, prediction and
    export use, and ``rebuild_tap_network`` (a bank's spec back to a network).

Preprocessing is data, never constants typed in here: mean, std and interpolation come from the
torchvision weights enum (``weights.transforms()``) or from a timm model's ``pretrained_cfg``.
"""

from ..records import WeightsId
from ._builder import Preprocessing, adopt_state_dict, skeleton
from ._features import TOKEN_POOLS, Backbone, TapInfo, get_backbone, list_taps, pool
from ._features_fx import TapNetwork, rebuild_tap_network
from ._registry import FAMILIES, Family, check_name, family_of, list_backbones

__all__ = ["Backbone", "FAMILIES", "Family", "Preprocessing", "TOKEN_POOLS", "TapInfo",
           "TapNetwork", "WeightsId", "adopt_state_dict", "check_name", "family_of",
           "get_backbone", "list_backbones", "list_taps", "pool", "rebuild_tap_network",
           "skeleton"]
