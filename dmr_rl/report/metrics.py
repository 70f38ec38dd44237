"""Evaluation metrics: pure numpy, no Ray, no plotting.

One definition of every number, used by the report, the evaluation driver and the tests.

* **HP ratio.** Per step, the tier calls are the tiers listed in ``StepRecord.extra["paid"]``
  (``["hp"]``, ``["lp"]``, or ``["hp", "lp"]`` for a cascade step that paid both; ``tier`` where
  ``paid`` is absent, e.g. old records), plus ``extra["lp_part"]`` (a router's LP pass that
  stopped at an inner layer: that share of an LP call). A task's HP ratio = HP calls / all calls over that task's
  episodes; a method's HP ratio = the mean over tasks (a task weighs the same whatever its
  episode count). Its CI: the task-resampling bootstrap of that same statistic.
* **Success / score** of a method: per task, the mean over its episodes (draws and seeds); the
  method's value = the mean over tasks; CI = the task-resampling bootstrap of that statistic
  (nothing clipped: a percentile interval of a mean of per-task values holds the estimate).
* **Paired comparison** (:func:`paired_comparison`) of two operating points: pairs by task, or
  by (seed, task) when both ran several seeds; draws of one method on one pair are averaged
  first; ``diff_mean`` = mean over pairs of (A - B); 95% CI = bootstrap resampling tasks
  (clusters) of the pair differences; ``mcnemar_p`` = exact two-sided sign test on the non-zero
  pair differences, which for binary outcomes is the exact McNemar test on the discordant pairs;
  ``diff_mde`` = what the pairing could have detected (:mod:`dmr_rl.report.power`).
* **APGR / CPT**: :mod:`dmr_rl.report.tradeoff`.

Bootstraps are vectorised: :func:`resample_weights` draws, once, how often each task appears in
each resample ([B, T] counts); every statistic is then a weighted mean, so the CIs of the
operating points, of a paired difference and of APGR use the same resamples.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from dmr_rl.report.power import minimum_detectable_difference

HP, LP = 1, 0
LEVEL = 0.95


# ---------------------------------------------------------------------------------------------
# Summaries and bootstrap
# ---------------------------------------------------------------------------------------------
def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0.0 for a single value). NaN for no values."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return float("nan"), float("nan")
    return float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else 0.0


def resample_weights(n_clusters: int, n_boot: int, seed: int = 0) -> np.ndarray:
    """[n_boot, n_clusters] float counts: how often each cluster (task) is drawn in each
    resample of ``n_clusters`` draws with replacement. Deterministic for a ``seed``."""
    rng = np.random.default_rng(seed)
    draw = rng.integers(0, n_clusters, size=(n_boot, n_clusters))
    w = np.zeros((n_boot, n_clusters))
    np.add.at(w, (np.arange(n_boot)[:, None], draw), 1.0)
    return w


def interval(samples: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """Percentile interval [lo, hi] holding ``level`` of the bootstrap ``samples``."""
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(samples, [alpha, 1.0 - alpha], axis=0)
    return float(lo), float(hi)


def _cluster_index(clusters) -> tuple[list, np.ndarray]:
    """(sorted distinct ids, [N] index of each entry's id): cluster order never depends on the
    order the entries were read in."""
    try:
        keys = sorted(set(clusters))
    except TypeError:
        keys = sorted(set(clusters), key=repr)
    ids = {c: i for i, c in enumerate(keys)}
    return keys, np.array([ids[c] for c in clusters], dtype=np.int64)


def bootstrap_ci(values, n_boot: int = 2000, seed: int = 0, level: float = LEVEL,
                 clusters: Optional[Sequence] = None) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of ``values`` [N].

    ``clusters`` [N] (e.g. the task of each value; any hashable ids): resample whole clusters
    with replacement and take the mean over the values they hold (the statistic is the mean over
    values, so a cluster weighs by its size). With one value per cluster this is the plain
    bootstrap. Deterministic for a ``seed``.
    """
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return float("nan"), float("nan")
    if clusters is None:
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, x.size, size=(n_boot, x.size))
        return interval(x[idx].mean(axis=1), level)
    if len(clusters) != x.size:
        raise ValueError(f"clusters has {len(clusters)} entries, values {x.size}")
    keys, inv = _cluster_index(clusters)
    sums = np.bincount(inv, weights=x, minlength=len(keys))
    counts = np.bincount(inv, minlength=len(keys)).astype(float)
    w = resample_weights(len(keys), n_boot, seed)
    return interval((w @ sums) / (w @ counts), level)


