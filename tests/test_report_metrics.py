"""Metrics on hand-computed cases: summaries, bootstrap CIs, Pareto front, APGR and CPT."""
from __future__ import annotations

import math

import numpy as np
import pytest

from dmr_rl.report import metrics as M
from dmr_rl.report import tradeoff
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
    eps = [_ep(True, [HP, LP, LP, LP], task_index=0), _ep(False, [HP, HP], task_index=1)]
    m = M.episode_metrics(eps)
    assert m["success_rate"] == 0.5
    assert m["hp_ratio"] == pytest.approx((1 / 4 + 2 / 2) / 2)  # mean over tasks of per-task shares
    assert m["mean_length"] == 3.0
    # weight bytes: ep1 10 + 3*3 = 19, ep2 20 -> 39 / 2 episodes
    assert m["cost_per_episode"] == pytest.approx(19.5)
    assert m["tokens_hp"] == 18 and m["tokens_lp"] == 18
    assert m["latency_hp_s"] == pytest.approx(0.2) and m["latency_lp_s"] == pytest.approx(0.1)
    with pytest.raises(ValueError):
        M.episode_metrics([])


def test_hp_ratio_counts_the_tiers_a_step_paid():
    cascade = _ep(True, [HP, LP, LP], task_index=0)
    for st, paid in zip(cascade.steps, (["hp", "lp"], ["lp"], ["lp"])):
        st.extra["paid"] = paid
    assert M.episode_calls(cascade) == (1, 4)  # the escalated step paid both tiers
    old = _ep(True, [HP, LP], task_index=1)  # no "paid": the acting tier
    assert M.episode_calls(old) == (1, 2)
    # task 0 has two episodes (1 + 0 HP calls of 4 + 1), task 1 one: each task weighs the same
    t = M.per_task(M.point_table({0: [cascade, _ep(False, [LP], task_index=0)], 1: [old]}))
    assert t["tasks"].tolist() == [0, 1]
    assert t["hp_ratio"].tolist() == pytest.approx([1 / 5, 1 / 2])
    # acted by HP counts actions, not calls: task 0's HP acted 1 of its 4 steps (the escalated step)
    assert t["hp_acted"].tolist() == pytest.approx([1 / 4, 1 / 2])
    st = M.point_stats(M.point_table({0: [cascade, old]}), n_boot=50)
    assert st["hp_acted"] == pytest.approx((1 / 3 + 1 / 2) / 2) and st["hp_ratio"] == pytest.approx((1 / 4 + 1 / 2) / 2)
    assert t["won"].tolist() == pytest.approx([0.5, 1.0])
    assert M.realised_hp_ratio([cascade, _ep(False, [LP], task_index=0), old]) == pytest.approx((0.2 + 0.5) / 2)


def test_cost_equivalent_hp_ratio_prices_both_tiers():
    """A cascade step pays LP and HP: the one-tier HP ratio that reads as many weight bytes per step
    is higher than its call share; a one-tier router gets its own HP ratio back."""
    cascade = _ep(True, [HP, LP, LP, LP], task_index=0)
    for st, paid in zip(cascade.steps, (["hp", "lp"], ["lp"], ["lp"], ["lp"])):
        st.extra["paid"] = paid
    one_tier = _ep(True, [HP, HP, LP], task_index=1)
    s = 0.3  # LP reads 30% of HP's weight bytes
    # bytes per step: cascade (1 + 4 * 0.3) / 4 = 0.55 HP calls' worth = q + (1 - q) * 0.3 -> q = 0.25 / 0.7
    assert M.cost_equivalent_hp_ratio([cascade], s) == pytest.approx(0.25 / 0.7)
    assert M.realised_hp_ratio([cascade]) == pytest.approx(1 / 5)  # its call share says less
    assert M.cost_equivalent_hp_ratio([one_tier], s) == pytest.approx(2 / 3) == M.realised_hp_ratio([one_tier])
    assert M.cost_equivalent_hp_ratio([cascade, one_tier], 0.0) == pytest.approx((1 / 4 + 2 / 3) / 2)  # per task
    assert math.isnan(M.cost_equivalent_hp_ratio([], s))
    with pytest.raises(ValueError, match="lp_bytes_share"):
        M.cost_equivalent_hp_ratio([cascade], 1.0)


