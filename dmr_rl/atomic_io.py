"""Whole-or-absent file writes, below every layer that writes results (report, pipeline, rollout)."""
from __future__ import annotations

import os
from pathlib import Path


def write_atomic(path, text: str) -> Path:
    """Write ``text`` to ``path`` whole or not at all (tmp file + fsync + ``os.replace``); an
    OSError names ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise OSError(e.errno, e.strerror or str(e), str(path)) from None
    return path
