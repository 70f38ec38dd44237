"""Where evaluation results live inside a run directory, and how to read them back.

    <run_dir>/eval/<method>/<point>/point.json           {"method", "point", "params", "default"}
    <run_dir>/eval/<method>/<point>/seed_<s>/*.jsonl     EpisodeRecord shards (TrajectoryStore)
    <run_dir>/eval/results.json                          written by `dmr eval`
    <run_dir>/causal/<arm>/seed_<s>/*.jsonl              the causal check (arms: flagged, unflagged)
    <run_dir>/causal/causal.json                         its parameters
    <run_dir>/labels*  (.jsonl files or directories)     KL-labelled steps, if any (`dmr label`)
    <run_dir>/eval/_*/                                   ignored (e.g. rollout workers' own shards)
    <run_dir>/report/{report.md,results.json,plots/,tb/} written by `dmr report`

A *method* is a router or a baseline (``hp_only``, ``router``...); an *operating point* one
setting of its knob (``t0.50``, ``ratio0.30``, ``k3``); each has one shard directory per seed.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional

from dmr_rl.rollout.records import EpisodeRecord, TrajectoryStore
from environments.errors import DataError

SEED_DIR = re.compile(r"^seed_(-?\d+)$")


def eval_dir(run_dir) -> Path:
    return Path(run_dir) / "eval"


def point_dir(run_dir, method: str, point: str) -> Path:
    return eval_dir(run_dir) / method / point


def seed_dir(base, seed: int) -> Path:
    return Path(base) / f"seed_{int(seed)}"


def causal_dir(run_dir) -> Path:
    return Path(run_dir) / "causal"


def report_dir(run_dir) -> Path:
    return Path(run_dir) / "report"


def write_point_meta(run_dir, method: str, point: str, params: dict, default: bool = False) -> Path:
    """Record what an operating point is (its knob values) beside its shards."""
    d = point_dir(run_dir, method, point)
    d.mkdir(parents=True, exist_ok=True)
    path = d / "point.json"
    path.write_text(json.dumps({"method": method, "point": point, "params": params,
                                "default": bool(default)}, indent=1))
    return path


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None


def read_seeds(base) -> dict[int, list[EpisodeRecord]]:
    """{seed: episodes} from ``<base>/seed_<s>/`` shard directories (seeds without episodes skipped)."""
    out = {}
    for d in sorted(Path(base).iterdir()):
        m = SEED_DIR.match(d.name)
        if d.is_dir() and m:
            eps = TrajectoryStore.read(d)
            if eps:
                out[int(m.group(1))] = eps
    return out


def load_eval(run_dir) -> dict:
    """{method: {point: {"params", "default", "by_seed": {seed: [EpisodeRecord]}}}} from the shards.

    Raises FileNotFoundError when there is no ``eval`` directory, DataError when it holds no
    episodes at all.
    """
    root = eval_dir(run_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"no evaluation results at {root} (run `dmr eval` first)")
    out: dict = {}
    for mdir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("_")):
        for pdir in sorted(p for p in mdir.iterdir() if p.is_dir()):
            by_seed = read_seeds(pdir)
            if not by_seed:
                continue
            meta_path = pdir / "point.json"
            meta = _read_json(meta_path) if meta_path.is_file() else {}
            out.setdefault(mdir.name, {})[pdir.name] = {
                "params": meta.get("params", {}), "default": bool(meta.get("default", False)),
                "by_seed": by_seed}
    if not out:
        raise DataError(f"{root}: no episode shards under <method>/<point>/seed_<s>/")
    return out


def load_causal(run_dir) -> Optional[dict]:
    """{"params": {...}, "arms": {arm: {seed: [EpisodeRecord]}}} or None when not run."""
    root = causal_dir(run_dir)
    if not root.is_dir():
        return None
    arms = {}
    for adir in sorted(p for p in root.iterdir() if p.is_dir()):
        by_seed = read_seeds(adir)
        if by_seed:
            arms[adir.name] = by_seed
    if not arms:
        return None
    meta = root / "causal.json"
    return {"params": _read_json(meta) if meta.is_file() else {}, "arms": arms}


def _kl_from_line(obj) -> list[float]:
    if isinstance(obj, dict) and isinstance(obj.get("steps"), list):  # an EpisodeRecord
        return [float(s["kl"]) for s in obj["steps"] if isinstance(s, dict) and s.get("kl") is not None]
    if isinstance(obj, dict) and obj.get("kl") is not None:  # a labelled-steps row (dmr label)
        return [float(obj["kl"])]
    return []


def load_kl_values(run_dir, extra_dirs=()) -> list[float]:
    """Per-step KL values from ``<run_dir>/labels*`` (files or directories, any depth) and
    ``extra_dirs``: EpisodeRecord lines (StepRecord.kl) and labelled-steps rows (``kl``)."""
    run_dir = Path(run_dir)
    files: list[Path] = []
    for base in [*sorted(run_dir.glob("labels*")), *map(Path, extra_dirs)]:
        if base.is_file() and base.suffix == ".jsonl":
            files.append(base)
        elif base.is_dir():
            files += sorted(base.rglob("*.jsonl"))
    values: list[float] = []
    for path in dict.fromkeys(files):
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    values += _kl_from_line(json.loads(line))
                except (json.JSONDecodeError, TypeError, ValueError):
                    continue  # a torn last line
    return values
