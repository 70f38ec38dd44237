"""`dmr eval` and the causal check on in-process rollout workers (WebShop, model-free backends).

The backends are FakeBackend (deterministic pseudo-random action scores): success numbers are
meaningless here; the tests check that thresholds come from the validation split, every method
routes as it claims and plays every task, deterministic methods play once and stochastic ones
under every seed, random and first-k run at the routers' realised HP ratios, and the causal check
forces LP exactly where it says.
"""
from __future__ import annotations

import functools
import json

import numpy as np
import pytest

from dmr_rl.config import load_config
from dmr_rl.pipeline import eval_points
from dmr_rl.report import layout
from dmr_rl.rollout.records import HP, LP, TrajectoryStore


@pytest.fixture(scope="module")
def setup(webshop_data, tmp_path_factory):
    pytest.importorskip("torch")
    from dmr_rl.router.transformer import TransformerRouter
    from dmr_rl.serving import launcher
    from dmr_rl.serving.fake_backend import FakeBackend

    run_dir = tmp_path_factory.mktemp("evalrun")
    cfg = load_config(overrides=[
        f"run_dir={run_dir}", "env.name=webshop", f"env.data_dir={webshop_data}", "env.max_steps=8",
        "eval.episodes=4", "eval.seeds=[0, 1, 2]", "eval.target_hp_ratios=[0.3, 0.7]", "eval.bootstrap=200",
        "eval.calib_episodes=5", "eval.baselines=[hp_only, lp_only, random, first_k, cascade]",
        "eval.baseline_sweeps={cascade: [0.6]}",
        "router.d_model=16", "router.n_heads=2", "router.n_layers=1", "router.threshold=0.3"])
    ckpt = run_dir / "router_ckpt"
    TransformerRouter(cfg.router, seed=0).save(ckpt)
    specs = {"hp": functools.partial(FakeBackend, salt="hp", weight_bytes=4e6),
             "lp": functools.partial(FakeBackend, salt="lp", weight_bytes=1e6)}
    clients = launcher.create_tier_clients(cfg, ("hp", "lp"), local=True, backend_specs=specs)
    group = launcher.create_rollout_group(cfg, clients, run_dir / "eval" / "_worker_shards", local=True,
                                          num_workers=2, envs_per_worker=2, split=cfg.env.eval_split)
    yield cfg, ckpt, group, clients
    group.shutdown()


@pytest.fixture(scope="module")
def evaluated(setup):
    from dmr_rl.pipeline import evaluate

    cfg, ckpt, group, clients = setup
    path = evaluate.run(cfg, str(ckpt), group=group, clients=clients, progress=False)
    return cfg, ckpt, group, path



def _eps(cfg, method, point, seed):
    return TrajectoryStore.read(layout.seed_dir(layout.point_dir(cfg.run_dir, method, point), seed))


def _points(cfg, method):
    d = layout.eval_dir(cfg.run_dir) / method
    return sorted(p.name for p in d.iterdir() if p.is_dir()) if d.is_dir() else []


def _meta(cfg, method, point):
    return json.loads((layout.point_dir(cfg.run_dir, method, point) / "point.json").read_text())


def test_thresholds_come_from_the_validation_split(evaluated):
    cfg = evaluated[0]
    cal = json.loads((layout.eval_dir(cfg.run_dir) / "calibration.json").read_text())["router"]
    assert cal["split"] == "eval" and cal["targets"] == [0.3, 0.7] and cal["n_tasks"] == 5
    calib_eps = TrajectoryStore.read(layout.eval_dir(cfg.run_dir) / "_calib" / "router")
    test_tasks = {e.task for e in _eps(cfg, "hp_only", "default", 0)}
    assert len(calib_eps) == 5 and not {e.task for e in calib_eps} & test_tasks  # another split's goals
    part = cal["lp_part"]
    for target, thr in cal["thresholds"].items():  # the calibration share is the HP ratio the threshold gives there
        steps = [(st.router_prob, e.task_index) for e in calib_eps for st in e.steps]
        k_n = [(sum(p >= thr for p, t in steps if t == task), sum(t == task for _, t in steps))
               for task in {t for _, t in steps}]
        assert np.mean([k / (n + part * k) for k, n in k_n]) == pytest.approx(cal["calib_share"][target])
        meta = _meta(cfg, "router", f"r{float(target):.2f}")
        assert meta["params"]["threshold"] == thr and meta["params"]["kind"] == "router"


