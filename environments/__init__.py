"""Text environments for multi-step agents: ALFWorld and WebShop behind one interface.

``ENVIRONMENTS`` maps a name to the class that implements it (imported on first use, so that
importing this package does not pull in TextWorld or the search index). A new task family is
one :class:`~environments.base.TextEnv` subclass with a ``from_data`` classmethod, added here.
"""
from __future__ import annotations

import importlib
from typing import Optional

from environments.base import BatchTextEnv, TaskState, TextEnv
from environments.errors import DataError

ENVIRONMENTS: dict[str, str] = {
    "alfworld": "environments.alfworld.env:AlfWorldEnv",
    "webshop": "environments.webshop.env:WebShopEnv",
}


def env_class(name: str) -> type[TextEnv]:
    """The TextEnv subclass registered under ``name``."""
    if name not in ENVIRONMENTS:
        raise ValueError(f"unknown environment {name!r}; known: {sorted(ENVIRONMENTS)}")
    module, cls = ENVIRONMENTS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def make_env(name: str, data_dir: str, split: str, max_steps: Optional[int] = None, **kwargs) -> TextEnv:
    """Build environment ``name`` over the data in ``data_dir`` for ``split``."""
    return env_class(name).from_data(data_dir, split, max_steps=max_steps, **kwargs)


__all__ = ["ENVIRONMENTS", "BatchTextEnv", "DataError", "TaskState", "TextEnv", "env_class", "make_env"]
