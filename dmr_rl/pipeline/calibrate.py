"""Router thresholds calibrated on a validation split to hit target HP ratios (never on the test split).

RouteLLM calibrates its routers' thresholds beforehand so that each hits a chosen share of
strong-model calls; an agent router is calibrated the same way, per step: each learned router
plays the validation split once (at its checkpoint threshold), recording P(HP) at every step, and
the threshold for a target ratio r is the score whose HP ratio over the play's steps is nearest r,
in the report's definition: per task HP calls / all tier calls, then the mean over tasks. A step the
threshold sends to HP may also pay part of an LP call (``lp_part``: a probe reading LP's state up to
decoder layer k pays k / L of one, a cascade all of it), so a task with k of its n steps over the
threshold has HP ratio k / (n + lp_part k); ``lp_part`` is read from the play's own HP steps
(:func:`dmr_rl.report.metrics.step_calls`, the report's count). The realised ratio on the test split
is measured, not assumed, and the matched baselines run at that realised ratio. A baseline with a knob
(``eval.calibrated_baselines``: the LP-confidence cascade, score 1 - LP max prob) is calibrated the
same way and then stands where a router point stands.

Written to ``<run_dir>/eval/calibration.json`` (targets, thresholds, how many steps and tasks
they came from, the split) with the calibration episodes in ``<run_dir>/eval/_calib/<method>/``;
a calibration already there for the same checkpoint and targets is reused, and one for the same
checkpoint at other targets keeps them (new targets are added: the points an earlier evaluation
played at the old thresholds keep their record). One written before ``lp_part`` was recorded counted
steps, not calls, and is played again.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Optional

import numpy as np

CALIB_SPLITS = {"alfworld": "valid_seen", "webshop": "eval"}  # a family's validation split


def calib_split(cfg) -> str:
    """``eval.calib_split``, else the family's validation split (a ConfigError when it has none)."""
    from dmr_rl.config import ConfigError

    split = cfg.eval.calib_split or CALIB_SPLITS.get(cfg.env.name, "")
    if not split:
        raise ConfigError(f"eval.calib_split is empty and env {cfg.env.name!r} has no default validation split")
    if split == cfg.env.eval_split:
        raise ConfigError(f"eval.calib_split={split!r} is the evaluation split: thresholds must be chosen on "
                          f"another split")
    return split


def weighted_threshold(scores: np.ndarray, weights: np.ndarray, target: float) -> float:
    """The threshold t such that the weighted share of ``scores >= t`` is as close to ``target`` as
    the data allow (ties move together).

    scores, weights: shape (n,), weights > 0. target in [0, 1]. Returns +inf for target 0 (never HP)
    and the minimum score for target 1.
    """
    scores, weights = np.asarray(scores, dtype=float), np.asarray(weights, dtype=float)
    if scores.shape != weights.shape or scores.ndim != 1 or scores.size == 0:
        raise ValueError("scores and weights must be non-empty vectors of one length")
    if not 0.0 <= target <= 1.0:
        raise ValueError(f"target HP ratio must be in [0, 1], got {target}")
    if target <= 0.0:
        return float("inf")
    values = np.unique(scores)[::-1]  # candidate thresholds, highest first
    share = np.array([weights[scores >= v].sum() for v in values]) / weights.sum()
    return float(values[int(np.argmin(np.abs(share - target)))])


def task_index(task_ids) -> tuple:
    """([n_steps] index of each step's task, [n_tasks] steps per task)."""
    _, inverse, counts = np.unique(np.asarray([str(t) for t in task_ids]), return_inverse=True, return_counts=True)
    return inverse, counts


def _mean_task_share(scores: np.ndarray, inverse: np.ndarray, counts: np.ndarray, threshold: float,
                     lp_part: float) -> float:
    """Mean over tasks of k / (n + lp_part k), k of a task's n steps scoring >= threshold."""
    k = np.bincount(inverse, weights=(scores >= threshold).astype(float), minlength=len(counts))
    return float((k / (counts + lp_part * k)).mean())


