"""`dmr eval` and the causal check on in-process rollout workers (WebShop, model-free backends).

The backends are FakeBackend (deterministic pseudo-random action scores): success numbers are
meaningless here; the tests check that every method routes as it claims, every operating point
and seed is written where the report reads it, and that results.json matches those files.
"""
from __future__ import annotations

import functools
import json

import numpy as np
import pytest

from dmr_rl.config import load_config
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
        "eval.episodes=4", "eval.seeds=[0, 1, 2]", "eval.thresholds=[0.3, 0.7]", "eval.bootstrap=200",
        "eval.baselines=[hp_only, lp_only, random, first_k, cascade]",
        "eval.baseline_sweeps={random: [0.2, 0.8], first_k: [1, 3], cascade: [0.6]}",
        "router.d_model=16", "router.n_heads=2", "router.n_layers=1", "router.threshold=0.3"])
    ckpt = run_dir / "router_ckpt"
    TransformerRouter(cfg.router, seed=0).save(ckpt)
    specs = {"hp": functools.partial(FakeBackend, salt="hp", weight_bytes=4e6),
             "lp": functools.partial(FakeBackend, salt="lp", weight_bytes=1e6)}
    clients = launcher.create_tier_clients(cfg, ("hp", "lp"), local=True, backend_specs=specs)
    group = launcher.create_rollout_group(cfg, clients, run_dir / "eval" / "_worker_shards", local=True,
                                          num_workers=2, envs_per_worker=2, split=cfg.env.eval_split)
    yield cfg, ckpt, group
    group.shutdown()


@pytest.fixture(scope="module")
def evaluated(setup):
    from dmr_rl.pipeline import evaluate

    cfg, ckpt, group = setup
    path = evaluate.run(cfg, str(ckpt), group=group, progress=False)
    return cfg, ckpt, group, path


def _eps(cfg, method, point, seed):
    return TrajectoryStore.read(layout.seed_dir(layout.point_dir(cfg.run_dir, method, point), seed))


def test_every_point_and_seed_is_written(evaluated):
    cfg, _, _, path = evaluated
    expected = {"hp_only": ["default"], "lp_only": ["default"], "random": ["ratio0.20", "ratio0.80"],
                "first_k": ["k1", "k3"], "cascade": ["p0.60"], "router": ["t0.30", "t0.70"]}
    tasks = {}
    for m, pts in expected.items():
        for p in pts:
            meta = json.loads((layout.point_dir(cfg.run_dir, m, p) / "point.json").read_text())
            assert meta["method"] == m and meta["default"] == (m == "router" and p == "t0.30")
            for s in (0, 1, 2):
                eps = _eps(cfg, m, p, s)
                assert len(eps) == 4 and all(e.method == m and e.seed == s for e in eps)
                tasks.setdefault(s, set()).add(tuple(sorted(e.task_index for e in eps)))
    # paired design: every method sees the same tasks for a seed
    assert all(len(v) == 1 for v in tasks.values())
    res = json.loads(path.read_text())
    assert set(res["methods"]) == set(expected)
    won = np.mean([np.mean([e.won for e in _eps(cfg, "random", "ratio0.80", s)]) for s in (0, 1, 2)])
    assert res["methods"]["random"]["ratio0.80"]["success_mean"] == pytest.approx(won)
    assert "apgr" in res["tradeoff"]["router"] and res["methods"]["router"]["t0.30"]["seeds"] == [0, 1, 2]


def test_methods_route_as_they_claim(evaluated):
    cfg = evaluated[0]
    for s in (0, 1, 2):
        assert all(st.tier == HP for e in _eps(cfg, "hp_only", "default", s) for st in e.steps)
        assert all(st.tier == LP for e in _eps(cfg, "lp_only", "default", s) for st in e.steps)
        for k in (1, 3):
            assert all(st.tier == (HP if st.step < k else LP) for e in _eps(cfg, "first_k", f"k{k}", s) for st in e.steps)
        for p, t in (("t0.30", 0.3), ("t0.70", 0.7)):
            assert all(st.tier == int(st.router_prob >= t) for e in _eps(cfg, "router", p, s) for st in e.steps)
        # cascade pays both tiers on the steps it escalates
        for e in _eps(cfg, "cascade", "p0.60", s):
            for st in e.steps:
                assert st.extra["paid"] == (["hp", "lp"] if st.tier == HP else ["lp"])
    hp = lambda p: np.mean([st.tier for s in (0, 1, 2) for e in _eps(cfg, "random", p, s) for st in e.steps])  # noqa: E731
    assert hp("ratio0.20") < 0.45 < hp("ratio0.80")