def test_calibrating_again_at_other_targets_keeps_the_earlier_thresholds(setup, tmp_path):
    """A second evaluation of the same checkpoint at a new target adds it to calibration.json
    (the first target's threshold, which its played point used, stays); targets already there
    are not played again."""
    import copy

    from dmr_rl.pipeline.calibrate import calibrate

    cfg, ckpt, _, clients = setup
    c = copy.deepcopy(cfg)
    c.run_dir = str(tmp_path)
    c.eval.target_hp_ratios = [0.3]
    first = calibrate(c, {"router": str(ckpt)}, clients, local=True, progress=False, num_workers=1)["router"]
    c.eval.target_hp_ratios = [0.7]
    both = calibrate(c, {"router": str(ckpt)}, clients, local=True, progress=False, num_workers=1)["router"]
    assert both["targets"] == [0.3, 0.7] and both["thresholds"]["0.3"] == first["thresholds"]["0.3"]
    assert set(both["thresholds"]) == {"0.3", "0.7"}
    shards = tmp_path / "eval" / "_calib" / "router"
    stamp = sorted((f.name, f.stat().st_mtime_ns) for f in shards.iterdir())
    c.eval.target_hp_ratios = [0.7, 0.3]
    assert calibrate(c, {"router": str(ckpt)}, clients, local=True, progress=False, num_workers=1)["router"] == both
    assert sorted((f.name, f.stat().st_mtime_ns) for f in shards.iterdir()) == stamp  # not played again


def test_every_method_plays_every_task_deterministic_ones_once(evaluated):
    cfg = evaluated[0]
    expected_tasks = None
    for method in ("hp_only", "lp_only", "first_k", "cascade", "router", "random"):
        for point in _points(cfg, method):
            stochastic = _meta(cfg, method, point)["params"]["stochastic"]
            assert stochastic == (method == "random")
            seeds = (0, 1, 2) if stochastic else (0,)
            for s in (0, 1, 2):
                if s not in seeds:  # a deterministic method is not replayed under other seeds
                    assert not layout.seed_dir(layout.point_dir(cfg.run_dir, method, point), s).exists()
                    continue
                eps = _eps(cfg, method, point, s)
                tasks = sorted(e.task_index for e in eps)
                expected_tasks = expected_tasks or tasks
                assert tasks == expected_tasks and len(tasks) == 4
                assert all(e.method == method and e.seed == s for e in eps)


def test_methods_route_as_they_claim(evaluated):
    cfg = evaluated[0]
    assert all(st.tier == HP for e in _eps(cfg, "hp_only", "default", 0) for st in e.steps)
    assert all(st.tier == LP for e in _eps(cfg, "lp_only", "default", 0) for st in e.steps)
    for point in _points(cfg, "first_k"):
        k = _meta(cfg, "first_k", point)["params"]["k"]
        assert all(st.tier == (HP if st.step < k else LP) for e in _eps(cfg, "first_k", point, 0) for st in e.steps)
    for point in _points(cfg, "router"):
        t = _meta(cfg, "router", point)["params"]["threshold"]
        assert all(st.tier == int(st.router_prob >= t) for e in _eps(cfg, "router", point, 0) for st in e.steps)
    for e in _eps(cfg, "cascade", "p0.60", 0):  # the cascade pays both tiers on the steps it escalates
        for st in e.steps:
            assert st.extra["paid"] == (["hp", "lp"] if st.tier == HP else ["lp"])


def test_random_and_first_k_run_at_the_routers_realised_ratios(evaluated):
    from dmr_rl.report.metrics import realised_hp_ratio

    cfg = evaluated[0]
    realised = {p: realised_hp_ratio(_eps(cfg, "router", p, 0)) for p in _points(cfg, "router")}
    for method in ("random", "first_k"):
        matched, exact = set(), 0
        for point in _points(cfg, method):
            params = _meta(cfg, method, point)["params"]
            matched |= set(params["matched_to"])
            first = realised[params["matched_to"][0].split("/")[1]]
            if method == "random" and point == f"ratio{first:.3f}":  # asked for the router's realised ratio
                assert params["hp_ratio"] == pytest.approx(first, abs=1e-4)
                exact += 1
        assert matched == {f"router/{p}" for p in realised}
        assert method == "first_k" or exact >= 1


def test_random_draws_are_keyed_and_reproducible(setup, evaluated):
    from dmr_rl.pipeline import evaluate

    cfg, _, group, _ = setup
    point = _points(cfg, "random")[0]
    params = _meta(cfg, "random", point)["params"]
    p = eval_points.OperatingPoint("random", point, {"name": "random", "kwargs": {"hp_ratio": params["hp_ratio"]}},
                                stochastic=True)
    tasks = sorted(e.task_index for e in _eps(cfg, "random", point, 1))
    again = evaluate.run_point(group, p, tasks, 1, layout.eval_dir(cfg.run_dir) / "_again", run_seed=int(cfg.seed))
    first = {e.task_index: [st.tier for st in e.steps] for e in _eps(cfg, "random", point, 1)}
    assert {e.task_index: [st.tier for st in e.steps] for e in again} == first
    other = {e.task_index: [st.tier for st in e.steps] for e in _eps(cfg, "random", point, 2)}
    assert other != first  # another seed draws differently


