"""Errors that mean bad input from the user (shown as one line by the CLI, never a traceback),
and where the traceback goes instead (:func:`set_log_file`, :func:`log_traceback`)."""
from __future__ import annotations

import time
import traceback
from pathlib import Path
from typing import Optional

from dmr_rl.config import ConfigError
from environments.errors import DataError


class ModelError(ValueError):
    """A model path, checkpoint, backend, quantization method or bit width is missing or invalid."""


class ActorError(RuntimeError):
    """A Ray actor died or could not be placed; the message names it and what was saved."""


class RunDirError(RuntimeError):
    """The run directory is in use by another run, or was made with a config that differs."""


USER_ERRORS = (ConfigError, DataError, ModelError, ActorError, RunDirError, FileNotFoundError)

_LOG_FILE: Optional[Path] = None


def set_log_file(path) -> None:
    """Where :func:`log_traceback` appends (a run sets ``<run_dir>/logs/dmr.log``); None: nowhere."""
    global _LOG_FILE
    _LOG_FILE = None if path is None else Path(path)


def log_traceback(exc: BaseException) -> Optional[Path]:
    """Append ``exc``'s full traceback (remote ones included) to the log file; its path, or None
    when there is no log file or it cannot be written."""
    if _LOG_FILE is None:
        return None
    try:
        _LOG_FILE.parent.mkdir(parents=True, exist_ok=True)
        with open(_LOG_FILE, "a", encoding="utf-8") as f:
            f.write(f"---- {time.strftime('%Y-%m-%d %H:%M:%S %Z')}\n")
            f.write("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
        return _LOG_FILE
    except OSError:
        return None


def one_line(exc: BaseException) -> str:
    """The message of a user-facing error as one line: an OSError names its path, anything else
    keeps its first line (a remote traceback goes to the log file)."""
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.strerror or exc}: {exc.filename}"
    if isinstance(exc, OSError) and exc.errno:
        return f"{exc.strerror or exc} (errno {exc.errno})"
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def user_facing(exc: BaseException) -> Optional[BaseException]:
    """The error to show as one line, or None for a bug (shown with its traceback): a user error,
    an OSError, a Ray error (a user error raised inside an actor: that error)."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, USER_ERRORS + (OSError,)):
        return cause
    if isinstance(exc, USER_ERRORS + (OSError,)):
        return exc
    if type(exc).__module__.startswith("ray."):
        return exc
    return None
