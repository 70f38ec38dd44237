"""Evaluation metrics: pure numpy, no Ray, no plotting.

* :func:`episode_metrics` turns one run's :class:`EpisodeRecord` list into its numbers (success
  rate, WebShop score, HP ratio, tokens per tier, modelled cost, latency per tier, length).
* :func:`mean_std` and :func:`bootstrap_ci` summarise over seeds / episodes.
* :func:`pareto_front`, :func:`apgr` and :func:`cpt` give RouteLLM's trade-off metrics.

RouteLLM's metrics, adapted to multi-step episodes
--------------------------------------------------
RouteLLM routes single queries: its x-axis is the share of *queries* sent to the strong model and
quality is per query. Here a router decides at every step of an episode, and quality is only known
at the end (success, or the WebShop score). So:

* x = the **HP ratio of steps**: HP-routed steps / all steps, pooled over every episode of an
  operating point (the realised share, not the threshold that produced it, since routing changes
  the trajectory and hence which steps exist). Alternatively x = **normalised cost**:
  (cost - cost_weak) / (cost_strong - cost_weak), cost = modelled weight bytes read per episode.
* quality q = episode success rate (or mean score) of the operating point.
* weak = the LP-only run (x = 0), strong = the HP-only run (x = 1). PGR(x) = (q(x) - q_weak) /
  (q_strong - q_weak).
* The router's curve is the **Pareto front** of its operating points (threshold sweep, and lambda
  for GRPO routers), closed by the weak and strong points and linearly interpolated. Taking the
  front (not the raw points) makes the curve monotone, so CPT has one answer; a dominated point
  would never be deployed.
* APGR = integral of PGR over x in [0, 1] (trapezoids on the interpolated curve); 1.0 means HP
  quality at every budget; uniform random routing scores about 0.5 if quality is linear in x.
* CPT(p%) = the smallest x at which the interpolated curve reaches q_weak + p/100 (q_strong -
  q_weak); None when it never does.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

HP, LP = 1, 0


# ---------------------------------------------------------------------------------------------
# Summaries
# ---------------------------------------------------------------------------------------------
def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0.0 for a single value). NaN for no values."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return float("nan"), float("nan")
    return float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else 0.0


def bootstrap_ci(values, n_boot: int = 2000, seed: int = 0, level: float = 0.95,
                 clusters: Optional[Sequence] = None) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of ``values`` [N].

    ``clusters`` [N] (e.g. the task of each episode; any hashable ids): resample whole clusters
    with replacement and take the mean over the episodes they hold. Episodes of one task are not
    independent (every seed replays it; a deterministic policy plays it the same way each time),
    so resampling episodes alone would count one task several times as independent evidence and
    give too narrow an interval. With one value per cluster this is the plain bootstrap.
    Deterministic for a ``seed``.
    """
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    if clusters is None:
        idx = rng.integers(0, x.size, size=(n_boot, x.size))
        means = x[idx].mean(axis=1)
    else:
        if len(clusters) != x.size:
            raise ValueError(f"clusters has {len(clusters)} entries, values {x.size}")
        try:  # cluster ids in sorted order, not the episodes' order: the CI is order-free
            keys = sorted(set(clusters))
        except TypeError:
            keys = sorted(set(clusters), key=repr)
        ids = {c: i for i, c in enumerate(keys)}
        inv = np.array([ids[c] for c in clusters], dtype=np.int64)
        sums = np.bincount(inv, weights=x, minlength=len(ids))
        counts = np.bincount(inv, minlength=len(ids)).astype(float)
        draw = rng.integers(0, len(ids), size=(n_boot, len(ids)))
        means = sums[draw].sum(axis=1) / counts[draw].sum(axis=1)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


# ---------------------------------------------------------------------------------------------
# One run
# ---------------------------------------------------------------------------------------------
def _step_tokens(step) -> int:
    return int(step.prompt_tokens) + int(step.gen_tokens)


