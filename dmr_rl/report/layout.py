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
import math
import re
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Optional

from dmr_rl.rollout.records import EpisodeRecord, TrajectoryStore
from environments.errors import DataError

SEED_DIR = re.compile(r"^seed_(-?\d+)$")


def json_safe(x):
    """NaN/inf -> None (recursively through dicts, lists, tuples) so a results file is strict JSON."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return x


def eval_dir(run_dir) -> Path:
    return Path(run_dir) / "eval"


def tiers_path(run_dir) -> Path:
    """``eval/tiers.json``: {tier: [one info dict per replica]} as the evaluation's servers reported."""
    return eval_dir(run_dir) / "tiers.json"


def load_tiers(run_dir) -> Optional[dict]:
    p = tiers_path(run_dir)
    return json.loads(p.read_text()) if p.is_file() else None


def point_dir(run_dir, method: str, point: str) -> Path:
    return eval_dir(run_dir) / method / point


def seed_dir(base, seed: int) -> Path:
    return Path(base) / f"seed_{int(seed)}"


def causal_dir(run_dir) -> Path:
    return Path(run_dir) / "causal"


def report_dir(run_dir) -> Path:
    return Path(run_dir) / "report"


def write_point_meta(run_dir, method: str, point: str, params: dict, default: bool = False) -> Path:
    """Record what an operating point is (its knob values) beside its shards (written whole or
    not at all)."""
    from dmr_rl.atomic_io import write_atomic

    return write_atomic(point_dir(run_dir, method, point) / "point.json",
                        json.dumps({"method": method, "point": point, "params": params,
                                    "default": bool(default)}, indent=1))


def read_json(path: Path) -> dict:
    """A JSON file's object; a DataError naming the file when it is not valid JSON."""
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None


_SKIP_CORRUPT: ContextVar = ContextVar("skip_corrupt", default=False)


@contextmanager
def skipping_corrupt(on: bool = True):
    """Within the block, readers skip corrupt record lines (``dmr report --skip-corrupt``)
    instead of raising DataError; :func:`skipped_records` says which."""
    token = _SKIP_CORRUPT.set(bool(on))
    try:
        yield
    finally:
        _SKIP_CORRUPT.reset(token)


def read_seeds(base, skipped: Optional[list] = None) -> dict[int, list[EpisodeRecord]]:
    """{seed: episodes} from ``<base>/seed_<s>/`` shard directories (seeds without episodes skipped).
    A torn last line of a shard is skipped; any other corrupt line raises DataError naming file and
    line, unless inside :func:`skipping_corrupt` (then it goes to ``skipped``, with its seed)."""
    out = {}
    for d in sorted(Path(base).iterdir()):
        m = SEED_DIR.match(d.name)
        if d.is_dir() and m:
            found: list = []
            eps = TrajectoryStore.read(d, skip_corrupt=_SKIP_CORRUPT.get(), skipped=found)
            for rec in found:
                rec["seed"] = int(m.group(1))
            if skipped is not None:
                skipped += found
            if eps:
                out[int(m.group(1))] = eps
    return out


def skip_note(run_dir, results: dict) -> str:
    """Under :func:`skipping_corrupt`: put what was skipped into ``results["skipped_records"]`` and
    return the report header's line saying so ("" when nothing was skipped)."""
    if not _SKIP_CORRUPT.get():
        return ""
    skipped = skipped_records(run_dir)
    if not skipped:
        return ""
    counts = skipped_counts(skipped)
    dropped = dropped_pairs(run_dir, skipped=skipped)
    tasks = sorted({t for _, _, t in dropped})
    results["skipped_records"] = {"lines": len(skipped), "per_method": counts, "dropped_tasks": tasks,
                                  "records": skipped}
    return (f"**{len(skipped)} corrupt record line(s) skipped** (--skip-corrupt): "
            + ", ".join(f"{m} {n}" for m, n in counts.items())
            + f"; paired comparisons leave out task(s) {tasks} for every method.")


def skipped_records(run_dir) -> list[dict]:
    """Every corrupt (not torn-last) record line under ``<run_dir>/eval``: ``{"path", "line",
    "reason", "method", "point", "seed", "task_index"}`` (task_index None where the broken text
    does not say)."""
    root = eval_dir(run_dir)
    out: list = []
    if not root.is_dir():
        return out
    with skipping_corrupt():
        for mdir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("_")):
            for pdir in sorted(p for p in mdir.iterdir() if p.is_dir()):
                found: list = []
                read_seeds(pdir, found)
                for rec in found:
                    rec.update(method=mdir.name, point=pdir.name)
                out += found
    return out


def skipped_counts(skipped: list) -> dict:
    """{method: number of skipped lines} (what the report's header states)."""
    counts: dict = {}
    for rec in skipped:
        counts[rec["method"]] = counts.get(rec["method"], 0) + 1
    return dict(sorted(counts.items()))


def dropped_pairs(run_dir, loaded: Optional[dict] = None, skipped: Optional[list] = None) -> set:
    """The (method, seed, task_index) triples paired comparisons must leave out because a record of
    that task was corrupt somewhere: a task with a skipped line is dropped under every seed and for
    every method alike (a deterministic method's one playthrough pairs with every seed of a
    stochastic one). A line whose task cannot be read drops the tasks its (method, point, seed)
    lacks compared with all tasks played. Empty when nothing was skipped."""
    skipped = skipped_records(run_dir) if skipped is None else skipped
    if not skipped:
        return set()
    if loaded is None:
        with skipping_corrupt():
            loaded = _load_eval(run_dir)
    played = {m: {s: {e.task_index for e in eps} for pt in pts.values() for s, eps in pt["by_seed"].items()}
              for m, pts in loaded.items()}
    every = {t for by_seed in played.values() for tasks in by_seed.values() for t in tasks}
    tasks: set = set()
    for rec in skipped:
        if rec.get("task_index") is not None:
            tasks.add(int(rec["task_index"]))
            continue
        point = loaded.get(rec["method"], {}).get(rec["point"], {"by_seed": {}})
        have = {e.task_index for e in point["by_seed"].get(rec["seed"], [])}
        tasks |= every - have
    return {(m, s, t) for m, by_seed in played.items() for s in by_seed for t in tasks}


def load_eval(run_dir) -> dict:
    """{method: {point: {"params", "default", "by_seed": {seed: [EpisodeRecord]}}}} from the shards.

    Raises FileNotFoundError when there is no ``eval`` directory, DataError when it holds no
    episodes at all, or a corrupt record line (file and line named). Inside
    :func:`skipping_corrupt` such lines are skipped and every task they touch is left out for
    every method and seed alike (:func:`dropped_pairs`), so comparisons stay paired.
    """
    out = _load_eval(run_dir)
    if _SKIP_CORRUPT.get():
        dropped = dropped_pairs(run_dir, loaded=out)
        for m, points in out.items():
            for entry in points.values():
                entry["by_seed"] = {s: [e for e in eps if (m, s, e.task_index) not in dropped]
                                    for s, eps in entry["by_seed"].items()}
    return out


def _load_eval(run_dir) -> dict:
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
            meta = read_json(meta_path) if meta_path.is_file() else {}
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
    return {"params": read_json(meta) if meta.is_file() else {}, "arms": arms}


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