def test_resume_skips_finished_points(evaluated):
    from dmr_rl.pipeline import evaluate

    cfg, ckpt, group, path = evaluated
    shard = layout.seed_dir(layout.point_dir(cfg.run_dir, "hp_only", "default"), 0) / "driver.jsonl"
    before = shard.stat().st_mtime_ns
    evaluate.run(cfg, str(ckpt), group=group, methods=["hp_only"], progress=False)
    assert shard.stat().st_mtime_ns == before
    res = json.loads(path.read_text())
    assert not any(k.startswith("eval/") for k in res["timers_s"])
    # the first call's timers (which played the points) are kept, not overwritten
    assert any(k.startswith("eval/") for k in res["timers_s_earlier_calls"][0])


def test_a_point_played_with_other_knobs_is_not_resumed_under_new_ones(evaluated, tmp_path):
    """A finished point whose point.json says it was played with another threshold (say, a calibration
    redone since) is refused by name, its episodes kept; the same knobs resume as before."""
    import dataclasses
    import shutil

    from dmr_rl.pipeline import evaluate
    from environments.errors import DataError

    cfg0, ckpt, group, _ = evaluated
    shutil.copytree(cfg0.run_dir, tmp_path / "run")
    cfg = dataclasses.replace(cfg0, run_dir=str(tmp_path / "run"))
    meta_path = layout.point_dir(cfg.run_dir, "cascade", "p0.60") / "point.json"
    meta = json.loads(meta_path.read_text())
    meta["params"]["max_prob_threshold"] = 0.5  # as if these episodes came from another knob value
    meta_path.write_text(json.dumps(meta))
    shard = layout.seed_dir(layout.point_dir(cfg.run_dir, "cascade", "p0.60"), 0) / "driver.jsonl"
    before = shard.read_bytes()
    with pytest.raises(DataError, match=r"cascade/p0.60: its episodes were played with max_prob_threshold=0.5"):
        evaluate.run(cfg, None, group=group, methods=["cascade"], progress=False)
    assert shard.read_bytes() == before and json.loads(meta_path.read_text())["params"]["max_prob_threshold"] == 0.5


def test_earlier_timers_of_a_malformed_results_file(tmp_path, capsys):
    from dmr_rl.pipeline.evaluate import earlier_timers

    f = tmp_path / "results.json"
    assert earlier_timers(f) == []
    f.write_text(json.dumps({"timers_s": {"eval/a": 2.0}, "timers_s_earlier_calls": [{"eval/b": 1.0}]}))
    assert earlier_timers(f) == [{"eval/b": 1.0}, {"eval/a": 2.0}]
    f.write_text("{not json")
    assert earlier_timers(f) == [] and str(f) in capsys.readouterr().out


def test_calibration_and_ratio_helpers_by_hand():
    from dmr_rl.pipeline.calibrate import share_at, thresholds_for_targets, weighted_threshold
    from dmr_rl.pipeline.evaluate import eval_tasks
    from dmr_rl.report.metrics import realised_hp_ratio
    from dmr_rl.rollout.records import EpisodeRecord, StepRecord

    s = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    assert weighted_threshold(s, np.ones(5), 0.4) == 0.8  # 2 of 5 steps at or above 0.8
    assert weighted_threshold(s, np.ones(5), 1.0) == 0.5 and weighted_threshold(s, np.ones(5), 0.0) == float("inf")
    # task-weighted: task a has 4 steps, task b one; 0.5 of the mean per-task share = all of b, none of a
    scores, ids = [0.1, 0.2, 0.3, 0.4, 0.9], ["a", "a", "a", "a", "b"]
    t = thresholds_for_targets(scores, ids, [0.5])[0.5]
    assert t == 0.9 and share_at(scores, ids, t) == 0.5
    with pytest.raises(ValueError, match="target HP ratio"):
        weighted_threshold(s, np.ones(5), 1.5)
    assert eval_tasks(5, 0) == [0, 1, 2, 3, 4] and eval_tasks(10, 5) == [0, 2, 4, 6, 8]

    def ep(task, paid):
        return EpisodeRecord("e", task, "t", "x", "task", steps=[StepRecord(i, "", "a", int("hp" in p), extra={"paid": p})
                                                                 for i, p in enumerate(paid)])
    # task 0: a cascade step that paid both (1 HP call of 2) and an LP step -> 1/3; task 1: all HP -> 1
    assert realised_hp_ratio([ep(0, [["hp", "lp"], ["lp"]]), ep(1, [["hp"]])]) == pytest.approx((1 / 3 + 1) / 2)