def mean_with_ci(per_task, n_boot: int = 2000, seed: int = 0, weights: Optional[np.ndarray] = None,
                 level: float = LEVEL) -> tuple[float, list]:
    """(mean over tasks, [lo, hi]) of per-task values [T]: the estimate and its task-resampling
    bootstrap CI are the same statistic. ``weights``: [B, T] resample counts to reuse."""
    v = np.asarray(per_task, dtype=float)
    if v.size == 0:
        return float("nan"), [float("nan"), float("nan")]
    w = resample_weights(v.size, n_boot, seed) if weights is None else weights
    return float(v.mean()), list(interval(w @ v / v.size, level))


# ---------------------------------------------------------------------------------------------
# Tier calls and per-task tables
# ---------------------------------------------------------------------------------------------
def step_calls(step) -> tuple[int, float]:
    """(HP calls, all tier calls) of one StepRecord: the tiers in ``extra["paid"]``, else ``tier``,
    plus ``extra["lp_part"]``, the share of an LP call a router's partial LP pass paid (an
    ``lp_hidden`` router reading an inner LP layer on a step LP did not act on)."""
    extra = (step.extra or {}) if hasattr(step, "extra") else {}
    paid = extra.get("paid")
    part = float(extra.get("lp_part", 0.0))
    if paid:
        return sum(1 for t in paid if t == "hp"), len(paid) + part
    return int(step.tier == HP), 1 + part


def episode_calls(ep) -> tuple[int, float]:
    """(HP calls, all tier calls) summed over an episode's steps."""
    hp = n = 0
    for s in ep.steps:
        h, c = step_calls(s)
        hp, n = hp + h, n + c
    return hp, n


def point_table(by_seed: dict) -> dict:
    """Per-episode columns of one operating point from {seed: [EpisodeRecord]}: ``seed``,
    ``task`` (task_index), ``won`` (0/1), ``score``, ``hp_calls``, ``calls``, ``hp_acts`` (steps
    whose action came from HP), ``steps``; each [N]."""
    rows = [(int(s), int(e.task_index), float(bool(e.won)), float(e.score), *episode_calls(e),
             sum(st.tier == HP for st in e.steps), len(e.steps))
            for s in sorted(by_seed) for e in by_seed[s]]
    cols = ("seed", "task", "won", "score", "hp_calls", "calls", "hp_acts", "steps")
    if not rows:
        return {c: np.zeros(0) for c in cols}
    arr = list(zip(*rows))
    return {c: np.asarray(a, dtype=np.int64 if c in ("seed", "task") else float) for c, a in zip(cols, arr)}


def per_task(table: dict) -> dict:
    """{"tasks": [T] sorted task ids, "won", "score": [T] means over each task's episodes,
    "hp_ratio": [T] HP calls / all calls over each task's episodes, "hp_acted": [T] steps acted by
    HP / steps (an oracle or cascade pays both tiers on steps one of them acts: its HP ratio counts
    the calls, this the actions)}."""
    tasks, inv = np.unique(table["task"], return_inverse=True)
    n = np.bincount(inv, minlength=len(tasks)).astype(float)
    out = {"tasks": tasks}
    for k in ("won", "score"):
        out[k] = np.bincount(inv, weights=table[k], minlength=len(tasks)) / np.maximum(n, 1)

    def share(num: str, den: str) -> np.ndarray:  # per task: sum of num / sum of den (0 without any)
        a = np.bincount(inv, weights=table[num], minlength=len(tasks))
        b = np.bincount(inv, weights=table[den], minlength=len(tasks))
        return np.where(b > 0, a / np.maximum(b, 1), 0.0)

    out["hp_ratio"], out["hp_acted"] = share("hp_calls", "calls"), share("hp_acts", "steps")
    return out


