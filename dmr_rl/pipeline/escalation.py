"""A learned router with an LP-confidence floor, calibrated on the validation split at the probe's cost.

The router (probe) hands HP the steps whose P(HP) >= t; on the others LP's full pass scores the
candidate actions anyway, so LP's confidence there is free: where LP's max action probability is
below a floor m, HP acts too (both tiers paid, see ``Router.escalate``). The probe misses flips
(steps where the tiers' greedy actions differ) that LP's own uncertainty gives away.

An escalated step pays both tiers, so escalations are priced in weight bytes against the probe
alone at the same target. Per step, in HP calls' bytes with s = LP's bytes / HP's: a probe step
reads 1, an LP step s, an escalated one 1 + s (the probe's own partial LP read is the same on every
step). The probe alone at target HP share r reads s + r (1 - s); with a share e of steps escalated
the probe keeps p = r - e / (1 - s) and the rule reads the same bytes (so it acts HP on fewer
steps: p + e <= r). With s = 0 (LP's bytes taken as free) p = r - e: the same HP share, more bytes.

Calibration reads one validation play of the router in which both tiers scored every step (P(HP),
LP's max probability and whether the greedy actions differed): per candidate e, t is the
task-weighted (1 - p) quantile of P(HP) and m the floor whose escalations on the steps under t
come nearest a share e; the e whose (t, m) puts HP on the most of the play's flips is chosen (e = 0,
the probe alone, is always a candidate). Everything here is chosen on validation steps; the test
split is only measured. :func:`choose_escalation` is pure numpy; :func:`calibrate_escalation`
reads the calibration plays and records its choices in ``<run_dir>/eval/calibration.json`` under
``<router>_escalate``.
"""
from __future__ import annotations

import json
from typing import Optional

import numpy as np

from dmr_rl.pipeline.calibrate import share_at, task_index, weighted_threshold


def escalation_method(name: str) -> str:
    """The method name a learned router plays under with its LP-confidence floor (``grpo`` -> ``grpo_escalate``)."""
    return f"{name}_escalate"


def floor_for_share(lp_max: np.ndarray, eligible: np.ndarray, weights: np.ndarray, share: float) -> float:
    """The floor m such that the weighted share of all steps with ``eligible & (lp_max < m)`` is
    nearest ``share`` (0.0 escalates nothing).

    lp_max, eligible, weights: [n]; weights sum to 1 over all n steps (each step 1 / (n_task * T)).
    """
    lp_max, eligible, weights = (np.asarray(a) for a in (lp_max, eligible, weights))
    if share <= 0.0:
        return 0.0
    values = np.unique(lp_max[eligible])
    if values.size == 0:
        return 0.0
    # candidate floors: just above each eligible value (midpoint to the next one, 1.0 above the last)
    floors = np.concatenate([(values[:-1] + values[1:]) / 2.0, [1.0]])
    got = np.array([weights[eligible & (lp_max < f)].sum() for f in floors])
    return float(floors[int(np.argmin(np.abs(got - share)))])


def probe_share(target: float, share: float, lp_bytes_share: float) -> float:
    """The probe's HP share p beside an escalation share e = ``share`` at target r: r - e / (1 - s),
    the same weight bytes as the probe alone at r (s = ``lp_bytes_share``; s = 0, LP's bytes taken
    as free, keeps the HP share: r - e)."""
    if not 0.0 <= lp_bytes_share < 1.0:
        raise ValueError(f"lp_bytes_share must be in [0, 1) (LP reads fewer weight bytes than HP), "
                         f"got {lp_bytes_share}")
    return target - share / (1.0 - lp_bytes_share)


def choose_escalation(p_hp, lp_max, flip, task_ids, target: float, shares,
                      lp_bytes_share: float = 0.0) -> dict:
    """The probe threshold and LP floor for target ``target``, the escalation share chosen among
    ``shares`` (0 is always a candidate: the router alone) by the flips it puts on HP.

    p_hp, lp_max, flip, task_ids: [n_steps] of one validation play with both tiers scored at every
    step (flip: 1 where their greedy actions differed). Each share e leaves the probe
    :func:`probe_share` (the bytes of the probe alone at ``target``; with ``lp_bytes_share`` 0 the
    same HP share); a share that leaves it less than 0 or that is >= target is skipped.
    Returns {"share", "probe_share", "threshold", "lp_floor", "flip_recall", "hp_share",
    "candidates": {share: recall}} for the chosen share; ties go to the smaller share (fewer steps
    paying both tiers).
    """
    p_hp, lp_max = np.asarray(p_hp, dtype=float), np.asarray(lp_max, dtype=float)
    flip = np.asarray(flip, dtype=bool)
    if not p_hp.shape == lp_max.shape == flip.shape == (len(task_ids),) or not len(task_ids):
        raise ValueError("p_hp, lp_max, flip and task_ids must be non-empty vectors of one length")
    if not np.isfinite(lp_max).all():
        raise ValueError("lp_max has missing values: the validation play must score LP at every step")
    inverse, counts = task_index(task_ids)
    weights = 1.0 / counts[inverse] / len(counts)
    best, candidates = None, {}
    for e in sorted({0.0, *(float(x) for x in shares)}):
        p = probe_share(target, e, lp_bytes_share)
        if e >= target or p < 0.0:
            continue
        t = weighted_threshold(p_hp, weights, p)
        probe = p_hp >= t
        m = floor_for_share(lp_max, ~probe, weights, e)
        hp = probe | (lp_max < m)
        recall = float(hp[flip].mean()) if flip.any() else 0.0
        candidates[e] = recall
        if best is None or recall > best["flip_recall"] + 1e-12:
            best = {"share": e, "probe_share": float(p), "threshold": float(t), "lp_floor": float(m),
                    "flip_recall": recall, "hp_share": float(weights[hp].sum())}
    if best is None:
        raise ValueError(f"no escalation share below the target HP ratio {target}")
    return {**best, "candidates": {f"{e:g}": r for e, r in candidates.items()}}