def test_cascade_thresholds_hit_the_paid_hp_ratio_by_hand():
    from dmr_rl.pipeline.calibrate import share_at, thresholds_for_targets

    # a cascade pays LP at every step and HP on the k escalated ones: a task's HP ratio is k / (n + k).
    # task a: 4 steps; escalating its top one gives 1/5 = 0.2; task b: 1 step, escalated gives 1/2
    scores, ids = [0.1, 0.2, 0.3, 0.8, 0.9], ["a", "a", "a", "a", "b"]
    t = thresholds_for_targets(scores, ids, [0.35], lp_part=1.0)[0.35]
    assert t == 0.8 and share_at(scores, ids, t, lp_part=1.0) == pytest.approx((0.2 + 0.5) / 2)
    # the plain (router) definition at the same threshold counts k / n: (1/4 + 1) / 2
    assert share_at(scores, ids, t) == pytest.approx(0.625)
    assert thresholds_for_targets(scores, ids, [0.5], lp_part=1.0)[0.5] == 0.1  # all escalated -> 0.5
    # a probe that reads LP up to layer 8 of 32 pays a quarter of an LP call on the steps it sends to HP:
    # task a with 1 of 4 steps on HP is at 1 / (4 + 0.25) = 0.235, task b's only step at 1 / 1.25 = 0.8
    assert share_at(scores, ids, 0.8, lp_part=0.25) == pytest.approx((1 / 4.25 + 0.8) / 2)
    with pytest.raises(ValueError, match="lp_part"):
        thresholds_for_targets(scores, ids, [0.3], lp_part=1.5)


def test_the_lp_part_of_hp_steps_is_read_from_the_play():
    from dmr_rl.pipeline.calibrate import hp_step_lp_part
    from dmr_rl.rollout.records import EpisodeRecord, StepRecord

    def ep(steps):
        return EpisodeRecord("e", 0, "t", "x", "task", steps=[StepRecord(i, "", "a", tier, extra=x)
                                                             for i, (tier, x) in enumerate(steps)])
    probe_hp = (1, {"paid": ["hp"], "lp_part": 0.25, "lp_hidden": [0.0]})
    probe_lp = (0, {"paid": ["lp"], "lp_hidden": [0.0]})
    assert hp_step_lp_part([ep([probe_lp, probe_hp, probe_lp])], "r") == pytest.approx(0.25)
    assert hp_step_lp_part([ep([(1, {"paid": ["hp"]}), (0, {"paid": ["lp"]})])], "r") == 0.0  # reads no LP state
    assert hp_step_lp_part([ep([(0, {"paid": ["lp"]})])], "r") == 0.0
    with pytest.raises(ValueError, match="r: HP acted on no step"):  # a probe whose play never chose HP
        hp_step_lp_part([ep([probe_lp, probe_lp])], "r")
    with pytest.raises(ValueError, match="different LP shares"):
        hp_step_lp_part([ep([probe_hp, (1, {"paid": ["hp"]})])], "r")


