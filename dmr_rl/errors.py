"""Errors that mean bad input from the user (shown as one line by the CLI, never a traceback)."""
from __future__ import annotations

from dmr_rl.config import ConfigError
from environments.errors import DataError


class ModelError(ValueError):
    """A model path, checkpoint, backend, quantization method or bit width is missing or invalid."""


class ActorError(RuntimeError):
    """A Ray actor died or could not be placed; the message names it and what was saved."""


USER_ERRORS = (ConfigError, DataError, ModelError, ActorError, FileNotFoundError)
