"""featurebank: transfer learning with cached features.

Run a frozen pretrained backbone once over an image dataset (:func:`extract`), keep the features
in an HDF5 feature bank (:class:`FeatureBank`), train heads on them in seconds
(:func:`fit_heads`), and fine-tune the best one end to end (:func:`finetune`).

The names below are imported on first use, so ``import featurebank`` (and the command line's
``--help``) does not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._io import package_version

__version__ = package_version()

# public name -> the module that defines it
_EXPORTS = {
    "Backbone": "backbones", "Preprocessing": "backbones", "WeightsId": "backbones",
    "get_backbone": "backbones", "list_backbones": "backbones", "list_taps": "backbones",
    "FORMAT_VERSION": "bank", "FeatureBank": "bank",
    "ImageSource": "data", "from_arrays": "data", "list_datasets": "data",
    "open_source": "data", "reopen_source": "data",
    "BackboneError": "exceptions", "BankError": "exceptions", "BankLockedError": "exceptions",
    "DataError": "exceptions", "FeatureBankError": "exceptions", "FinetuneError": "exceptions",
    "HeadError": "exceptions", "ParameterError": "exceptions",
    "ExtractConfig": "extraction", "extract": "extraction",
    "BankSpec": "records", "DatasetInfo": "records", "TapLayer": "records",
    "TapSelection": "records",
    "Callback": "finetuning", "FinetuneConfig": "finetuning", "GraftedNetwork": "network",
    "Trainer": "finetuning", "finetune": "finetuning",
    "fit_heads": "fit",
    "LogisticHead": "heads", "MLPHead": "heads", "load_head": "heads", "save_head": "heads",
    "TemperatureScaledClassifier": "heads", "to_torch": "heads",
    "BackboneTransformer": "transformer",
    "Predictor": "predictor", "load_model": "predictor", "build_report": "report",
    "RunResult": "pipeline", "run": "pipeline",
    "SuiteConfig": "suites", "suite": "suites",
    "TapNetwork": "backbones",
}

__all__ = [
    "__version__",
    "FORMAT_VERSION", "Backbone", "BackboneError", "BackboneTransformer", "BankError",
    "BankSpec", "DatasetInfo", "ExtractConfig", "TapLayer", "TapSelection",
    "BankLockedError", "Callback", "DataError", "FeatureBank", "FeatureBankError",
    "FinetuneConfig", "FinetuneError", "GraftedNetwork", "HeadError", "ImageSource",
    "LogisticHead", "MLPHead", "ParameterError", "Predictor", "Preprocessing", "RunResult",
    "SuiteConfig", "TapNetwork", "TemperatureScaledClassifier",
    "Trainer", "WeightsId",
    "build_report", "extract", "finetune", "fit_heads", "from_arrays", "get_backbone", "list_backbones",
    "list_datasets", "list_taps", "load_head", "load_model", "open_source", "reopen_source", "run",
    "save_head", "suite",
    "to_torch",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'featurebank' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from .extraction import ExtractConfig, extract
    from .finetuning import Callback, FinetuneConfig, Trainer, finetune
    from .network import GraftedNetwork
    from .backbones import (Backbone, Preprocessing, TapNetwork, WeightsId, get_backbone,
                            list_backbones, list_taps)
    from .bank import FORMAT_VERSION, FeatureBank
    from .data import ImageSource, from_arrays, list_datasets, open_source, reopen_source
    from .exceptions import (BackboneError, BankError, BankLockedError, DataError,
                             FeatureBankError, FinetuneError, HeadError, ParameterError)
    from .fit import fit_heads
    from .heads import (LogisticHead, MLPHead, TemperatureScaledClassifier, load_head,
                        save_head, to_torch)
    from .pipeline import RunResult, run
    from .predictor import Predictor, load_model
    from .records import BankSpec, DatasetInfo, TapLayer, TapSelection
    from .report import build_report
    from .suites import SuiteConfig, suite
    from .transformer import BackboneTransformer