def step_arrays(episodes) -> dict:
    """[n_steps] arrays of a validation play: ``p_hp`` (router_prob), ``lp_max`` (LP's max action
    probability, nan where LP did not run), ``flip`` (the tiers' greedy actions differed; False
    where one tier did not run), ``task`` (task index)."""
    steps = [(e.task_index, s) for e in episodes for s in e.steps]
    return {"p_hp": np.array([s.router_prob for _, s in steps], dtype=float),
            "lp_max": np.array([s.extra.get("lp_max_prob", np.nan) for _, s in steps], dtype=float),
            "flip": np.array([s.extra.get("tiers_agree") is False for _, s in steps], dtype=bool),
            "task": np.array([t for t, _ in steps], dtype=np.int64)}


def calibrate_escalation(cfg, calibration: dict, router_names, progress: bool = True,
                         lp_bytes_share: Optional[float] = None) -> dict:
    """Add ``<router>_escalate`` to ``calibration`` (and to calibration.json) for every router in
    ``router_names`` whose calibration play scored both tiers at every step: per target HP ratio
    (``eval.target_hp_ratios``; the share of the play's steps the router's calibrated threshold gives
    HP, since escalations are priced per step) the choice of :func:`choose_escalation` among
    ``eval.escalate_shares``, priced at the probe's bytes with ``lp_bytes_share`` (the tiers' LP
    bytes / HP bytes; None: a ValueError, escalations cannot be priced). A ValueError names a router
    whose play lacks LP's score somewhere."""
    from dmr_rl.atomic_io import write_atomic
    from dmr_rl.report import layout
    from dmr_rl.rollout.records import TrajectoryStore

    if lp_bytes_share is None:
        raise ValueError("eval.escalate_shares: escalated steps pay both tiers and are priced against the probe "
                         "alone, but LP does not read fewer weight bytes than HP here (see the tier clients)")
    shares = sorted(float(x) for x in cfg.eval.escalate_shares)
    targets = [float(r) for r in cfg.eval.target_hp_ratios]
    price = round(float(lp_bytes_share), 6)
    added = False
    for name in router_names:
        base = calibration[name]
        if not base.get("both_tiers"):
            raise ValueError(f"router {name!r}: its calibration play did not score both tiers; "
                             "calibrate with both_tiers=True before escalation")
        method = escalation_method(name)
        done = calibration.get(method, {})
        if (done.get("checkpoint") == base["checkpoint"] and done.get("shares") == shares
                and done.get("lp_bytes_share") == price
                and set(targets) <= {float(r) for r in done.get("choices", {})}):
            continue
        arrays = step_arrays(TrajectoryStore.read(layout.eval_dir(cfg.run_dir) / "_calib" / name))
        if np.isnan(arrays["lp_max"]).any():
            raise ValueError(f"router {name!r}: {int(np.isnan(arrays['lp_max']).sum())} steps of its calibration "
                             "play have no LP score (lp_max_prob); delete eval/calibration.json to play it again")
        # the router's threshold is calibrated in tier calls; escalations are priced per step, so each target
        # is the share of the play's steps the router's own threshold gives HP (the share 0 is the router alone)
        steps_share = {r: share_at(arrays["p_hp"], arrays["task"], float(base["thresholds"][f"{r:g}"]))
                       for r in targets}
        choices = {f"{r:g}": {**choose_escalation(arrays["p_hp"], arrays["lp_max"], arrays["flip"], arrays["task"],
                                                  steps_share[r], shares, price), "router_steps_share": steps_share[r]}
                   for r in targets}
        calibration[method] = {"checkpoint": base["checkpoint"], "split": base["split"], "shares": shares,
                               "lp_bytes_share": price,
                               "targets": targets, "choices": choices, "flips": int(arrays["flip"].sum()),
                               "n_steps": int(len(arrays["task"]))}
        added = True
        if progress:
            print(f"calibrated {method}: " + ", ".join(
                f"{r}: share {c['share']:g} (probe {c['probe_share']:.3f}), threshold {c['threshold']:.3f}, "
                f"LP floor {c['lp_floor']:.3f}, flip recall {c['flip_recall']:.3f}, HP share {c['hp_share']:.3f}"
                for r, c in choices.items()), flush=True)
    if added:  # calibrate() wrote the rest; an unchanged file is not written again
        write_atomic(layout.eval_dir(cfg.run_dir) / "calibration.json", json.dumps(calibration, indent=1))
    return calibration