def test_point_estimates_lie_in_their_own_cis():
    """A point and its CI are one statistic: over many skewed random points the CI holds it."""
    rng = np.random.default_rng(5)
    for k in range(60):
        n_tasks = int(rng.integers(3, 30))
        by_seed = {s: [_ep(bool(rng.random() < 0.15), list(rng.random(int(rng.integers(1, 9))) < rng.random()),
                           task_index=t) for t in range(n_tasks) for _ in range(int(rng.integers(1, 3)))]
                   for s in range(int(rng.integers(1, 4)))}
        st = M.point_stats(M.point_table(by_seed), n_boot=300, seed=k)
        for name in ("success", "score", "hp_ratio"):
            lo, hi = st[f"{name}_ci"]
            assert lo - 1e-12 <= st[name] <= hi + 1e-12, (k, name, st)


def test_sign_test_and_paired_comparison_by_hand():
    # 10 pairs favour A, 2 favour B: p = 2 * P(Bin(12, .5) <= 2) = 2 * 79 / 4096
    assert M.sign_test_p([1] * 10 + [-1] * 2 + [0] * 5) == pytest.approx(2 * 79 / 4096)
    assert M.sign_test_p([0.0, 0.0]) == 1.0 and M.sign_test_p([1, -1]) == 1.0
    # thousands of pairs (134 tasks x 3 seeds x K draws): exact integers, no float overflow
    assert 0.05 < M.sign_test_p([1] * 1500 + [-1] * 1400) < 0.08

    def table(seeds, tasks, won):
        n = len(won)
        return {"seed": np.array(seeds), "task": np.array(tasks), "won": np.array(won, float),
                "score": np.array(won, float), "hp_calls": np.zeros(n), "calls": np.ones(n)}
    # A played once (seed 0); B under 2 seeds: paired by task, B's episodes averaged per task
    a = table([0, 0, 0, 0], [0, 1, 2, 3], [1, 1, 0, 1])
    b = table([0, 0, 0, 0, 1, 1, 1, 1], [0, 1, 2, 3] * 2, [0, 1, 0, 0, 1, 1, 0, 0])
    c = M.paired_comparison(a, b, n_boot=500)
    assert c["paired_by"] == "task" and c["n_pairs"] == 4 and c["n_tasks"] == 4
    # per-task differences: 1 - .5, 1 - 1, 0 - 0, 1 - 0 -> mean .375
    assert c["diff_mean"] == pytest.approx(0.375)
    assert c["success"] - c["vs_success"] == pytest.approx(c["diff_mean"])
    assert c["diff_ci"][0] <= c["diff_mean"] <= c["diff_ci"][1]
    assert c["mcnemar_p"] == pytest.approx(0.5)  # 2 positive, 0 negative: 2 * 1/4
    # both under two seeds: paired by (seed, task)
    a2 = table([0, 0, 1, 1], [0, 1, 0, 1], [1, 1, 1, 0])
    b2 = table([0, 0, 1, 1], [0, 1, 0, 1], [0, 1, 0, 0])
    c2 = M.paired_comparison(a2, b2, n_boot=200)
    assert c2["paired_by"] == "seed,task" and c2["n_pairs"] == 4 and c2["n_tasks"] == 2
    assert c2["diff_mean"] == pytest.approx(0.5)


def test_share_of_reference_by_hand():
    def table(tasks, won):
        n = len(won)
        return {"seed": np.zeros(n, np.int64), "task": np.array(tasks), "won": np.array(won, float),
                "score": np.array(won, float), "hp_calls": np.zeros(n), "calls": np.ones(n),
                "hp_acts": np.zeros(n), "steps": np.ones(n)}
    # the reference wins 4 of 5 tasks, A 3 of them plus the one the reference lost: 4 / 4
    ref = table([0, 1, 2, 3, 4], [1, 1, 1, 1, 0])
    a = table([0, 1, 2, 3, 4], [1, 1, 0, 1, 1])
    k = M.share_of(a, ref, n_boot=1000)
    assert k["n_tasks"] == 5 and k["share"] == pytest.approx(1.0)
    assert k["share_ci"][0] <= k["share"] <= k["share_ci"][1] and k["share_ci"][0] < 1.0
    # A's episodes on a task are averaged first (two draws on task 0: 0.5); tasks only one side played are left out
    a2 = table([0, 0, 1, 2, 9], [1, 0, 1, 0, 1])
    k2 = M.share_of(a2, ref, n_boot=500)
    assert k2["n_tasks"] == 3 and k2["share"] == pytest.approx(1.5 / 3)
    assert k2["share_ci"][0] <= k2["share"] <= k2["share_ci"][1]
    # a reference that wins nothing has no share to keep
    nothing = M.share_of(a, table([0, 1, 2, 3, 4], [0] * 5), n_boot=100)
    assert np.isnan(nothing["share"]) and all(np.isnan(nothing["share_ci"]))


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
    assert a["success"] == pytest.approx(0.5) and a["hp_ratio"] == pytest.approx(2 / 6)
    lo, hi = a["success_ci"]
    assert a["episodes"] == 6 and a["tasks"] == 1
    # one task replayed by every seed is one cluster: nothing to resample
    assert (lo, hi) == (0.5, 0.5)
    distinct = {s: [_ep(e.won, [HP], task_index=2 * s + k) for k, e in enumerate(eps)] for s, eps in by_seed.items()}
    b = M.aggregate_seeds(distinct, n_boot=200)
    assert b["tasks"] == 6 and b["success_ci"][0] < 0.5 < b["success_ci"][1]