def episode_metrics(episodes: list) -> dict:
    """Numbers of one run (one method, operating point and seed) from its EpisodeRecords.

    hp_ratio pools steps over episodes (HP steps / all steps); episode_hp_ratio averages the
    per-episode shares. cost_per_episode is modelled weight bytes read (StepRecord.weight_bytes,
    which the rollout charges for every forward, both tiers for cascade/oracle steps).
    latency_<tier>_s is the mean measured seconds of a step acted by that tier; tokens_<tier> the
    tokens of the steps acted by that tier (a cascade or KL-oracle step records the tokens and
    latency of both tiers' calls under the tier that acted).
    """
    n = len(episodes)
    if n == 0:
        raise ValueError("episode_metrics: no episodes")
    steps = [s for ep in episodes for s in ep.steps]
    tiers = np.array([s.tier for s in steps], dtype=int)
    n_steps = len(steps)
    out = {
        "episodes": n,
        "steps": n_steps,
        "success_rate": float(np.mean([bool(ep.won) for ep in episodes])),
        "mean_score": float(np.mean([float(ep.score) for ep in episodes])),
        "hp_ratio": float((tiers == HP).sum() / max(1, n_steps)),
        "episode_hp_ratio": float(np.mean([ep.hp_ratio for ep in episodes])),
        "mean_length": float(np.mean([ep.length for ep in episodes])),
        "cost_per_episode": float(sum(s.weight_bytes for s in steps) / n),
        "cost_per_step": float(sum(s.weight_bytes for s in steps) / max(1, n_steps)),
    }
    for tier, name in ((HP, "hp"), (LP, "lp")):
        chosen = [s for s in steps if s.tier == tier]
        out[f"tokens_{name}"] = int(sum(_step_tokens(s) for s in chosen))
        out[f"steps_{name}"] = len(chosen)
        out[f"latency_{name}_s"] = float(np.mean([s.latency_s for s in chosen])) if chosen else float("nan")
    out["tokens_per_episode"] = (out["tokens_hp"] + out["tokens_lp"]) / n
    return out


def per_episode_arrays(episodes: list) -> dict:
    """Per-episode vectors [N] for bootstrapping: won, score, hp_ratio, cost, length."""
    return {
        "won": np.array([float(bool(ep.won)) for ep in episodes]),
        "score": np.array([float(ep.score) for ep in episodes]),
        "hp_ratio": np.array([ep.hp_ratio for ep in episodes]),
        "cost": np.array([sum(s.weight_bytes for s in ep.steps) for ep in episodes], dtype=float),
        "length": np.array([ep.length for ep in episodes], dtype=float),
    }


SEED_METRICS = ("success_rate", "mean_score", "hp_ratio", "cost_per_episode", "mean_length",
                "tokens_per_episode", "latency_hp_s", "latency_lp_s")


def aggregate_seeds(episodes_by_seed: dict, n_boot: int = 2000, boot_seed: int = 0) -> dict:
    """Summary of one operating point over seeds: {seed: [EpisodeRecord]} -> dict.

    For each metric in SEED_METRICS: ``<m>_mean`` and ``<m>_std`` over the per-seed values.
    ``success_ci`` / ``score_ci`` / ``hp_ratio_ci``: 95% bootstrap CI of the pooled mean, tasks
    resampled (each with all its episodes over the seeds). Also the per-seed numbers under ``per_seed``.
    """
    if not episodes_by_seed:
        raise ValueError("aggregate_seeds: no seeds")
    per_seed = {int(s): episode_metrics(eps) for s, eps in sorted(episodes_by_seed.items())}
    out: dict = {"seeds": sorted(per_seed), "per_seed": {str(k): v for k, v in per_seed.items()}}
    for m in SEED_METRICS:
        vals = [v[m] for v in per_seed.values() if not math.isnan(v[m])]
        out[f"{m}_mean"], out[f"{m}_std"] = mean_std(vals)
    pooled = [ep for s in sorted(episodes_by_seed) for ep in episodes_by_seed[s]]
    tasks = [int(ep.task_index) for ep in pooled]
    arr = per_episode_arrays(pooled)
    out["episodes"], out["tasks"] = len(pooled), len(set(tasks))
    for key, name in (("won", "success_ci"), ("score", "score_ci"), ("hp_ratio", "hp_ratio_ci")):
        out[name] = list(bootstrap_ci(arr[key], n_boot, boot_seed, clusters=tasks))
    return out


