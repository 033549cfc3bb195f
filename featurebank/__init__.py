"""featurebank: transfer learning with cached features.

Run a frozen pretrained backbone once over an image dataset (:func:`extract`), keep the features
in an HDF5 feature bank (:class:`FeatureBank`), then train heads on them in seconds.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("featurebank")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

from .backbones import Backbone, Preprocessing, get_backbone, list_backbones, list_taps
from .bank import FORMAT_VERSION, FeatureBank
from .data import ImageSource, from_arrays, list_datasets, open_source
from .exceptions import (BackboneError, BankError, BankLockedError, DataError, FeatureBankError,
                         HeadError)
from .extract import extract
from .finetune import FinetuneError, GraftedNetwork, finetune
from .fit import fit_heads
from .heads import LogisticHead, MLPHead, to_torch
from .heads.persist import load_head, save_head
from .transformer import BackboneTransformer

__all__ = [
    "__version__",
    "FORMAT_VERSION",
    "Backbone",
    "BackboneTransformer",
    "BackboneError",
    "BankError",
    "BankLockedError",
    "DataError",
    "FeatureBank",
    "FeatureBankError",
    "FinetuneError",
    "GraftedNetwork",
    "HeadError",
    "ImageSource",
    "LogisticHead",
    "MLPHead",
    "Preprocessing",
    "extract",
    "finetune",
    "fit_heads",
    "from_arrays",
    "get_backbone",
    "list_backbones",
    "list_datasets",
    "list_taps",
    "load_head",
    "open_source",
    "save_head",
    "to_torch",
]