# RouteLLM's APGR over measured points: LP-only (0, .4), router (.2, .6), (.5, .76), (.6, .7),
# HP-only (1, .8). Trapezoids: .2*(.4+.6)/2 + .3*(.6+.76)/2 + .1*(.76+.7)/2 + .4*(.7+.8)/2
# = .1 + .204 + .073 + .3 = .677; AUC_weak = .4, AUC_strong = .8 -> APGR = (.677 - .4) / .4 = .6925.
# CPT(50%): target .6, first reached at x = .2; CPT(80%): target .72, first at x = .5.
XS, QS = [0.0, 0.2, 0.5, 0.6, 1.0], [0.4, 0.6, 0.76, 0.7, 0.8]


def test_apgr_and_cpt_by_hand():
    a, c = tradeoff.apgr_cpt(XS, QS, 0.4, 0.8)
    assert float(a) == pytest.approx(0.6925)
    assert float(c[50]) == pytest.approx(0.2) and float(c[80]) == pytest.approx(0.5)
    # the point order does not matter; a dip below the line is kept (no envelope)
    perm = [3, 0, 4, 2, 1]
    a2, _ = tradeoff.apgr_cpt([XS[i] for i in perm], [QS[i] for i in perm], 0.4, 0.8)
    assert float(a2) == pytest.approx(0.6925)
    # a router at exactly LP quality at 3% HP recovers nothing there: APGR below 0.5, CPTs at HP-only
    a3, c3 = tradeoff.apgr_cpt([0.0, 0.03, 1.0], [0.4, 0.4, 0.8], 0.4, 0.8)
    assert float(a3) == pytest.approx((0.03 * 0.4 + 0.97 * 0.6 - 0.4) / 0.4)
    assert float(c3[50]) == 1.0 and float(c3[80]) == 1.0
    # random-like straight line: .5; no gap: NaN; a curve that never reaches 80%: NaN
    assert float(tradeoff.apgr_cpt([0, 0.5, 1], [0.4, 0.6, 0.8], 0.4, 0.8)[0]) == pytest.approx(0.5)
    assert np.isnan(tradeoff.apgr_cpt(XS, QS, 0.8, 0.8)[0])
    assert np.isnan(tradeoff.apgr_cpt([0, 0.5, 1], [0.4, 0.5, 0.7], 0.4, 0.8)[1][80])
    # vectorised over a leading axis
    ab, cb = tradeoff.apgr_cpt(np.array([XS, XS]), np.array([QS, QS]), np.array([0.4, 0.4]), np.array([0.8, 0.8]))
    assert ab.tolist() == pytest.approx([0.6925] * 2) and cb[50].tolist() == pytest.approx([0.2, 0.2])


def _pt(x, q):
    x, q = np.asarray(x, float), np.asarray(q, float)
    return {"tasks": np.arange(len(x)), "hp_ratio": x, "won": q, "score": q}


def test_routellm_tradeoff_with_cis_and_withholding():
    rng = np.random.default_rng(0)
    T = 40
    weak = _pt(np.zeros(T), (rng.random(T) < 0.3).astype(float))
    strong = _pt(np.ones(T), np.maximum(weak["won"], rng.random(T) < 0.8))
    router = [_pt(np.full(T, x), np.where(rng.random(T) < x, strong["won"], weak["won"])) for x in (0.2, 0.5)]
    t = tradeoff.routellm_tradeoff(router, weak, strong, n_boot=400)
    xs = [0.0, 0.2, 0.5, 1.0]
    qs = [p["won"].mean() for p in (weak, *router, strong)]
    a, c = tradeoff.apgr_cpt(xs, qs, qs[0], qs[-1])
    assert t["withheld"] is None and t["apgr"] == pytest.approx(float(a))
    assert t["apgr_ci"][0] <= t["apgr"] <= t["apgr_ci"][1]
    assert t["gap"] == pytest.approx(qs[-1] - qs[0]) and t["gap_ci"][0] > 0
    # no HP-LP gap: withheld with a reason, metrics None
    same = _pt(np.ones(T), weak["won"])
    w = tradeoff.routellm_tradeoff(router, weak, same, n_boot=200)
    assert w["apgr"] is None and w["cpt50"] is None and "includes 0" in w["withheld"]
    with pytest.raises(ValueError, match="different tasks"):
        tradeoff.routellm_tradeoff([_pt([0.1], [1.0])], weak, strong, n_boot=10)


