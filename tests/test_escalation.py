"""The LP-confidence floor on a learned router: its calibration (pure), the router's rule, its points."""
from __future__ import annotations

import numpy as np
import pytest

from dmr_rl.pipeline.escalation import choose_escalation, escalation_method, floor_for_share, step_arrays


def _play(n_tasks=20, steps=10, seed=0, probe_sees_flips=False):
    """A validation play: flips on 20% of steps; LP is unsure exactly there (max prob 0.4 vs 0.9);
    the probe's P(HP) is noise, or high on the flips with ``probe_sees_flips``."""
    rng = np.random.default_rng(seed)
    task = np.repeat(np.arange(n_tasks), steps)
    flip = rng.random(task.size) < 0.2
    lp_max = np.where(flip, 0.4, 0.9) + rng.uniform(-0.05, 0.05, task.size)
    p_hp = rng.random(task.size) * 0.5 + (0.5 * flip if probe_sees_flips else 0.0)
    return p_hp, lp_max, flip, task


def test_the_floor_is_chosen_where_lp_confidence_finds_the_flips_the_probe_misses():
    p, lp, flip, task = _play()
    c = choose_escalation(p, lp, flip, task, target=0.4, shares=[0.1, 0.2, 0.3])
    assert c["share"] == 0.2  # LP's confidence marks the 20% flips; the probe is noise
    assert c["flip_recall"] > 0.95 and c["flip_recall"] == c["candidates"]["0.2"]
    assert c["candidates"]["0"] < 0.6  # the probe alone: about its 40% share of them
    assert c["lp_floor"] > 0.45  # above every flip's LP confidence
    assert c["hp_share"] == pytest.approx(0.4, abs=0.03)
    hp = (p >= c["threshold"]) | (lp < c["lp_floor"])
    assert hp[flip].mean() == pytest.approx(c["flip_recall"])


def test_priced_escalations_read_the_bytes_of_the_probe_alone():
    """With LP at half HP's bytes an escalated step (both tiers) costs what two probe steps save:
    e = 0.2 leaves the probe 0.4 - 0.2 / 0.5 = 0; e = 0.3 would need a negative probe share."""
    from dmr_rl.pipeline.escalation import probe_share

    p, lp, flip, task = _play()
    c = choose_escalation(p, lp, flip, task, target=0.4, shares=[0.1, 0.2, 0.3], lp_bytes_share=0.5)
    assert set(c["candidates"]) == {"0", "0.1", "0.2"}
    assert c["share"] == 0.2 and c["probe_share"] == pytest.approx(0.0) and c["flip_recall"] > 0.95
    probe, esc = p >= c["threshold"], (p < c["threshold"]) & (lp < c["lp_floor"])
    bytes_rule = probe.mean() * 1.0 + esc.mean() * 1.5 + (~probe & ~esc).mean() * 0.5
    assert bytes_rule == pytest.approx(0.4 + 0.6 * 0.5, abs=0.03)  # the probe alone at 40%
    assert c["hp_share"] == pytest.approx(0.2, abs=0.03)  # fewer steps on HP for the same bytes
    assert probe_share(0.4, 0.1, 0.5) == pytest.approx(0.2) and probe_share(0.4, 0.1, 0.0) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="lp_bytes_share"):
        probe_share(0.4, 0.1, 1.0)


def test_calibrating_escalation_without_a_price_is_refused(tmp_path):
    from dmr_rl.config import load_config
    from dmr_rl.pipeline.escalation import calibrate_escalation

    cfg = load_config(None, [f"run_dir={tmp_path}", "eval.escalate_shares=[0.1]"])
    with pytest.raises(ValueError, match="priced against the probe"):
        calibrate_escalation(cfg, {"grpo": {"both_tiers": True, "checkpoint": "x", "split": "valid_seen"}}, ["grpo"],
                             progress=False, lp_bytes_share=None)


def test_a_probe_that_already_sees_the_flips_keeps_the_whole_budget():
    p, lp, flip, task = _play(probe_sees_flips=True)
    c = choose_escalation(p, lp, flip, task, target=0.4, shares=[0.1, 0.2])
    assert c["share"] == 0.0 and c["lp_floor"] == 0.0 and c["flip_recall"] == 1.0  # ties go to the smaller share
    assert "0.2" in c["candidates"] and "0.4" not in choose_escalation(p, lp, flip, task, 0.4, [0.4])["candidates"]


def test_floor_for_share_hits_the_share_among_eligible_steps_only():
    lp = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95])
    w = np.full(10, 0.1)
    eligible = np.array([True] * 5 + [False] * 5)
    assert floor_for_share(lp, eligible, w, 0.2) == pytest.approx(0.25)  # two eligible steps under it
    assert floor_for_share(lp, eligible, w, 0.0) == 0.0
    assert floor_for_share(lp, eligible, w, 0.9) == 1.0  # all five eligible: the most it can give
    assert floor_for_share(lp, np.zeros(10, bool), w, 0.2) == 0.0


def test_bad_validation_plays_are_named():
    p, lp, flip, task = _play()
    lp[3] = np.nan
    with pytest.raises(ValueError, match="LP at every step"):
        choose_escalation(p, lp, flip, task, 0.4, [0.1])
    with pytest.raises(ValueError, match="one length"):
        choose_escalation(p[:5], lp, flip, task, 0.4, [0.1])