def point_stats(table: dict, n_boot: int = 2000, seed: int = 0) -> dict:
    """A point's headline numbers, each a mean over tasks with its task-bootstrap CI:
    ``success``, ``success_ci``, ``score``, ``score_ci``, ``hp_ratio``, ``hp_ratio_ci``,
    ``hp_acted``, ``hp_acted_ci``, ``tasks``."""
    t = per_task(table)
    w = resample_weights(len(t["tasks"]), n_boot, seed) if len(t["tasks"]) else None
    out: dict = {"tasks": int(len(t["tasks"]))}
    for key, name in (("won", "success"), ("score", "score"), ("hp_ratio", "hp_ratio"), ("hp_acted", "hp_acted")):
        out[name], out[f"{name}_ci"] = mean_with_ci(t[key], n_boot, seed, weights=w)
    return out


def realised_hp_ratio(episodes: list) -> float:
    """A method's HP ratio from its episodes: mean over tasks of HP calls / all calls."""
    t = per_task(point_table({0: list(episodes)}))
    return float(t["hp_ratio"].mean()) if len(t["tasks"]) else float("nan")


def cost_equivalent_hp_ratio(episodes: list, lp_bytes_share: float) -> float:
    """The HP ratio at which a router paying one tier per step reads the same weight bytes per step
    as ``episodes`` do, with ``lp_bytes_share`` = LP's weight bytes / HP's (in [0, 1)).

    Per task, with h HP calls, l LP calls and n steps over its episodes: (h + s (l - n)) / (n (1 - s)),
    s = lp_bytes_share; the mean over tasks. A router paying one tier per step (l = n - h) gets its
    own HP ratio back; a cascade (LP at every step, HP on top: l = n) gets h / (n (1 - s)), more
    than its HP ratio h / (h + n) says."""
    s = float(lp_bytes_share)
    if not 0.0 <= s < 1.0:
        raise ValueError(f"lp_bytes_share must be in [0, 1) (LP reads fewer weight bytes than HP), got {s}")
    t = point_table({0: list(episodes)})
    tasks, inv = np.unique(t["task"], return_inverse=True)
    if not len(tasks):
        return float("nan")
    h, c, n = (np.bincount(inv, weights=t[k], minlength=len(tasks)) for k in ("hp_calls", "calls", "steps"))
    q = np.where(n > 0, (h + s * (c - h - n)) / np.maximum(n, 1) / (1.0 - s), 0.0)
    return float(q.mean())


def episode_cost(episodes: list) -> float:
    """Modelled weight bytes read per episode (StepRecord.weight_bytes summed over an episode): per
    task the mean over its episodes, then the mean over tasks; nan without episodes."""
    if not episodes:
        return float("nan")
    tasks, inv = np.unique([int(e.task_index) for e in episodes], return_inverse=True)
    cost = per_episode_arrays(episodes)["cost"]
    per_task = np.bincount(inv, weights=cost, minlength=len(tasks)) / np.bincount(inv, minlength=len(tasks))
    return float(per_task.mean())


# ---------------------------------------------------------------------------------------------
# Paired comparison
# ---------------------------------------------------------------------------------------------
def sign_test_p(diffs) -> float:
    """Exact two-sided sign test on the non-zero entries of ``diffs`` [N]: with n+ positive and
    n- negative, p = min(1, 2 * P(Bin(n+ + n-, 1/2) <= min(n+, n-))). For 0/1 outcomes the
    non-zero differences are McNemar's discordant pairs and this is the exact McNemar test.
    1.0 when there is no non-zero difference."""
    d = np.asarray(diffs, dtype=float)
    pos, neg = int((d > 1e-12).sum()), int((d < -1e-12).sum())
    n = pos + neg
    if n == 0:
        return 1.0
    k = min(pos, neg)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / (1 << n)  # exact integers: no overflow for large n
    return float(min(1.0, 2.0 * tail))


def _pair_ids(table: dict, by_seed: bool) -> np.ndarray:
    """[N] int64 pair key of each episode: the task, or (seed, task) packed into one integer."""
    task = table["task"].astype(np.int64)
    return (table["seed"].astype(np.int64) << 32) + task if by_seed else task


