"""Metrics on hand-computed cases: summaries, bootstrap CIs, Pareto front, APGR and CPT."""
from __future__ import annotations

import math

import numpy as np
import pytest

from dmr_rl.report import metrics as M
from dmr_rl.rollout.records import HP, LP, EpisodeRecord, StepRecord


def _ep(won, tiers, score=None, wb_hp=10.0, wb_lp=3.0, seed=0, task_type="t", task_index=0):
    steps = [StepRecord(step=i, obs="", action="a", tier=t, prompt_tokens=5, gen_tokens=1,
                        weight_bytes=wb_hp if t == HP else wb_lp, latency_s=0.2 if t == HP else 0.1)
             for i, t in enumerate(tiers)]
    return EpisodeRecord(episode_id="e", task_index=task_index, task_id="x", task_type=task_type, task="",
                         seed=seed, won=won, score=float(won) if score is None else score, steps=steps)


def test_mean_std_by_hand():
    m, s = M.mean_std([1.0, 2.0, 3.0, 6.0])
    assert m == 3.0
    # sample variance: (4 + 1 + 0 + 9) / 3 = 14/3
    assert s == pytest.approx(math.sqrt(14 / 3))
    assert M.mean_std([0.7]) == (0.7, 0.0)


def test_episode_metrics_by_hand():
    eps = [_ep(True, [HP, LP, LP, LP]), _ep(False, [HP, HP])]
    m = M.episode_metrics(eps)
    assert m["success_rate"] == 0.5
    assert m["hp_ratio"] == pytest.approx(3 / 6)  # pooled steps
    assert m["episode_hp_ratio"] == pytest.approx((0.25 + 1.0) / 2)
    assert m["mean_length"] == 3.0
    # weight bytes: ep1 10 + 3*3 = 19, ep2 20 -> 39 / 2 episodes
    assert m["cost_per_episode"] == pytest.approx(19.5)
    assert m["tokens_hp"] == 18 and m["tokens_lp"] == 18
    assert m["latency_hp_s"] == pytest.approx(0.2) and m["latency_lp_s"] == pytest.approx(0.1)
    with pytest.raises(ValueError):
        M.episode_metrics([])


def test_bootstrap_ci_covers_and_is_seeded():
    rng = np.random.default_rng(1)
    x = rng.binomial(1, 0.6, size=200).astype(float)
    lo, hi = M.bootstrap_ci(x, n_boot=2000, seed=3)
    assert lo < x.mean() < hi
    # width near the normal approximation 2 * 1.96 * sqrt(p(1-p)/n)
    se = math.sqrt(x.mean() * (1 - x.mean()) / x.size)
    assert (hi - lo) == pytest.approx(2 * 1.96 * se, rel=0.15)
    assert M.bootstrap_ci(x, 500, seed=3) == M.bootstrap_ci(x, 500, seed=3)
    # constant data: a zero-width interval at the value
    assert M.bootstrap_ci([1.0] * 10) == (1.0, 1.0)


def test_bootstrap_coverage_over_many_samples():
    """Nominal 95%: over 200 samples of n=60 from Bernoulli(0.5), coverage is near 0.95."""
    rng = np.random.default_rng(0)
    hits = 0
    for k in range(200):
        x = rng.binomial(1, 0.5, size=60)
        lo, hi = M.bootstrap_ci(x, n_boot=400, seed=k)
        hits += lo <= 0.5 <= hi
    assert 0.88 <= hits / 200 <= 0.99


def test_cluster_bootstrap_counts_a_replayed_task_once():
    rng = np.random.default_rng(2)
    x = rng.binomial(1, 0.7, size=40).astype(float)
    # one value per cluster: exactly the plain bootstrap (same draws)
    assert M.bootstrap_ci(x, 500, seed=4, clusters=list(range(40))) == M.bootstrap_ci(x, 500, seed=4)
    # three seeds replaying the same 40 tasks the same way: the interval of the 40 tasks, not
    # the narrower one that 120 independent episodes would give
    copies, tasks = np.tile(x, 3), list(range(40)) * 3
    clustered = M.bootstrap_ci(copies, 2000, seed=4, clusters=tasks)
    assert clustered == pytest.approx(M.bootstrap_ci(x, 2000, seed=4))
    naive = M.bootstrap_ci(copies, 2000, seed=4)
    assert (naive[1] - naive[0]) < 0.75 * (clustered[1] - clustered[0])
    # the interval does not depend on the order the episodes were read in
    order = rng.permutation(120)
    assert M.bootstrap_ci(copies[order], 2000, seed=4, clusters=[tasks[i] for i in order]) == clustered
    with pytest.raises(ValueError, match="clusters"):
        M.bootstrap_ci(x, 10, clusters=[0, 1])