def test_a_calibrated_cascade_stands_where_a_router_point_stands(setup, tmp_path):
    """eval.calibrated_baselines=[cascade]: the cascade's threshold comes from the validation split,
    it plays as cascade_calibrated/r<target> escalating exactly where its score (1 - LP max prob)
    reaches the threshold, random runs at its realised ratio, and the report compares the two."""
    import dataclasses

    from dmr_rl.pipeline import evaluate

    cfg0, _, group, clients = setup
    cfg = dataclasses.replace(cfg0, run_dir=str(tmp_path), eval=dataclasses.replace(
        cfg0.eval, calibrated_baselines=["cascade"], target_hp_ratios=[0.3]))
    path = evaluate.run(cfg, None, methods=["cascade_calibrated", "random", "hp_only", "lp_only"], group=group,
                        clients=clients, progress=False)
    cal = json.loads((tmp_path / "eval" / "calibration.json").read_text())["cascade_calibrated"]
    assert cal["checkpoint"] == "baseline:cascade" and cal["split"] != cfg.env.eval_split
    t = cal["thresholds"]["0.3"]
    meta = _meta(cfg, "cascade_calibrated", "r0.30")["params"]
    assert meta["kind"] == "router" and meta["threshold"] == t
    eps = _eps(cfg, "cascade_calibrated", "r0.30", 0)
    assert eps and all(st.tier == int(st.router_prob >= t) and "lp" in st.extra["paid"]
                       for e in eps for st in e.steps)
    assert 0 < sum(st.tier == HP for e in eps for st in e.steps) < sum(e.length for e in eps)
    assert all("cascade_calibrated/r0.30" in _meta(cfg, "random", p)["params"]["matched_to"]
               for p in _points(cfg, "random"))
    # LP at every step, HP on top: random also runs where it reads as many weight bytes per step
    # (fake tiers: LP 1e6 bytes, HP 4e6), well above the cascade's HP-call ratio
    from dmr_rl.report.metrics import cost_equivalent_hp_ratio, realised_hp_ratio

    r, q = realised_hp_ratio(eps), cost_equivalent_hp_ratio(eps, 0.25)
    asked = sorted(_meta(cfg, "random", p)["params"]["hp_ratio"] for p in _points(cfg, "random"))
    assert q > r + 0.05
    assert any(a == pytest.approx(r, abs=1e-4) for a in asked) and any(a == pytest.approx(q, abs=1e-4) for a in asked)
    comps = json.loads(path.read_text())["comparisons"]
    assert {(c["method"], c["vs"]) for c in comps} >= {("cascade_calibrated", "random"),
                                                      ("cascade_calibrated", "hp_only")}
    on_cost = [c for c in comps if c["method"] == "cascade_calibrated" and c["matched_on"] == "cost"]
    assert len(on_cost) == 1 and on_cost[0]["vs_hp_ratio"] > r + 0.05
    # against HP-only the row carries the share of its success kept; the fake HP tier wins no task here,
    # so there is no share to keep: NaN, and the report says nothing rather than dividing by zero
    kept = next(c for c in comps if c["method"] == "cascade_calibrated" and c["vs"] == "hp_only")
    assert kept["vs_success"] == 0.0 and kept["share_of_vs"] is None  # NaN is written as null
    from dmr_rl.report.tables import markdown, summarise

    assert "cascade_calibrated r0.30 keeps" not in markdown(summarise(cfg.run_dir, n_boot=50))


def test_an_escalating_router_is_priced_at_the_bytes_of_the_probe_alone(setup, tmp_path):
    """eval.escalate_shares: the router also plays as router_escalate/r<target>, its escalation share,
    threshold and LP floor chosen on the validation play (both tiers at every step) so that it reads
    the weight bytes of the router alone at the target (fake tiers: LP 1e6 bytes, HP 4e6, s = 0.25);
    on the test split HP acts where P(HP) reaches the threshold, and where LP was unsure (both paid)."""
    import dataclasses

    from dmr_rl.pipeline import evaluate

    cfg0, ckpt, group, clients = setup
    cfg = dataclasses.replace(cfg0, run_dir=str(tmp_path), eval=dataclasses.replace(
        cfg0.eval, escalate_shares=[0.1, 0.2], target_hp_ratios=[0.4]))
    evaluate.run(cfg, str(ckpt), methods=["router", "random"], group=group, clients=clients, progress=False)
    cal = json.loads((tmp_path / "eval" / "calibration.json").read_text())
    assert cal["router"]["both_tiers"] and cal["router_escalate"]["lp_bytes_share"] == 0.25
    c = cal["router_escalate"]["choices"]["0.4"]
    assert set(c["candidates"]) == {"0", "0.1", "0.2"}  # 0.2 leaves the router 0.4 - 0.2 / 0.75 > 0
    assert c["probe_share"] == pytest.approx(0.4 - c["share"] / 0.75)
    eps = _eps(cfg, "router_escalate", "r0.40", 0)  # greedy on a deterministic env: played once
    assert eps
    for st in (st for e in eps for st in e.steps):
        if st.router_prob >= c["threshold"]:
            assert st.tier == HP and "lp_max_prob" not in st.extra
        elif st.extra["lp_max_prob"] < c["lp_floor"]:
            assert st.tier == HP and st.extra["paid"] == ["hp", "lp"] and st.extra.get("escalated")
        else:
            assert st.tier == LP and st.extra["paid"] == ["lp"]
    kinds = {(st.router_prob >= c["threshold"], bool(st.extra.get("escalated"))) for e in eps for st in e.steps}
    assert (True, False) in kinds and (False, False) in kinds  # probe steps and LP steps both played