# ---------------------------------------------------------------------------------------------
# Trade-off curves
# ---------------------------------------------------------------------------------------------
def pareto_front(xs: Sequence[float], qs: Sequence[float]) -> list[int]:
    """Indices of the non-dominated points (lower x is better, higher q is better), by x ascending.

    A point is kept when no other point has x <= its x and q >= its q with one strict.
    """
    order = sorted(range(len(xs)), key=lambda i: (xs[i], -qs[i]))
    keep, best = [], -math.inf
    for i in order:
        if qs[i] > best:
            keep.append(i)
            best = qs[i]
    return keep


def _curve(xs, qs, weak: float, strong: float) -> tuple[np.ndarray, np.ndarray]:
    """The router's Pareto curve closed by (0, weak) and (1, strong), as arrays sorted by x."""
    px = [0.0, *map(float, xs), 1.0]
    pq = [weak, *map(float, qs), strong]
    keep = pareto_front(px, pq)
    x = np.array([px[i] for i in keep])
    q = np.array([pq[i] for i in keep])
    if x[-1] < 1.0:  # the front stopped early (a point beat HP-only): flat to x = 1
        x, q = np.append(x, 1.0), np.append(q, q[-1])
    return x, q


def apgr(xs: Sequence[float], qs: Sequence[float], weak: float, strong: float) -> float:
    """Average performance gap recovered over x in [0, 1] (see the module docstring).

    ``xs``: the router's operating points on the x-axis (HP ratio of steps, or normalised cost);
    ``qs``: their quality; ``weak``/``strong``: LP-only and HP-only quality. NaN when
    strong <= weak (no gap to recover).
    """
    if not strong > weak:
        return float("nan")
    x, q = _curve(xs, qs, weak, strong)
    x_c = np.clip(x, 0.0, 1.0)
    pgr = (q - weak) / (strong - weak)
    # trapezoids over [0, 1]; segments beyond x = 1 have zero width after clipping
    return float(np.sum(np.diff(x_c) * (pgr[1:] + pgr[:-1]) / 2.0))


def cpt(xs: Sequence[float], qs: Sequence[float], weak: float, strong: float,
        percent: float) -> Optional[float]:
    """Smallest x where the interpolated Pareto curve reaches weak + percent/100 (strong - weak).

    None when the curve never reaches it (or there is no gap). ``percent`` in (0, 100].
    """
    if not strong > weak:
        return None
    target = weak + percent / 100.0 * (strong - weak)
    x, q = _curve(xs, qs, weak, strong)
    for i in range(len(x)):
        if q[i] >= target - 1e-12:
            if i == 0:
                return float(x[0])
            frac = (target - q[i - 1]) / (q[i] - q[i - 1])
            return float(x[i - 1] + frac * (x[i] - x[i - 1]))
    return None


def normalised_cost(cost: float, cost_weak: float, cost_strong: float) -> float:
    """(cost - weak) / (strong - weak): 0 at LP-only, 1 at HP-only; > 1 for methods paying both tiers."""
    span = cost_strong - cost_weak
    if span <= 0:
        return float("nan")
    return (cost - cost_weak) / span


def quality_at(xs: Sequence[float], qs: Sequence[float], x0: float) -> float:
    """Quality of the interpolated Pareto front of (xs, qs) at x0 (no closing points); NaN outside."""
    keep = pareto_front(list(xs), list(qs))
    x = np.array([xs[i] for i in keep], dtype=float)
    q = np.array([qs[i] for i in keep], dtype=float)
    if x.size == 0 or x0 < x[0] - 1e-12 or x0 > x[-1] + 1e-12:
        return float("nan")
    return float(np.interp(x0, x, q))
