"""Errors for bad input data: each names the file and, where known, the field."""
from __future__ import annotations

from typing import Optional


class DataError(ValueError):
    """Input data is missing or malformed. ``path`` and ``field`` say where."""

    def __init__(self, message: str, path: Optional[str] = None, field: Optional[str] = None):
        self.path = None if path is None else str(path)
        self.field = field
        where = []
        if self.path:
            where.append(f"file {self.path}")
        if field:
            where.append(f"field {field!r}")
        super().__init__(f"{message}" + (f" ({', '.join(where)})" if where else ""))


class UnknownSplitError(DataError):
    """The requested split does not exist for this data root."""