def test_plan_and_errors(setup, tmp_path):
    from dmr_rl.config import ConfigError
    from dmr_rl.pipeline import calibrate, evaluate

    cfg, ckpt, _, _ = setup
    d = tmp_path / "grpo_run" / "router"
    import shutil

    shutil.copytree(ckpt, d)
    (d.parent / "grpo.json").write_text(json.dumps({"stage": "grpo", "hp_cost": 0.5}))
    cal = {"sft": {"thresholds": {"0.3": 0.6, "0.7": 0.2}}, "grpo": {"thresholds": {"0.3": 0.55}}}
    pts = eval_points.router_points(cfg, {"sft": str(ckpt), "grpo": str(d)}, cal)
    names = [(p.method, p.point, p.stochastic, p.sample) for p in pts]
    assert names == [("sft", "r0.30", False, False), ("sft", "r0.70", False, False),
                     ("grpo", "r0.30", False, False), ("grpo", "sampled", True, True)]
    assert all(p.params["hp_cost"] == 0.5 for p in pts if p.method == "grpo")
    assert all("hp_first_steps" not in p.params for p in pts)
    meta = json.loads((d / "router.json").read_text())
    meta["config"]["hp_first_steps"] = 1
    (d / "router.json").write_text(json.dumps(meta))  # a checkpoint carrying the rule says so in its points
    assert {p.params["hp_first_steps"] for p in eval_points.router_points(cfg, {"grpo": str(d)}, cal)} == {1}
    no_sampled = load_config(overrides=["eval.sampled=false"])
    assert [(p.method, p.point) for p in eval_points.router_points(no_sampled, {"grpo": str(d)}, cal)] == [("grpo", "r0.30")]
    assert [p.point for p in eval_points.sweep_points({"grpo_l1": str(d)})] == ["sampled"]
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        eval_points.baseline_points(cfg, ["nope"])
    with pytest.raises(FileNotFoundError, match="no router checkpoint"):
        eval_points.parse_router_ckpts([f"x={tmp_path}"])
    assert eval_points.parse_router_ckpts([f"grpo={ckpt}", str(ckpt)]) == {"grpo": str(ckpt), "router": str(ckpt)}
    with pytest.raises(ConfigError, match="thresholds must be chosen on another split"):
        calibrate.calib_split(load_config(overrides=["eval.calib_split=valid_unseen"]))
    with pytest.raises(ConfigError, match="target_hp_ratios"):
        load_config(overrides=["eval.target_hp_ratios=[0.0, 0.5]"])
    with pytest.raises(ValueError, match="needs the tier clients"):
        evaluate.run(cfg, str(ckpt), group=setup[2], progress=False)


def test_causal_check_forces_lp_exactly_on_the_chosen_steps(setup):
    from dmr_rl.pipeline import causal
    from dmr_rl.report.causal_stats import causal_summary

    cfg, ckpt, group, _ = setup
    path = causal.run(cfg, str(ckpt), group=group, episodes=4, flag_share=0.3, max_forced=2, bucket=50,
                      progress=False)
    meta = json.loads(path.read_text())
    root = layout.causal_dir(cfg.run_dir)
    ref = {e.task: e for e in TrajectoryStore.read(layout.seed_dir(root / "reference", 0))}
    assert len(ref) == 4 and all(st.tier == HP and st.kl is not None and "tiers_agree" in st.extra
                                 for e in ref.values() for st in e.steps)
    kept = 0
    for row in ("kl", "router"):
        if not meta["counts"][row]["kept"]:
            continue
        flagged = {e.task: e for e in TrajectoryStore.read(layout.seed_dir(root / f"{row}_flagged", 0))}
        unflagged = {e.task: e for e in TrajectoryStore.read(layout.seed_dir(root / f"{row}_unflagged", 0))}
        assert set(flagged) == set(unflagged) and len(flagged) == meta["counts"][row]["kept"]
        for task, e in flagged.items():
            f, u = e.extra["forced_lp_steps"], unflagged[task].extra["forced_lp_steps"]
            assert len(f) == len(u) >= 1 and not set(f) & set(u)
            if row == "router":
                probs = {st.step: st.router_prob for st in ref[task].steps}
                assert min(probs[i] for i in f) > max(probs[i] for i in u)  # controls from below the flags
            for ep_, forced in ((e, f), (unflagged[task], u)):
                assert all(st.tier == (LP if st.step in forced else HP) for st in ep_.steps)
                # both tiers run on the forced steps only (recording whether LP changed the action)
                assert all(st.extra["paid"] == (["hp", "lp"] if st.step in forced else ["hp"]) for st in ep_.steps)
                assert all(("tiers_agree" in st.extra) == (st.step in forced) for st in ep_.steps)
            kept += 1
    assert kept >= 1
    from dmr_rl.report import layout as lay

    summary = causal_summary(lay.load_causal(cfg.run_dir), n_boot=100)
    for row, r in summary["rows"].items():
        for arm in ("flagged", "unflagged"):
            assert r[arm]["tasks"] == meta["counts"][row]["kept"]
            assert 0 <= r[arm]["changed_steps"] <= r[arm]["forced_steps"]


