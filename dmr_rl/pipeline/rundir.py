"""A run directory that cannot be used twice at once and never claims a config it was not made with.

* :class:`RunLock` - ``<run_dir>/.lock`` holds the holder's pid, process start time, host and
  start time; a second ``dmr run`` on the directory is refused with them; a lock whose process is
  gone (a killed run) is taken over with a note.
* :func:`check_resume` - ``<run_dir>/config.yaml`` records the config the run was made with (the
  first call writes it; stages fill in the paths they produced: data, agent, LP copy). A later
  call compares its config with it: a difference in a field that changes results is refused with
  a one-line diff (``--fresh`` or a new ``run_dir`` is the way out); fields that only change how
  the run runs (``RUN_ONLY``: workers, replicas, Ray, batching) are allowed and noted in
  ``<run_dir>/resumes.jsonl``. The recorded config is never rewritten with the new values.
"""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Optional

from dmr_rl.atomic_io import write_atomic
from dmr_rl.config import ConfigError
from dmr_rl.errors import RunDirError

LOCK_NAME = ".lock"
CONFIG_NAME = "config.yaml"
RESUMES_NAME = "resumes.jsonl"
# fields that change how a run runs, not what it computes (episodes are keyed per task, so the
# number of workers and environments per worker does not change them)
RUN_ONLY_SECTIONS = {"ray"}
RUN_ONLY_TIER = {"num_replicas", "num_gpus", "resources", "max_batch_size", "max_wait_ms", "python",
                 "gpu_memory_utilization", "enforce_eager", "tensor_parallel_size"}
RUN_ONLY = {"collect.num_workers", "collect.envs_per_worker", "sft.num_learners", "grpo.num_learners",
            "name", "run_dir"} | {f"{t}.{f}" for t in ("hp", "lp") for f in RUN_ONLY_TIER}
# filled by a stage when empty: an empty request matches what that stage recorded
STAGE_FILLED = {"env.data_dir", "hp.model_path", "lp.model_path"}


def _proc_start(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), '' elsewhere: tells a live
    holder from a new process that reuses its pid."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _alive(holder: dict) -> bool:
    if holder.get("host") != socket.gethostname():
        return True  # cannot check another machine's process: assume it runs
    pid = int(holder.get("pid", -1))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    start = holder.get("proc_start", "")
    return not start or start == _proc_start(pid)


class RunLock:
    """``with RunLock(run_dir, say):`` holds ``<run_dir>/.lock`` for the block."""

    def __init__(self, run_dir, say=print):
        self.path = Path(run_dir) / LOCK_NAME
        self.say = say
        self.held = False

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        me = {"pid": os.getpid(), "proc_start": _proc_start(os.getpid()), "host": socket.gethostname(),
              "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is not None and _alive(holder):
                    raise RunDirError(f"{self.path.parent} is in use by another dmr run (pid {holder.get('pid')} "
                                      f"on {holder.get('host')}, started {holder.get('started')}); wait for it, or "
                                      f"use another run_dir") from None
                self.say(f"note: taking over the stale lock {self.path} of a run that is gone "
                         f"(pid {(holder or {}).get('pid', '?')}, started {(holder or {}).get('started', '?')})")
                try:
                    self.path.unlink()
                except FileNotFoundError:
                    pass
                continue
            except OSError as e:
                raise OSError(e.errno, e.strerror or str(e), str(self.path)) from None
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(me))
            self.held = True
            return
        raise RunDirError(f"could not take the lock {self.path} (another run keeps taking it)")

    def _holder(self) -> Optional[dict]:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None  # torn or vanished: a writer that died while creating it

    def release(self) -> None:
        if self.held:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
            self.held = False


# ---- config drift --------------------------------------------------------------------------------
def flatten(d: dict) -> dict:
    """{"lp": {"bits": 2}, "seed": 0} -> {"lp.bits": 2, "seed": 0} (sections one level deep)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update({f"{k}.{f}": x for f, x in v.items()})
        else:
            out[k] = v
    return out


def run_only(key: str) -> bool:
    return key in RUN_ONLY or key.split(".", 1)[0] in RUN_ONLY_SECTIONS


def config_diff(recorded: dict, requested: dict) -> tuple[list, list]:
    """(result-changing differences, run-only differences), each ``[(field, recorded, requested)]``."""
    old, new = flatten(recorded), flatten(requested)
    changing, running = [], []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        if a == b or (key in STAGE_FILLED and b in ("", None)):
            continue
        if key not in old or key not in new:  # a field added or removed since the run was made
            continue
        (running if run_only(key) else changing).append((key, a, b))
    return changing, running


def _fmt(diffs: list) -> str:
    return ", ".join(f"{k} {a!r} -> {b!r}" for k, a, b in diffs)


def check_resume(cfg, say=print) -> None:
    """Record ``cfg`` in a new run directory, or compare it with the recorded one (see module doc)."""
    import yaml

    from dmr_rl.config import to_dict

    run_dir = Path(cfg.run_dir)
    path = run_dir / CONFIG_NAME
    if not path.is_file():
        run_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
        return
    try:
        recorded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: the run's recorded config is not valid YAML ({e})") from None
    changing, running = config_diff(recorded, to_dict(cfg))
    if changing:
        raise RunDirError(f"{run_dir} was made with a different config: {_fmt(changing)}; these change results, "
                          f"so the run cannot continue with them: add --fresh (a new directory) or "
                          f"--set run_dir=NEW")
    if running:
        say(f"note: continuing {run_dir} with run-only changes: {_fmt(running)}")
        line = json.dumps({"time": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "changes": running}, default=str)
        try:
            with open(run_dir / RESUMES_NAME, "a", encoding="utf-8") as f:
                f.write(line + "\n")
        except OSError as e:
            raise OSError(e.errno, e.strerror or str(e), str(run_dir / RESUMES_NAME)) from None


def record_filled(cfg) -> None:
    """Write the paths the stages filled in (data, agent, LP copy) into the recorded config; every
    other recorded field stays as the run was made."""
    import yaml

    path = Path(cfg.run_dir) / CONFIG_NAME
    recorded = yaml.safe_load(path.read_text()) if path.is_file() else {}
    changed = False
    for dotted in sorted(STAGE_FILLED):
        sec, name = dotted.split(".")
        value = getattr(getattr(cfg, sec), name)
        if recorded.setdefault(sec, {}).get(name) in ("", None) and value:
            recorded[sec][name] = value
            changed = True
    if changed:
        write_atomic(path, yaml.safe_dump(recorded, sort_keys=False))