def test_resume_skips_finished_points(evaluated):
    from dmr_rl.pipeline import evaluate

    cfg, ckpt, group, path = evaluated
    shard = layout.seed_dir(layout.point_dir(cfg.run_dir, "hp_only", "default"), 0) / "driver.jsonl"
    before = shard.stat().st_mtime_ns
    evaluate.run(cfg, str(ckpt), group=group, methods=["hp_only"], progress=False)
    assert shard.stat().st_mtime_ns == before
    res = json.loads(path.read_text())
    assert not any(k.startswith("eval/") for k in res["timers_s"])


def test_plan_and_errors(setup, tmp_path):
    from dmr_rl.pipeline import evaluate

    import shutil

    cfg, ckpt, _ = setup
    grpo = []
    for lam in (0.1, 0.5):  # two GRPO runs whose final routers are both called "router"
        d = tmp_path / f"grpo_l{lam}" / "router"
        shutil.copytree(ckpt, d)
        (d.parent / "config.yaml").write_text(f"grpo:\n  hp_cost: {lam}\n")
        grpo.append(str(d))
    pts = evaluate.plan(cfg, {"sft": [str(ckpt)], "grpo": grpo}, methods=["sft", "grpo", "random"])
    names = [(p.method, p.point) for p in pts]
    assert names[:2] == [("random", "ratio0.20"), ("random", "ratio0.80")]
    assert ("sft", "t0.30") in names and ("grpo", "grpo_l0.5-router_t0.70") in names
    lam = {p.point: p.params.get("hp_cost") for p in pts if p.method == "grpo"}
    assert lam["grpo_l0.1-router_t0.30"] == 0.1 and lam["grpo_l0.5-router_t0.70"] == 0.5
    assert [p.default for p in pts if p.method == "sft"] == [True, False]
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        evaluate.plan(cfg, {}, methods=["nope"])
    with pytest.raises(FileNotFoundError, match="no router checkpoint"):
        evaluate.parse_router_ckpts([f"x={tmp_path}"])
    assert evaluate.parse_router_ckpts([f"grpo={ckpt}", str(ckpt)]) == {"grpo": [str(ckpt)], "router": [str(ckpt)]}
    assert sorted(evaluate.task_sample(5, 5, 0)) == [0, 1, 2, 3, 4]
    assert evaluate.task_sample(3, 7, 1) == evaluate.task_sample(3, 7, 1) and len(evaluate.task_sample(3, 7, 1)) == 7


def test_causal_check_forces_lp_exactly_on_the_chosen_steps(setup):
    from dmr_rl.pipeline import causal

    cfg, ckpt, group = setup
    path = causal.run(cfg, str(ckpt), group=group, episodes=4, flag_share=0.3, max_forced=2, progress=False)
    meta = json.loads(path.read_text())
    root = layout.causal_dir(cfg.run_dir)
    kept = 0
    for s in (0, 1, 2):
        ref = TrajectoryStore.read(layout.seed_dir(root / "reference", s))
        assert ref and all(st.tier == HP for e in ref for st in e.steps)
        if not meta["counts"][str(s)]["kept"]:
            continue
        flagged = {e.task: e for e in TrajectoryStore.read(layout.seed_dir(root / "flagged", s))}
        unflagged = {e.task: e for e in TrajectoryStore.read(layout.seed_dir(root / "unflagged", s))}
        assert set(flagged) == set(unflagged)
        assert meta["counts"][str(s)]["kept"] == len({e.task for e in ref if len(e.steps) >= 2})  # every task
        ref_by_task = {e.task: e for e in ref}
        for task, ep in flagged.items():
            f, u = ep.extra["forced_lp_steps"], unflagged[task].extra["forced_lp_steps"]
            assert len(f) == len(u) >= 1 and not set(f) & set(u)
            probs = {st.step: st.router_prob for st in ref_by_task[task].steps}
            assert len(f) == min(2, max(1, round(0.3 * len(probs))))
            assert min(probs[i] for i in f) >= max(probs[i] for i in u)  # the episode's top P(HP) steps
            for e, forced in ((ep, f), (unflagged[task], u)):
                assert all(st.tier == (LP if st.step in forced else HP) for st in e.steps)
            kept += 1
    assert kept >= 1
    from dmr_rl.report.tables import summarise

    c = summarise(cfg.run_dir, n_boot=100)["causal"]
    assert c["arms"]["flagged"]["episodes"] == kept and c["unflagged_minus_flagged"]["pairs"] == kept
    same = c["arms"]["reference_same_tasks"]
    assert same["episodes"] == kept and same["hp_ratio"] == 1.0