def test_plan_row_by_hand():
    from dmr_rl.pipeline.causal import plan_row
    from dmr_rl.report.causal_stats import arm_summary, paired_task_diff
    from dmr_rl.rollout.records import EpisodeRecord, StepRecord

    def ep(task, idx, n):
        return EpisodeRecord("e", idx, "t", "x", task, steps=[StepRecord(i, "", "a", HP) for i in range(n)])
    refs = [ep("a", 0, 10), ep("b", 1, 2), ep("c", 2, 3), ep("a", 3, 1)]
    scores = [np.array([0.9, .1, .1, .1, .1, .1, 0.8, .1, .1, .1]), np.array([.1, .2]), np.array([.9, .95, .9]), [1.0]]
    flagged, unflagged, counts = plan_row(refs, scores, 0.5, seed=0, max_forced=3, bucket=5)
    assert flagged == {"a": [0, 6]}  # b: nothing flagged; c: no unflagged step to match; 2nd "a": duplicate
    assert unflagged["a"][0] in {1, 2, 3, 4} and unflagged["a"][1] in {5, 7, 8, 9}  # same 5-step buckets
    assert counts == {"reference": 4, "no_flagged_step": 1, "unmatched": 1, "duplicate_task": 1, "kept": 1}
    e = ep("a", 0, 4)
    e.extra["forced_lp_steps"] = [1, 3]
    e.steps[1].extra["tiers_agree"], e.steps[3].extra["tiers_agree"] = False, True
    e.won = True
    s = arm_summary([e])
    assert (s["forced_steps"], s["changed_steps"], s["episodes_changed"], s["success_when_changed"]) == (2, 1, 1, 1.0)
    from dmr_rl.report.causal_stats import flip_detection

    ref = ep("r", 0, 5)  # flips at steps 1 and 3; the router ranks them 1st and 3rd, KL 1st and 2nd
    for st, agree, p, kl in zip(ref.steps, [True, False, True, False, True], [.1, .9, .7, .5, .2], [0, 3, 1, 2, None]):
        st.extra["tiers_agree"], st.router_prob, st.kl = agree, p, kl
    ref.steps[4].extra.pop("tiers_agree")  # a step without both tiers is skipped
    f = flip_detection([ref])
    assert (f["steps"], f["flips"], f["flip_rate"]) == (4, 2, 0.5)
    assert f["router_auroc"] == 0.75 and f["kl_auroc"] == 1.0  # router: (.9 > .7, .1) and (.5 > .1 only)
    assert f["router_auroc_within"] == 0.75 and f["within_episodes"] == 1
    # two episodes the router ranks perfectly inside, badly across: pooled 0.75, within 1.0
    a, b = ep("a", 0, 2), ep("b", 1, 2)
    for e, ps in ((a, [.2, .1]), (b, [.9, .8])):
        for st, agree, p in zip(e.steps, [False, True], ps):
            st.extra["tiers_agree"], st.router_prob = agree, p
    f = flip_detection([a, b, ep("c", 2, 3)])  # c: no step with both tiers, left out
    assert (f["router_auroc"], f["router_auroc_within"], f["within_episodes"]) == (0.75, 1.0, 2)
    d = paired_task_diff({0: 1.0, 1: 1.0, 2: 0.0}, {0: 0.0, 1: 1.0, 2: 0.0, 3: 1.0}, n_boot=200)
    assert d["n_tasks"] == 3 and d["diff_mean"] == pytest.approx(1 / 3)
    assert d["diff_ci"][0] <= d["diff_mean"] <= d["diff_ci"][1]


def test_eval_and_causal_over_ray_actors(ray_session, setup, tmp_path):
    """The same drivers with Ray rollout-worker actors and model-server actors: router specs and
    Router objects are shipped to the actors, episodes come back and are written by the driver."""
    import dataclasses

    from dmr_rl.pipeline import causal, evaluate
    from dmr_rl.serving import launcher
    from dmr_rl.serving.fake_backend import FakeBackend

    cfg0, ckpt, _, _ = setup
    cfg = dataclasses.replace(cfg0, run_dir=str(tmp_path),
                              eval=dataclasses.replace(cfg0.eval, seeds=[0, 1], episodes=3, calib_episodes=3,
                                                       target_hp_ratios=[0.5]))
    specs = {t: functools.partial(FakeBackend, salt=t) for t in ("hp", "lp")}
    clients = launcher.create_tier_clients(cfg, ("hp", "lp"), backend_specs=specs)
    group = launcher.create_rollout_group(cfg, clients, tmp_path / "eval" / "_worker_shards", num_workers=2,
                                          envs_per_worker=2, split=cfg.env.eval_split)
    try:
        path = evaluate.run(cfg, str(ckpt), group=group, clients=clients, methods=["lp_only", "first_k", "router"],
                            progress=False)
        cpath = causal.run(cfg, str(ckpt), group=group, episodes=3, flag_share=0.4, progress=False)
    finally:
        launcher.shutdown_all(group, clients)
    assert json.loads(path.read_text())["calibration"]["router"]["split"] == "eval"
    pts = _points(cfg, "first_k")
    assert pts and all(_meta(cfg, "first_k", p)["params"]["matched_to"] == ["router/r0.50"] for p in pts)
    eps = _eps(cfg, "lp_only", "default", 0)
    assert len(eps) == 3 and {e.extra["worker"] for e in eps} == {0, 1}  # spread over both actors
    assert json.loads(cpath.read_text())["tasks"] == 3


