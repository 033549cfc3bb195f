"""Fine-tune from the best head: graft it onto the backbone at its tap, train end to end.

``api.finetune`` is the straight line; ``config`` holds the options (one dataclass),
``graft`` the grafted network and the hand-off check, ``loop`` the trainer and its callbacks,
``checkpoint`` what a run saves to continue exactly, ``augment`` the device-side augmentation.
"""

from .api import finetune
from .config import FinetuneConfig
from .graft import GraftedNetwork
from .loop import Callback, Trainer

__all__ = ["Callback", "FinetuneConfig", "GraftedNetwork", "Trainer", "finetune"]