def thresholds_for_targets(scores, task_ids, targets, lp_part: float = 0.0) -> dict:
    """{target: threshold} from per-step router scores and the task each step belongs to.

    scores: shape (n_steps,) P(HP); task_ids: shape (n_steps,) any hashable per step; ``lp_part`` in
    [0, 1]: the share of an LP call a step sent to HP pays beside HP's (0: none; a cascade, which pays
    LP at every step and HP on top where the score passes: 1). A task's HP ratio with k of its n steps
    over the threshold is k / (n + lp_part k); the threshold is the score whose mean over tasks of that
    ratio is nearest each target (ties move together; target 0: +inf, never HP).
    """
    if not 0.0 <= lp_part <= 1.0:
        raise ValueError(f"lp_part must be in [0, 1] (the share of an LP call an HP step also pays), got {lp_part}")
    scores = np.asarray(scores, dtype=float)
    if scores.ndim != 1 or scores.size == 0 or len(task_ids) != scores.size:
        raise ValueError("scores and task_ids must be non-empty vectors of one length")
    inverse, counts = task_index(task_ids)
    for r in targets:
        if not 0.0 <= float(r) <= 1.0:
            raise ValueError(f"target HP ratio must be in [0, 1], got {r}")
    values = np.unique(scores)[::-1]
    paid = np.array([_mean_task_share(scores, inverse, counts, v, lp_part) for v in values])  # [candidate]
    return {float(r): float("inf") if r <= 0 else float(values[int(np.argmin(np.abs(paid - r)))]) for r in targets}


def share_at(scores, task_ids, threshold: float, lp_part: float = 0.0) -> float:
    """The HP ratio the threshold gives on these steps: mean over tasks of k / (n + lp_part k), see
    :func:`thresholds_for_targets` (with ``lp_part`` 0, the share of steps with score >= threshold)."""
    return _mean_task_share(np.asarray(scores, dtype=float), *task_index(task_ids), threshold, lp_part)


def hp_step_lp_part(episodes, method: str) -> float:
    """The share of an LP call each step HP acted on paid beside HP's in a play (tier calls as the report
    counts them, :func:`dmr_rl.report.metrics.step_calls`): 0 for a router that reads no LP state, k / L
    for a probe on LP's layer k. A ValueError when it cannot be read: steps read LP's state but HP acted
    on none, or HP steps paid different shares."""
    from dmr_rl.report.metrics import HP, step_calls

    parts = {round(c - h, 6) for h, c in (step_calls(s) for e in episodes for s in e.steps if s.tier == HP)}
    if len(parts) > 1:
        raise ValueError(f"{method}: its calibration play's HP steps paid different LP shares {sorted(parts)}")
    if parts:
        return float(parts.pop())
    if any("lp_hidden" in (s.extra or {}) for e in episodes for s in e.steps):
        raise ValueError(f"{method}: HP acted on no step of its calibration play, so the share of LP's pass its "
                         "HP steps pay cannot be read; calibrate a checkpoint that routes some steps to HP")
    return 0.0


def calibrated_method(name: str) -> str:
    """The method name a calibrated baseline's points play under (``cascade`` -> ``cascade_calibrated``)."""
    return f"{name}_calibrated"


def calibration_plays(router_dirs: dict, baselines) -> dict:
    """{method: (what calibration records as its 'checkpoint', rollout router spec, lp_part)} for learned
    routers ({method: checkpoint dir}; lp_part None: read from the play, :func:`hp_step_lp_part`) and
    calibrated baselines (``<name>_calibrated``, played at the baseline's default knob; only the cascade,
    whose score is 1 - LP max prob and which pays LP at every step: lp_part 1)."""
    from dmr_rl.config import CALIBRATED_BASELINES

    plays = {m: (str(d), {"name": "transformer", "kwargs": {"path": str(d), "num_threads": 1}}, None)
             for m, d in router_dirs.items()}
    for name in baselines:
        if name not in CALIBRATED_BASELINES:
            raise ValueError(f"baseline {name!r} has no knob to calibrate (only {list(CALIBRATED_BASELINES)})")
        plays[calibrated_method(name)] = (f"baseline:{name}", {"name": name, "kwargs": {}}, 1.0)
    return plays


