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


def publish_dir(out, build, marker: str = "config.json") -> Path:
    """Make directory ``out`` whole or not at all: ``build(tmp)`` fills a per-process sibling
    ``<out>.part<pid>`` that is then renamed to ``out``. Two processes may race: the loser's copy
    is dropped when the winner's ``out/marker`` exists (any other rename failure is raised). A
    build that fails leaves no ``out``; its partial directory is removed."""
    import shutil

    out = Path(out)
    tmp = out.with_name(f"{out.name}.part{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        build(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        tmp.rename(out)
    except OSError:
        if not (out / marker).exists():
            raise
        shutil.rmtree(tmp)  # another process published it first
    return out