def test_the_report_names_what_each_tier_ran_as(evaluated):
    from dmr_rl.report.tables import markdown, summarise, tiers_line

    cfg = evaluated[0]
    tiers = json.loads(layout.tiers_path(cfg.run_dir).read_text())
    assert sorted(tiers) == ["hp", "lp"]
    assert all(r["backend"] == "fake" and r["tier"] == t for t, reps in tiers.items() for r in reps)
    assert tiers_line(tiers) in markdown(summarise(cfg.run_dir, n_boot=50))
    assert tiers_line({"hp": [{"backend": "transformers", "dtype": "bfloat16", "device": "cpu"}] * 2,
                       "lp": [{"backend": "compressed", "dtype": "float32", "device": "cpu"}]}) == (
        "Tiers (as served in the evaluation): HP transformers, bfloat16 on cpu, 2 replicas; "
        "LP compressed, float32 on cpu, 1 replica.")


@pytest.mark.parametrize("offset, random_points, first_k_points", [
    (+0.05, ["ratio0.400"], ["k8"]),  # the baselines landed above the router: kept (conservative)
    (-0.05, ["ratio0.400", "ratio0.450"], ["k8", "k9"]),  # below it: corrected once
    (+0.01, ["ratio0.400"], ["k8"]),  # within the tolerance
])
def test_matched_baselines_correct_only_a_point_below_the_routers_ratio(monkeypatch, offset, random_points,
                                                                       first_k_points):
    from dmr_rl.pipeline import evaluate

    class Eps(list):  # stands for a point's episodes: its realised HP ratio and episode lengths
        def __init__(self, ratio, lengths=()):
            super().__init__(type("E", (), {"length": n})() for n in lengths)
            self.ratio = ratio

    monkeypatch.setattr(evaluate, "realised_hp_ratio", lambda eps: eps.ratio)
    ev = evaluate.Evaluation(load_config(overrides=["eval.seeds=[0]"]), None, [0], progress=False)
    router = eval_points.OperatingPoint("router", "r0.40", None, {"kind": "router"})
    ev.played.append((router, Eps(0.4, [20, 20])))
    asked = []

    def play(p):
        asked.append((p.method, p.point))
        got = p.params["hp_ratio"] if p.method == "random" else p.params["k"] / 20
        first = [m for m, _ in asked].count(p.method) == 1
        eps = Eps(got + offset if first else got)  # the first random and the first first-k point miss
        ev.played.append((p, eps))
        return eps

    monkeypatch.setattr(ev, "play", play)
    ev.matched_baselines(["random", "first_k"])
    assert [pt for m, pt in asked if m == "random"] == random_points
    assert [pt for m, pt in asked if m == "first_k"] == first_k_points


@pytest.mark.parametrize("random_cost, random_points", [
    (0.9, ["ratio0.400", "ratio0.550"]),  # the matched random point reads fewer bytes per episode: priced too
    (1.1, ["ratio0.400"]),  # it already reads more than the router: it is the comparison on cost as well
])
def test_random_at_the_cost_equivalent_ratio_only_when_the_matched_one_is_cheaper(monkeypatch, random_cost,
                                                                                   random_points):
    from dmr_rl.pipeline import evaluate

    class Eps(list):  # a point's episodes, by what the evaluation reads of them
        def __init__(self, ratio, cost):
            super().__init__()
            self.ratio, self.cost = ratio, cost

    monkeypatch.setattr(evaluate, "realised_hp_ratio", lambda eps: eps.ratio)
    monkeypatch.setattr(evaluate, "episode_cost", lambda eps: eps.cost)
    monkeypatch.setattr(evaluate, "cost_equivalent_hp_ratio", lambda eps, s: 0.55 if eps.ratio == 0.4 else eps.ratio)
    ev = evaluate.Evaluation(load_config(overrides=["eval.seeds=[0]"]), None, [0], progress=False,
                             lp_bytes_share=0.3)
    ev.played.append((eval_points.OperatingPoint("router", "r0.40", None, {"kind": "router"}), Eps(0.4, 1.0)))
    asked = []

    def play(p):
        asked.append(p.point)
        eps = Eps(p.params["hp_ratio"] + 0.001, random_cost)
        ev.played.append((p, eps))
        return eps

    monkeypatch.setattr(ev, "play", play)
    ev.matched_baselines(["random"])
    assert asked == random_points