def test_cluster_bootstrap_weights_clusters_by_their_episodes():
    # a task with 3 episodes all won, three tasks with 1 episode each all lost. A resample of 4
    # tasks drawing the big one k times has mean 3k / (3k + 4 - k): 0, .5, .75, .9, 1 for k = 0..4.
    # P(k = 0) = (3/4)^4 = .32 > .025, P(k >= 3) = .051 > .025 > P(k = 4) = .004: CI (0, .9)
    vals, tasks = [1.0, 1.0, 1.0, 0.0, 0.0, 0.0], ["a", "a", "a", "b", "c", "d"]
    assert M.bootstrap_ci(vals, 4000, seed=0, clusters=tasks) == (0.0, 0.9)
    assert M.bootstrap_ci([1.0, 1.0, 0.5], 100, clusters=["a", "a", "b"]) != (1.0, 1.0)


def test_aggregate_seeds():
    by_seed = {0: [_ep(True, [HP]), _ep(True, [LP])], 1: [_ep(False, [LP]), _ep(True, [HP])],
               2: [_ep(False, [LP]), _ep(False, [LP])]}
    a = M.aggregate_seeds(by_seed, n_boot=200)
    assert a["seeds"] == [0, 1, 2]
    assert a["success_rate_mean"] == pytest.approx(0.5)  # (1 + 0.5 + 0) / 3
    assert a["success_rate_std"] == pytest.approx(0.5)  # sample std of 1, .5, 0
    assert a["hp_ratio_mean"] == pytest.approx(1 / 3)
    lo, hi = a["success_ci"]
    assert lo <= 0.5 <= hi and a["episodes"] == 6 and a["tasks"] == 1
    # one task replayed by every seed is one cluster: nothing to resample
    assert (lo, hi) == (0.5, 0.5)
    distinct = {s: [_ep(e.won, [HP], task_index=2 * s + k) for k, e in enumerate(eps)] for s, eps in by_seed.items()}
    b = M.aggregate_seeds(distinct, n_boot=200)
    assert b["tasks"] == 6 and b["success_ci"][0] < 0.5 < b["success_ci"][1]


def test_pareto_front():
    xs = [0.5, 0.2, 0.3, 0.8, 0.3]
    qs = [0.7, 0.5, 0.4, 0.9, 0.6]
    # (0.3, 0.4) is dominated by (0.2, 0.5) and (0.3, 0.6); front by x: 0.2, 0.3(0.6), 0.5, 0.8
    assert M.pareto_front(xs, qs) == [1, 4, 0, 3]


# A hand-built curve: weak (LP-only) 0.4, strong (HP-only) 0.8; router points (0.2, 0.6),
# (0.5, 0.76), plus a dominated point (0.6, 0.7). PGR at x = 0, .2, .5, 1 is 0, .5, .9, 1.
# APGR = .2*(0+.5)/2 + .3*(.5+.9)/2 + .5*(.9+1)/2 = .05 + .21 + .475 = .735
# CPT(50%): PGR .5 first reached at x = .2.
# CPT(80%): between x=.2 (PGR .5) and x=.5 (PGR .9): .2 + (.8-.5)/(.9-.5) * .3 = .425
XS, QS = [0.2, 0.5, 0.6], [0.6, 0.76, 0.7]


def test_apgr_by_hand():
    assert M.apgr(XS, QS, weak=0.4, strong=0.8) == pytest.approx(0.735)
    # a random-like straight line from weak to strong recovers half the gap
    assert M.apgr([0.25, 0.5, 0.75], [0.5, 0.6, 0.7], 0.4, 0.8) == pytest.approx(0.5)
    assert math.isnan(M.apgr(XS, QS, weak=0.8, strong=0.8))


def test_cpt_by_hand():
    assert M.cpt(XS, QS, 0.4, 0.8, 50) == pytest.approx(0.2)
    assert M.cpt(XS, QS, 0.4, 0.8, 80) == pytest.approx(0.425)
    assert M.cpt(XS, QS, 0.4, 0.8, 100) == pytest.approx(1.0)
    # a point that beats HP-only early: 100% reached at x = .3 (PGR 1.0 there)
    assert M.cpt([0.3], [0.8], 0.4, 0.8, 100) == pytest.approx(0.3)
    assert M.cpt(XS, QS, 0.5, 0.5, 50) is None


def test_normalised_cost_and_quality_at():
    assert M.normalised_cost(6.5, 3.0, 10.0) == pytest.approx(0.5)
    assert M.quality_at([0.2, 0.5], [0.6, 0.76], 0.35) == pytest.approx(0.68)
    assert math.isnan(M.quality_at([0.2, 0.5], [0.6, 0.76], 0.9))
