"""Exceptions raised by featurebank.

Every error a user can cause (bad arguments, missing files, mismatched artefacts) is raised as a
subclass of :class:`FeatureBankError`, with a message that names the problem and the fix. The CLI
prints such errors without a traceback.
"""

from __future__ import annotations

__all__ = [
    "FeatureBankError",
    "DataError",
    "BackboneError",
    "BankError",
    "BankLockedError",
    "HeadError",
    "FinetuneError",
    "ParameterError",
]


class FeatureBankError(Exception):
    """Base class of every error featurebank raises on purpose."""


class ParameterError(FeatureBankError, ValueError):
    """An argument is out of its allowed range or not one of its choices.

    Every such message has one format: ``the 'batch_size' parameter must be a positive int,
    got 0.``
    """


class DataError(FeatureBankError, ValueError):
    """An image source is missing, malformed or holds an unreadable image."""


class BackboneError(FeatureBankError, ValueError):
    """Unknown model, tap or weights, or a weights file that does not fit the model."""


class BankError(FeatureBankError, ValueError):
    """A feature bank is missing, incomplete, of another format, or does not match a request."""


class BankLockedError(BankError):
    """Another process is writing the same feature bank."""


class HeadError(FeatureBankError, ValueError):
    """A saved head is unreadable, or belongs to another bank or tap."""


class FinetuneError(FeatureBankError):
    """A fine-tune cannot start or continue: bad head, moved data, bad checkpoint."""