def test_normalised_cost():
    assert M.normalised_cost(6.5, 3.0, 10.0) == pytest.approx(0.5)
    assert np.isnan(M.normalised_cost(1.0, 3.0, 3.0))


def test_minimum_detectable_difference_by_hand():
    from statistics import NormalDist

    from dmr_rl.report.power import clustered_se, minimum_detectable_difference, sign_test_min_discordant

    # exact two-sided sign test: k one-way discordant pairs give p = 2 * 0.5**k
    assert sign_test_min_discordant(0.05) == 6 and sign_test_min_discordant(0.01) == 8
    assert sign_test_min_discordant(0.0625) == 5  # 2 / 32 exactly
    for alpha in (0.05, 0.01):
        k = sign_test_min_discordant(alpha)
        assert M.sign_test_p([1] * k) <= alpha < M.sign_test_p([1] * (k - 1))
    with pytest.raises(ValueError, match="alpha"):
        sign_test_min_discordant(1.5)
    # cluster-robust SE: two tasks of two pairs, residual sums +1 and -1 -> sqrt(2 * 2) / 4
    assert clustered_se([1, 1, 0, 0], [0, 0, 1, 1]) == pytest.approx(0.5)
    assert clustered_se([1, 0, 0, 1], [0, 0, 1, 1]) == 0.0  # each task's pairs cancel
    d = np.array([1.0, 0.0, -1.0, 1.0, 0.0, 0.0])  # one pair per task: s / sqrt(n)
    assert clustered_se(d, np.arange(6)) == pytest.approx(d.std(ddof=1) / math.sqrt(6))
    assert math.isnan(clustered_se([1.0, 0.0], [3, 3]))
    # methods that never disagree on 30 tasks: only the exact-test floor, 6 / 30
    assert minimum_detectable_difference(np.zeros(30), np.arange(30)) == pytest.approx(0.2)
    assert minimum_detectable_difference(np.zeros(5), np.arange(5)) == math.inf  # < 6 pairs: nothing
    # noisy pairs: the normal-approximation MDE (z_.975 + z_.8) * SE dominates the floor
    noisy = np.array([1.0, -1.0] * 15)
    z = NormalDist().inv_cdf(0.975) + NormalDist().inv_cdf(0.8)
    want = z * noisy.std(ddof=1) / math.sqrt(30)
    assert want > 0.2 and minimum_detectable_difference(noisy, np.arange(30)) == pytest.approx(want)


def test_paired_comparison_reports_what_it_could_detect():
    n = 30
    tab = {"seed": np.zeros(n, int), "task": np.arange(n), "won": np.ones(n), "score": np.ones(n),
           "hp_calls": np.zeros(n), "calls": np.ones(n)}
    c = M.paired_comparison(tab, dict(tab), n_boot=200)
    assert c["diff_mean"] == 0.0 and c["diff_mde"] == pytest.approx(6 / n)
    from dmr_rl.report.tables import comparison_sentence

    words = comparison_sentence({**c, "method": "grpo", "point": "r0.30", "vs": "random", "vs_point": "ratio0.30",
                                 "hp_ratio": 0.3, "vs_hp_ratio": 0.3, "matched": True})
    assert words.endswith("no difference shown: this pairing detects (80% power) only |difference| >= 0.200")
    shown = comparison_sentence({**c, "diff_mean": 0.3, "diff_ci": [0.1, 0.5], "method": "grpo", "point": "r0.30",
                                 "vs": "random", "vs_point": "ratio0.30", "hp_ratio": 0.3, "vs_hp_ratio": 0.3,
                                 "matched": True})
    assert "no difference shown" not in shown


def test_episode_cost_is_a_mean_over_tasks_of_bytes_per_episode():
    a = _ep(True, [HP, LP], task_index=0)  # 10 + 3 bytes
    b = _ep(True, [LP, LP, LP], task_index=0)  # 9
    c = _ep(False, [HP], task_index=1)  # 10
    assert M.episode_cost([a, b, c]) == pytest.approx(((13 + 9) / 2 + 10) / 2)  # task 0 counts once, not twice
    assert math.isnan(M.episode_cost([]))