def test_step_arrays_read_what_the_worker_records():
    from dmr_rl.rollout.records import EpisodeRecord, StepRecord

    def step(i, p, extra):
        return StepRecord(step=i, obs="", action="look", tier=0, admissible=["look"], prompt="", router_prob=p,
                          router_logprob=0.0, reward=0.0, prompt_tokens=1, gen_tokens=0, weight_bytes=1.0,
                          latency_s=0.0, kl=None, extra=extra)

    ep = EpisodeRecord(episode_id="e", task_index=7, task_id="", task_type="", task="", method="router", seed=0,
                       steps=[step(0, 0.3, {"lp_max_prob": 0.8, "tiers_agree": False}), step(1, 0.9, {})])
    a = step_arrays([ep])
    assert list(a["task"]) == [7, 7] and list(a["flip"]) == [True, False]
    assert a["lp_max"][0] == 0.8 and np.isnan(a["lp_max"][1]) and list(a["p_hp"]) == [0.3, 0.9]


def test_the_router_escalates_below_its_floor_only_and_rejects_a_floor_outside_0_1():
    from dmr_rl.config import RouterConfig
    from dmr_rl.router.transformer import TransformerRouter

    cfg = RouterConfig(d_model=16, n_heads=2, max_tokens=64)
    assert not TransformerRouter(cfg).escalates
    r = TransformerRouter(cfg, lp_escalate_below=0.6)
    assert r.escalates
    got = r.escalate([None, None, None], [np.array([0.5, 0.3, 0.2]), np.array([0.7, 0.3]), np.array([0.6, 0.4])])
    assert list(got) == [True, False, False]
    with pytest.raises(ValueError, match="lp_escalate_below"):
        TransformerRouter(cfg, lp_escalate_below=1.5)


def test_calibration_choices_become_escalate_points_of_kind_router(tmp_path):
    from dmr_rl.config import RouterConfig, load_config
    from dmr_rl.pipeline.eval_points import router_points
    from dmr_rl.router.transformer import TransformerRouter

    d = TransformerRouter(RouterConfig(d_model=16, n_heads=2, max_tokens=64)).save(tmp_path / "ckpt")
    cfg = load_config(None, ["eval.sampled=false"])
    calib = {"grpo": {"thresholds": {"0.4": 0.6}},
             escalation_method("grpo"): {"choices": {"0.4": {"share": 0.1, "threshold": 0.7, "lp_floor": 0.55,
                                                             "flip_recall": 0.8}}}}
    pts = {(p.method, p.point): p for p in router_points(cfg, {"grpo": str(d)}, calib)}
    esc = pts[("grpo_escalate", "r0.40")]
    assert esc.spec["kwargs"]["lp_escalate_below"] == 0.55 and esc.spec["kwargs"]["threshold"] == 0.7
    assert esc.params["kind"] == "router" and esc.params["escalate_share"] == 0.1
    assert "lp_escalate_below" not in pts[("grpo", "r0.40")].spec["kwargs"]


def test_escalate_shares_outside_0_1_are_a_config_error():
    from dmr_rl.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="escalate_shares"):
        load_config(None, ["eval.escalate_shares=[0.1, 1.2]"])


def test_escalation_targets_the_steps_share_of_the_routers_calibrated_threshold(tmp_path):
    """The router's threshold is calibrated in tier calls; escalation prices per step, so its target is
    the share of the play's steps over that threshold, and the share 0 (the router alone) keeps it."""
    import json

    from dmr_rl.config import load_config
    from dmr_rl.pipeline.escalation import calibrate_escalation
    from dmr_rl.report import layout
    from dmr_rl.rollout.records import EpisodeRecord, StepRecord, TrajectoryStore

    p, lp, flip, task = _play()
    eps = [EpisodeRecord(f"e{t}", int(t), str(t), "x", "", steps=[
        StepRecord(i, "", "a", int(p[k] >= 0.3), router_prob=float(p[k]),
                   extra={"lp_max_prob": float(lp[k]), "tiers_agree": not bool(flip[k])})
        for i, k in enumerate(np.flatnonzero(task == t))]) for t in np.unique(task)]
    TrajectoryStore(layout.eval_dir(tmp_path) / "_calib" / "grpo", "driver").append(eps)
    threshold = float(np.sort(p)[::-1][69])  # 70 of the 200 steps at or over it: 35% of steps
    cfg = load_config(None, [f"run_dir={tmp_path}", "eval.escalate_shares=[0.1]", "eval.target_hp_ratios=[0.3]"])
    base = {"grpo": {"both_tiers": True, "checkpoint": "x", "split": "valid_seen", "thresholds": {"0.3": threshold}}}
    c = calibrate_escalation(cfg, base, ["grpo"], progress=False, lp_bytes_share=0.0)["grpo_escalate"]["choices"]["0.3"]
    share = float(np.mean([np.mean(p[task == t] >= threshold) for t in np.unique(task)]))
    assert c["router_steps_share"] == pytest.approx(share) and share != pytest.approx(0.3)
    assert c["share"] == 0.1 and c["probe_share"] == pytest.approx(share - 0.1)  # priced from the router's share
    saved = json.loads((layout.eval_dir(tmp_path) / "calibration.json").read_text())
    assert saved["grpo_escalate"]["choices"]["0.3"] == c
