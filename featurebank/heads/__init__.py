"""Heads: scikit-learn compatible classifiers that train on cached features.

``LogisticHead`` and ``MLPHead`` are estimators written in torch; :func:`to_torch` turns them,
and scikit-learn's linear classifiers, into networks for fine-tuning.
"""

from ._base import class_probabilities
from .calibration import TemperatureScaledClassifier, fit_temperature, reliability
from .export import is_graftable, to_torch
from .logistic import LogisticHead, logistic_path
from .mlp import MLPHead
from .persist import load_head, save_head
from .registry import HeadSpec, get_head, get_head_spec, list_heads

__all__ = ["HeadSpec", "class_probabilities", "LogisticHead", "MLPHead",
           "TemperatureScaledClassifier", "fit_temperature", "get_head", "get_head_spec",
           "is_graftable", "list_heads", "load_head", "logistic_path", "reliability", "save_head",
           "to_torch"]