def _read(path: Path) -> dict:
    if not path.is_file():
        return {}
    from environments.errors import DataError

    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e}); delete it to calibrate again") from None


def calibrate(cfg, router_dirs: dict, clients: dict, local: bool = False, progress: bool = True,
              num_workers: Optional[int] = None, baselines=(), both_tiers: bool = False) -> dict:
    """{method: {"thresholds": {target: t}, ...}} for every learned router in ``router_dirs``
    ({method: checkpoint dir}) and every calibrated baseline in ``baselines`` (names; method
    ``<name>_calibrated``), playing the validation split through rollout workers built on
    ``clients`` (the evaluation's own tier clients). ``both_tiers``: both tiers score every step of
    the plays (what :mod:`dmr_rl.pipeline.escalation` calibrates an LP-confidence floor from); an
    earlier play without them is played again."""
    from dmr_rl.atomic_io import write_atomic
    from dmr_rl.report import layout
    from dmr_rl.rollout.records import TrajectoryStore
    from dmr_rl.serving import launcher

    targets = [float(r) for r in cfg.eval.target_hp_ratios]
    path = layout.eval_dir(cfg.run_dir) / "calibration.json"
    done = _read(path)

    def kept(method: str, ckpt) -> dict:  # an earlier calibration of this very checkpoint (with both tiers if asked),
        d = done.get(method, {})          # in tier calls (one from before "lp_part" was recorded counted steps)
        return d if (d.get("checkpoint") == ckpt and (d.get("both_tiers") or not both_tiers)
                     and "lp_part" in d) else {}

    todo = {m: play for m, play in calibration_plays(router_dirs, baselines).items()
            if not set(targets) <= set(kept(m, play[0]).get("targets", []))}
    if not todo:
        return done
    split = calib_split(cfg)
    root = layout.eval_dir(cfg.run_dir) / "_calib"
    group = launcher.create_rollout_group(cfg, clients, root / "_worker_shards", local=local,
                                          num_workers=num_workers, split=split, record_kl=bool(both_tiers))
    try:
        from dmr_rl.pipeline.evaluate import eval_tasks, num_tasks_of

        tasks = eval_tasks(num_tasks_of(group), cfg.eval.calib_episodes)
        for method, (ckpt, spec, lp_part) in todo.items():
            group.set_router(spec)
            eps = group.run_episodes(tasks, "router", seed=int(cfg.eval.seeds[0]), return_episodes=True,
                                     rng_key=(int(cfg.seed), method, "calibration"))["episode_records"]
            out = root / method
            if out.exists():
                shutil.rmtree(out)
            TrajectoryStore(out, "driver").append(eps)
            scores = [s.router_prob for e in eps for s in e.steps]
            ids = [e.task_index for e in eps for s in e.steps]
            part = hp_step_lp_part(eps, method) if lp_part is None else lp_part
            # the targets of an earlier calibration of this checkpoint stay (its points were played with them)
            old = {float(r): t for r, t in kept(method, ckpt).get("thresholds", {}).items()}
            both = sorted(set(targets) | set(old))
            thr = {**thresholds_for_targets(scores, ids, both, part), **old}
            done[method] = {"checkpoint": ckpt, "split": split, "targets": both, "lp_part": part,
                            "thresholds": {f"{r:g}": t for r, t in thr.items()},
                            "calib_share": {f"{r:g}": share_at(scores, ids, t, part) for r, t in thr.items()},
                            "n_tasks": len(set(ids)), "n_steps": len(scores), "both_tiers": bool(both_tiers)}
            if progress:
                print(f"calibrated {method} on {split} ({len(set(ids))} tasks, {len(scores)} steps): "
                      + ", ".join(f"{r:g}->{t:.3f}" for r, t in thr.items()), flush=True)
            write_atomic(path, json.dumps(done, indent=1))
    finally:
        group.shutdown()
    return done