def test_plan_forced_by_hand():
    from dmr_rl.pipeline.causal import _first_index_per_task, plan_forced
    from dmr_rl.rollout.records import EpisodeRecord, StepRecord

    def ep(task, idx, probs):
        return EpisodeRecord("e", idx, "t", "x", task, steps=[StepRecord(i, "", "a", HP, router_prob=p)
                                                              for i, p in enumerate(probs)])
    refs = [ep("a", 0, [0.9, 0.1, 0.8, 0.2, 0.3]), ep("b", 1, [0.1, 0.2]), ep("c", 2, [0.9, 0.95, 0.1]),
            ep("a", 3, [0.9])]
    flagged, unflagged, counts = plan_forced(refs, threshold=0.5, seed=0, max_forced=3)
    assert flagged == {"a": [0, 2]}
    assert len(unflagged["a"]) == 2 and set(unflagged["a"]) <= {1, 3, 4}
    assert counts == {"reference": 4, "no_flagged_step": 1, "too_few_unflagged": 1, "duplicate_task": 1, "kept": 1}
    # per episode: the top share of each episode's own steps, whatever their P(HP)
    flagged, unflagged, counts = plan_forced(refs, threshold=0.5, seed=0, max_forced=3, flag_share=0.4)
    assert flagged == {"a": [0, 2], "b": [1], "c": [1]}
    assert set(unflagged["a"]) <= {1, 3, 4} and unflagged["b"] == [0] and set(unflagged["c"]) <= {0, 2}
    assert counts["kept"] == 3 and counts["no_flagged_step"] == 0 and counts["duplicate_task"] == 1
    # replayed: the episode each plan came from, not the later game with the same task text
    assert _first_index_per_task(refs, flagged) == [0, 1, 2]


def test_eval_and_causal_over_ray_actors(ray_session, setup, tmp_path):
    """The same drivers with Ray rollout-worker actors and model-server actors: router specs and
    Router objects are shipped to the actors, episodes come back and are written by the driver."""
    import dataclasses

    from dmr_rl.pipeline import causal, evaluate
    from dmr_rl.serving import launcher
    from dmr_rl.serving.fake_backend import FakeBackend

    cfg0, ckpt, _ = setup
    cfg = dataclasses.replace(cfg0, run_dir=str(tmp_path),
                              eval=dataclasses.replace(cfg0.eval, seeds=[0, 1], episodes=3, thresholds=[0.5]))
    specs = {t: functools.partial(FakeBackend, salt=t) for t in ("hp", "lp")}
    clients = launcher.create_tier_clients(cfg, ("hp", "lp"), backend_specs=specs)
    group = launcher.create_rollout_group(cfg, clients, tmp_path / "eval" / "_worker_shards", num_workers=2,
                                          envs_per_worker=2, split=cfg.env.eval_split)
    try:
        path = evaluate.run(cfg, str(ckpt), group=group, methods=["lp_only", "first_k", "router"], progress=False)
        cpath = causal.run(cfg, str(ckpt), group=group, episodes=3, flag_share=0.4, progress=False)
    finally:
        launcher.shutdown_all(group, clients)
    res = json.loads(path.read_text())
    assert set(res["methods"]) == {"lp_only", "first_k", "router"}
    for s in (0, 1):
        eps = _eps(cfg, "first_k", "k1", s)
        assert len(eps) == 3 and {e.extra["worker"] for e in eps} == {0, 1}  # spread over both actors
        assert all(st.tier == int(st.step < 1) for e in eps for st in e.steps)
    assert json.loads(cpath.read_text())["counts"]["0"]["reference"] == 3
