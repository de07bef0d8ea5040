"""Errors a user can hit. Each message names the cause and the next step.

The CLI prints a `PhubError` as one line and exits with status 1; anything else is a bug.
"""

from __future__ import annotations


class PhubError(Exception):
    """Base class of every error perfusion-hub reports to its users."""


class InvalidNameError(PhubError):
    """A concept or base name that is not a slug."""


class ConceptFileError(PhubError):
    """A concept file that cannot be read, or whose content is invalid."""


class NotFoundError(PhubError):
    """A name that the registry does not know."""


class ConflictError(PhubError):
    """An operation that would overwrite or duplicate something that exists."""


class RegistryError(PhubError):
    """A registry database that cannot be opened or upgraded."""


class IncompatibleBaseError(PhubError):
    """A concept used with a base model other than the one it was trained on."""


class BaseModelError(PhubError):
    """A base model that cannot be resolved, loaded or analysed."""


class PromptError(PhubError):
    """A prompt or job description that cannot be parsed."""


class TrainingError(PhubError):
    """Training data or options that cannot be used."""


class OutputError(PhubError):
    """An output path that cannot be written."""