def _pair_means(ids: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct pair keys [K], mean of ``values`` over each key's episodes [K])."""
    keys, inv = np.unique(ids, return_inverse=True)
    n = np.bincount(inv, minlength=len(keys))
    return keys, np.bincount(inv, weights=values, minlength=len(keys)) / n


def paired_comparison(a: dict, b: dict, n_boot: int = 2000, seed: int = 0, level: float = LEVEL) -> dict:
    """Point A vs point B, both given as :func:`point_table` columns.

    Pairs by (seed, task) when both ran several seeds (over the seeds both ran), else by task;
    each side's draws on a pair are averaged first. Returns ``paired_by`` ("seed,task" or
    "task"), ``n_pairs``, ``n_tasks``, and for success: ``success`` / ``vs_success`` (means over
    pairs of A and B), ``diff_mean`` (mean over pairs of A - B), ``diff_ci`` ([lo, hi], bootstrap
    resampling tasks, each with all its pairs, of that mean), ``mcnemar_p`` (:func:`sign_test_p`
    on the pair differences), ``diff_mde`` (the smallest success difference this pairing detects
    with 80% power at the 5% level, :func:`dmr_rl.report.power.minimum_detectable_difference`);
    for the score the same as ``score``, ``vs_score``,
    ``score_diff_mean``, ``score_diff_ci``, ``score_sign_p``. Pairs present in only one point
    are left out (the report refuses differing task sets before it gets here).
    """
    sa, sb = set(a["seed"].tolist()), set(b["seed"].tolist())
    both = len(sa) > 1 and len(sb) > 1 and len(sa & sb) > 1
    out: dict = {"paired_by": "seed,task" if both else "task"}
    ia, ib = _pair_ids(a, both), _pair_ids(b, both)
    ma, mb = np.ones(len(ia), bool), np.ones(len(ib), bool)
    if both:
        common = sorted(sa & sb)
        ma, mb = np.isin(a["seed"], common), np.isin(b["seed"], common)
    for key, name, prefix, p_name in (("won", "success", "", "mcnemar_p"),
                                      ("score", "score", "score_", "score_sign_p")):
        ka, va = _pair_means(ia[ma], a[key][ma])
        kb, vb = _pair_means(ib[mb], b[key][mb])
        keys, xa, xb = np.intersect1d(ka, kb, assume_unique=True, return_indices=True)
        d = va[xa] - vb[xb]
        tasks = keys & 0xFFFFFFFF if both else keys
        out["n_pairs"], out["n_tasks"] = int(len(keys)), int(len(np.unique(tasks)))
        if not len(keys):
            out.update({name: float("nan"), f"vs_{name}": float("nan"), f"{prefix}diff_mean": float("nan"),
                        f"{prefix}diff_ci": [float("nan"), float("nan")], p_name: float("nan")})
            if name == "success":
                out["diff_mde"] = float("nan")
            continue
        out[name], out[f"vs_{name}"] = float(va[xa].mean()), float(vb[xb].mean())
        out[f"{prefix}diff_mean"] = float(d.mean())
        out[f"{prefix}diff_ci"] = list(bootstrap_ci(d, n_boot, seed, level, clusters=tasks.tolist()))
        out[p_name] = sign_test_p(d)
        if name == "success":
            out["diff_mde"] = minimum_detectable_difference(d, tasks)
    return out


def share_of(a: dict, ref: dict, n_boot: int = 2000, seed: int = 0, level: float = LEVEL) -> dict:
    """How much of ``ref``'s success point A keeps (e.g. a router's share of HP-only's), both given as
    :func:`point_table` columns, over the tasks both played: ``share`` = mean over tasks of A's
    success / the same mean of ref's (each task's episodes averaged first), ``share_ci`` its
    task-resampling percentile bootstrap CI (the ratio recomputed on each resample; resamples where
    ref wins nothing are dropped), ``n_tasks``. NaN when ref wins no task."""
    ta, tr = per_task(a), per_task(ref)
    tasks, xa, xr = np.intersect1d(ta["tasks"], tr["tasks"], assume_unique=True, return_indices=True)
    va, vr = ta["won"][xa], tr["won"][xr]
    out = {"n_tasks": int(len(tasks)), "share": float("nan"), "share_ci": [float("nan"), float("nan")]}
    if not len(tasks) or vr.sum() <= 0:
        return out
    w = resample_weights(len(tasks), n_boot, seed)
    den = w @ vr
    ok = den > 0
    out["share"] = float(va.sum() / vr.sum())
    out["share_ci"] = list(interval((w @ va)[ok] / den[ok], level))
    return out


def normalised_cost(cost: float, cost_weak: float, cost_strong: float) -> float:
    """(cost - weak) / (strong - weak): 0 at LP-only, 1 at HP-only; > 1 for methods paying both tiers."""
    span = cost_strong - cost_weak
    if span <= 0:
        return float("nan")
    return (cost - cost_weak) / span


# ---------------------------------------------------------------------------------------------
# One run's cost detail (per seed)
# ---------------------------------------------------------------------------------------------
def _step_tokens(step) -> int:
    return int(step.prompt_tokens) + int(step.gen_tokens)


def episode_metrics(episodes: list) -> dict:
    """Numbers of one run (one method, operating point and seed) from its EpisodeRecords.

    hp_ratio: the HP-ratio definition above (mean over tasks of HP calls / all calls);
    cost_per_episode is modelled weight bytes read (StepRecord.weight_bytes, which the rollout
    charges for every forward, both tiers for cascade/oracle steps). latency_<tier>_s is the mean
    measured seconds of a step acted by that tier; tokens_<tier> the tokens of the steps acted by
    that tier (a cascade or KL-oracle step records the tokens and latency of both tiers' calls
    under the tier that acted).
    """
    n = len(episodes)
    if n == 0:
        raise ValueError("episode_metrics: no episodes")
    steps = [s for ep in episodes for s in ep.steps]
    n_steps = len(steps)
    out = {
        "episodes": n,
        "steps": n_steps,
        "success_rate": float(np.mean([bool(ep.won) for ep in episodes])),
        "mean_score": float(np.mean([float(ep.score) for ep in episodes])),
        "hp_ratio": realised_hp_ratio(episodes),
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
    """Per-episode vectors [N]: won, score, hp_ratio (HP calls / calls), cost, length."""
    calls = [episode_calls(ep) for ep in episodes]
    return {
        "won": np.array([float(bool(ep.won)) for ep in episodes]),
        "score": np.array([float(ep.score) for ep in episodes]),
        "hp_ratio": np.array([h / n if n else 0.0 for h, n in calls]),
        "cost": np.array([sum(s.weight_bytes for s in ep.steps) for ep in episodes], dtype=float),
        "length": np.array([ep.length for ep in episodes], dtype=float),
    }


SEED_METRICS = ("success_rate", "mean_score", "hp_ratio", "cost_per_episode", "mean_length",
                "tokens_per_episode", "latency_hp_s", "latency_lp_s")


def aggregate_seeds(episodes_by_seed: dict, n_boot: int = 2000, boot_seed: int = 0) -> dict:
    """Summary of one operating point over seeds: {seed: [EpisodeRecord]} -> dict.

    Headline (``success``, ``score``, ``hp_ratio`` and their ``_ci``): :func:`point_stats`, a
    mean over tasks with its task-bootstrap CI. For each metric in SEED_METRICS, ``<m>_mean`` and
    ``<m>_std`` over the per-seed values (cost and latency detail), and ``per_seed``.
    """
    if not episodes_by_seed:
        raise ValueError("aggregate_seeds: no seeds")
    per_seed = {int(s): episode_metrics(eps) for s, eps in sorted(episodes_by_seed.items())}
    out: dict = {"seeds": sorted(per_seed), "per_seed": {str(k): v for k, v in per_seed.items()}}
    for m in SEED_METRICS:
        vals = [v[m] for v in per_seed.values() if not math.isnan(v[m])]
        out[f"{m}_mean"], out[f"{m}_std"] = mean_std(vals)
    table = point_table(episodes_by_seed)
    out["episodes"] = int(len(table["task"]))
    out.update(point_stats(table, n_boot, boot_seed))
    return out
