"""Rollout workers: whole trajectories recorded, routing and cost accounting, durable shards."""
from __future__ import annotations

import functools
import time

import numpy as np
import pytest

from dmr_rl.config import TierConfig
from dmr_rl.errors import ActorError
from dmr_rl.rollout.envs import EnvSpec
from dmr_rl.rollout.records import HP, LP, TrajectoryStore
from dmr_rl.rollout.group import RolloutGroup
from dmr_rl.rollout.worker import RolloutWorker
from dmr_rl.serving.clients import LocalTierClient
from dmr_rl.serving.fake_backend import FakeBackend

HP_BYTES, LP_BYTES = 1e6, 2e5


def _clients(lp_salt="lp"):
    return {"hp": LocalTierClient("hp", FakeBackend("hp", weight_bytes=HP_BYTES)),
            "lp": LocalTierClient("lp", FakeBackend(lp_salt, weight_bytes=LP_BYTES))}


def test_worker_records_whole_trajectories_with_tiers_costs_and_kl(alfworld_data, tmp_path):
    spec = EnvSpec("alfworld", alfworld_data, "train", max_steps=4)
    w = RolloutWorker(0, _clients(), spec, num_envs=2, shard_dir=str(tmp_path), record_kl=True)
    summary = w.run_episodes([0, 1, 2], method="mixed", seed=3)
    eps = TrajectoryStore.read(tmp_path)
    assert summary["episodes"] == len(eps) == 3
    assert sorted(e.task_index for e in eps) == [0, 1, 2]
    assert len({e.episode_id for e in eps}) == 3
    steps = [s for e in eps for s in e.steps]
    assert summary["steps"] == len(steps) > 3
    assert {s.tier for s in steps} == {HP, LP}  # mixed: a random tier per step
    for e in eps:
        assert [s.step for s in e.steps] == list(range(e.length))
        for prev, nxt in zip(e.steps, e.steps[1:]):
            assert nxt.prompt.count(">") >= 1 and prev.action in nxt.prompt  # history carried
    for s in steps:
        assert s.action in s.admissible and s.prompt.endswith(">")
        assert s.router_prob == 0.5 and np.isclose(s.router_logprob, np.log(0.5))
        assert s.weight_bytes == (HP_BYTES if s.tier == HP else LP_BYTES)  # only the chosen tier is paid
        assert s.prompt_tokens > 0 and s.latency_s > 0
        assert s.kl is not None and s.kl >= 0
    assert any(s.kl > 1e-3 for s in steps)  # different "models" disagree somewhere


def test_cascade_pays_both_tiers_on_escalated_steps_and_same_model_kl_is_zero(alfworld_data, tmp_path):
    spec = EnvSpec("alfworld", alfworld_data, "train", max_steps=4)
    w = RolloutWorker(0, _clients(lp_salt="hp"), spec, num_envs=2, shard_dir=str(tmp_path), record_kl=True)
    w.run_episodes([0, 1], method="cascade")
    steps = [s for e in TrajectoryStore.read(tmp_path) for s in e.steps]
    assert all(s.kl == pytest.approx(0.0, abs=1e-12) for s in steps)
    w2 = RolloutWorker(1, _clients(), spec, num_envs=2, shard_dir=str(tmp_path / "c"))
    w2.run_episodes([0, 1, 3], method="cascade")
    steps = [s for e in TrajectoryStore.read(tmp_path / "c") for s in e.steps]
    for s in steps:
        assert (s.kl is None) == (s.tier == LP)  # measured (for free) where both tiers ran
        want = HP_BYTES + LP_BYTES if s.tier == HP else LP_BYTES
        assert s.weight_bytes == want and s.extra["paid"] == (["hp", "lp"] if s.tier == HP else ["lp"])


def test_rollout_fn_groups_episodes_and_pushes_router_weights(alfworld_data, tmp_path):
    from dmr_rl.config import RouterConfig

    spec = EnvSpec("alfworld", alfworld_data, "train", max_steps=3)
    router = {"name": "transformer", "kwargs": {"config": RouterConfig(d_model=16, n_heads=2, max_tokens=64),
                                                "num_threads": 1}}
    workers = [RolloutWorker(i, _clients(), spec, num_envs=2, shard_dir=str(tmp_path), router=router) for i in range(2)]
    group = RolloutGroup(workers, tmp_path, local=True)
    weights = {k: np.zeros_like(v) for k, v in workers[0].router.get_weights().items()}
    eps = group.rollout_fn(weights, task_indices=[2, 0], group_size=3, seed=5)
    assert [(e.task_index, e.extra["group"], e.extra["member"]) for e in eps] == \
        [(2, 0, 0), (2, 0, 1), (2, 0, 2), (0, 1, 0), (0, 1, 1), (0, 1, 2)]
    steps = [s for e in eps for s in e.steps]
    # all-zero weights give logit 0: P(HP) = 0.5 everywhere, and decisions are sampled from it
    assert all(s.router_prob == pytest.approx(0.5) for s in steps)
    assert all(np.isclose(s.router_logprob, np.log(0.5)) for s in steps)
    assert 0 < sum(s.tier for s in steps) < len(steps)
    assert len(TrajectoryStore.read(tmp_path)) == 6


def test_killed_rollout_worker_loses_no_finished_trajectory(ray_session, alfworld_data, tmp_path):
    from dmr_rl.serving.launcher import create_model_servers, create_rollout_workers

    clients = {t: create_model_servers(t, TierConfig(max_wait_ms=0), functools.partial(FakeBackend, t, 0.02))
               for t in ("hp", "lp")}
    spec = EnvSpec("alfworld", alfworld_data, "train", max_steps=3)
    try:
        handles = create_rollout_workers(1, {"env_spec": spec, "num_envs": 2, "shard_dir": str(tmp_path)}, clients)
        group = RolloutGroup(handles, tmp_path)
        shard = tmp_path / "worker-0.jsonl"
        refs = group.run_episodes_async([0, 1, 2, 3] * 10, method="mixed", seed=0)
        deadline = time.time() + 120
        seen = 0
        while time.time() < deadline:
            seen = len(shard.read_text().splitlines()) if shard.exists() else 0
            if seen >= 3:
                break
            time.sleep(0.05)
        assert seen >= 3, "the worker finished no episode in time"
        ray_session.kill(handles[0])
        with pytest.raises(ray_session.exceptions.RayActorError):
            ray_session.get(refs[0], timeout=60)
        eps = TrajectoryStore.read(tmp_path)
        assert len(eps) >= seen and len(eps) < 40  # everything seen before the kill, and it was cut short
        for e in eps:
            assert 1 <= e.length <= 3 and all(s.action in s.admissible for s in e.steps)
        # the group reports the death with the shard that holds the finished episodes
        with pytest.raises(ActorError, match=r"rollout worker 0 died.*worker-0.jsonl"):
            group.run_episodes([0], method="hp")
    finally:
        for c in clients.values():
            c.shutdown()


def test_generate_mode_matches_text_to_admissible_and_records_token_kl(alfworld_data, tmp_path):
    from dmr_rl.rollout.worker import ActingSpec

    spec = EnvSpec("alfworld", alfworld_data, "train", max_steps=3)
    w = RolloutWorker(0, _clients(), spec, num_envs=2, shard_dir=str(tmp_path), record_kl=True,
                      acting=ActingSpec(action_mode="generate", max_new_tokens=4))
    s = w.run_episodes([0, 1], method="lp")
    steps = [x for e in TrajectoryStore.read(tmp_path) for x in e.steps]
    assert s["hp_ratio"] == 0.0 and len(steps) == s["steps"]
    for x in steps:
        assert x.tier == LP and x.action in x.admissible and x.extra["action_prob"] == 1.0  # one-hot
        assert x.gen_tokens > 0 and x.weight_bytes == LP_BYTES * (1 + x.gen_tokens)
        assert x.kl is not None and x.kl > 0  # teacher-forced token KL between different salts


def test_dead_model_server_surfaces_from_a_rollout_as_actor_error(ray_session, alfworld_data, tmp_path):
    from dmr_rl.serving.launcher import create_model_servers, create_rollout_workers

    clients = {t: create_model_servers(t, TierConfig(max_wait_ms=0), functools.partial(FakeBackend, t))
               for t in ("hp", "lp")}
    spec = EnvSpec("alfworld", alfworld_data, "train", max_steps=2)
    handles = create_rollout_workers(1, {"env_spec": spec, "num_envs": 1, "shard_dir": str(tmp_path)}, clients)
    group = RolloutGroup(handles, tmp_path)
    try:
        assert group.run_episodes([0], method="lp")["episodes"] == 1
        ray_session.kill(clients["lp"].handles[0])
        with pytest.raises(ActorError, match=r"tier 'lp' replica 0"):
            group.run_episodes([1], method="lp")
        assert len(TrajectoryStore.read(tmp_path)) == 1  # the finished episode is kept
    finally:
        group.shutdown()
        for c in clients.values():
            c.shutdown()


def test_lp_hidden_router_reads_the_lp_prompt_state_and_pays_for_it(alfworld_data, tmp_path):
    from dmr_rl.config import RouterConfig
    from dmr_rl.router.transformer import TransformerRouter
    from dmr_rl.serving.fake_backend import HIDDEN

    spec = EnvSpec("alfworld", alfworld_data, "train", max_steps=3)
    router = TransformerRouter(RouterConfig(d_model=16, n_heads=2, max_tokens=64, features="lp_hidden"),
                               hidden_dim=HIDDEN, threshold=0.0)  # P(HP) >= 0: always HP
    assert router.needs_lp_hidden
    clients = _clients()
    w = RolloutWorker(0, clients, spec, num_envs=2, shard_dir=str(tmp_path), router=router)
    w.run_episodes([0, 1], method="router")
    steps = [s for e in TrajectoryStore.read(tmp_path) for s in e.steps]
    assert steps and all(s.tier == HP for s in steps)
    lp_backend = clients["lp"].backend
    for s in steps:
        # the vector the LP backend gives for this very prompt, recorded for stage 1 / GRPO
        want = lp_backend.prompt_hidden([s.prompt])[0]
        np.testing.assert_allclose(s.extra["lp_hidden"], want, atol=1e-5)
        assert s.extra["paid"] == ["hp", "lp"] and s.weight_bytes == HP_BYTES + LP_BYTES
    assert lp_backend.cost.snapshot()["by_call"]["hidden"] >= len(steps) // 2
    # a baseline on the same worker neither reads nor pays the LP pass
    w.run_episodes([0], method="hp_only")
    last = TrajectoryStore.read(tmp_path)[-1]
    assert all("lp_hidden" not in s.extra and s.weight_bytes == HP_BYTES for s in last.steps)


def test_a_router_reading_an_inner_lp_layer_pays_that_share_of_an_lp_call(alfworld_data, tmp_path):
    """hidden_layer=k: the worker asks LP for layer k's state (fake LP: 4 layers), records it, and
    charges k/4 of an LP call (extra["lp_part"], bytes) on steps HP acts on; on LP's own steps the
    pass is the start of LP's call, so nothing is added to the calls."""
    from dmr_rl.config import RouterConfig
    from dmr_rl.report.metrics import step_calls
    from dmr_rl.router.transformer import TransformerRouter
    from dmr_rl.serving.fake_backend import HIDDEN

    spec = EnvSpec("alfworld", alfworld_data, "train", max_steps=3)
    clients = _clients()
    lp_backend = clients["lp"].backend
    for threshold, tier in ((0.0, HP), (1.1, LP)):  # P(HP) >= 0: always HP; > 1: never
        router = TransformerRouter(RouterConfig(n_layers=0, features="lp_hidden", hidden_layer=2),
                                   hidden_dim=HIDDEN, threshold=threshold)
        assert router.hidden_layer == 2
        out = tmp_path / str(tier)
        RolloutWorker(0, clients, spec, num_envs=1, shard_dir=str(out), router=router).run_episodes([0], method="router")
        steps = TrajectoryStore.read(out)[0].steps
        assert steps and all(s.tier == tier for s in steps)
        for s in steps:
            np.testing.assert_allclose(s.extra["lp_hidden"], lp_backend.prompt_hidden([s.prompt], 2)[0], atol=1e-5)
            assert np.abs(np.subtract(s.extra["lp_hidden"], lp_backend.prompt_hidden([s.prompt])[0])).max() > 1e-3
            if tier == HP:
                assert s.extra["paid"] == ["hp"] and s.extra["lp_part"] == 0.5
                assert s.weight_bytes == HP_BYTES + 0.5 * LP_BYTES and step_calls(s) == (1, 1.5)
            else:
                assert s.extra["paid"] == ["lp"] and "lp_part" not in s.extra and step_calls(s) == (0, 1)
    # the causal check's reference wraps the router (HP acting, P(HP) recorded): it must read the same
    # layer, so its P(HP) on HP's trajectory is the router's own (a probe with random weights)
    from dmr_rl.pipeline.causal import ShadowRouter

    router = TransformerRouter(RouterConfig(n_layers=0, features="lp_hidden", hidden_layer=2),
                               hidden_dim=HIDDEN, threshold=0.0)
    router.set_weights({k: np.random.default_rng(1).normal(size=v.shape).astype(np.float32) if k.endswith("weight")
                        else v for k, v in router.get_weights().items()})
    probs = {}
    for name, r in (("router", router), ("shadow", ShadowRouter(router))):
        out = tmp_path / name
        RolloutWorker(2, clients, spec, num_envs=1, shard_dir=str(out), router=r).run_episodes([0], method="router")
        probs[name] = [s.router_prob for s in TrajectoryStore.read(out)[0].steps]
    assert probs["router"] and len(set(np.round(probs["router"], 4))) > 1  # the weights make P(HP) vary
    np.testing.assert_allclose(probs["shadow"], probs["router"], atol=1e-5)
    deep = TransformerRouter(RouterConfig(n_layers=0, features="lp_hidden", hidden_layer=5), hidden_dim=HIDDEN)
    with pytest.raises(ValueError, match="reads LP layer 5, but the LP tier reports 4"):
        RolloutWorker(1, clients, spec, num_envs=1, shard_dir=str(tmp_path / "deep"), router=deep).run_episodes(
            [0], method="router")


def test_record_hidden_keeps_the_lp_state_on_hp_trajectories_and_needs_an_lp_tier(alfworld_data, tmp_path):
    spec = EnvSpec("alfworld", alfworld_data, "train", max_steps=2)
    w = RolloutWorker(0, _clients(), spec, num_envs=1, shard_dir=str(tmp_path), record_hidden=True)
    w.run_episodes([0], method="hp")
    steps = TrajectoryStore.read(tmp_path)[0].steps
    assert all(len(s.extra["lp_hidden"]) == 8 and s.tier == HP for s in steps)
    only_hp = {"hp": _clients()["hp"]}
    w2 = RolloutWorker(1, only_hp, spec, num_envs=1, shard_dir=str(tmp_path / "b"), record_hidden=True)
    with pytest.raises(ValueError, match="needs the LP tier"):
        w2.run_episodes([0], method="hp")


def test_bench_pipeline_measures_the_lp_hidden_router_on_fake_tiers(ray_session, alfworld_data, tmp_path):
    """experiments/bench_pipeline.py with the default preset's router (a probe on an inner LP layer):
    the LP prompt pass up to that layer is measured and counted in the overhead, and rollout workers
    route with it."""
    import sys
    from argparse import Namespace
    from pathlib import Path

    from dmr_rl.config import load_config

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "experiments"))
    import bench_pipeline

    cfg = load_config(None, [f"run_dir={tmp_path}", f"env.data_dir={alfworld_data}", "env.max_steps=3",
                             "router.features=lp_hidden", "router.hidden_layer=2", "router.n_layers=0",
                             "collect.envs_per_worker=2", "router.max_tokens=64"])
    specs = bench_pipeline._specs(cfg, Namespace(fake=True, fake_delay_ms=1.0))
    over = bench_pipeline.routing_overhead(cfg, specs, reps=2)
    assert over["features"] == "lp_hidden" and over["hidden_dim"] == 8 and over["lp_hidden_ms"] > 0
    assert over["lp_hidden_layer"] == 2  # the pass stops where the default's router reads (fake LP: 4 layers)
    assert over["router_pct_of_lp_step"] == pytest.approx(100 * (over["router_ms"] + over["lp_hidden_ms"])
                                                          / over["lp_step_ms"])
    rows = bench_pipeline.throughput(cfg, specs, [1], episodes=2, hidden_dim=over["hidden_dim"])
    assert rows[0]["episodes"] == 2 and rows[0]["steps"] > 0


def test_an_escalating_router_hands_unsure_lp_steps_to_hp_and_pays_both(alfworld_data, tmp_path):
    from dmr_rl.config import RouterConfig
    from dmr_rl.router.transformer import TransformerRouter

    spec = EnvSpec("alfworld", alfworld_data, "train", max_steps=5)
    cfg = RouterConfig(d_model=16, n_heads=2, max_tokens=64)
    # threshold 1.01: the network gives LP every step; what HP gets comes from LP's confidence alone
    plain = RolloutWorker(0, _clients(), spec, num_envs=2, shard_dir=str(tmp_path / "plain"),
                          router=TransformerRouter(cfg, threshold=1.01))
    plain.run_episodes([0, 1, 2], method="router")
    lp_max = [s.extra["lp_max_prob"] for e in TrajectoryStore.read(tmp_path / "plain") for s in e.steps]
    floor = float(np.median(lp_max))  # about half of LP's first steps are below it
    router = TransformerRouter(cfg, threshold=1.01, lp_escalate_below=floor)
    assert router.escalates
    w = RolloutWorker(1, _clients(), spec, num_envs=2, shard_dir=str(tmp_path / "esc"), router=router)
    w.run_episodes([0, 1, 2], method="router")
    steps = [s for e in TrajectoryStore.read(tmp_path / "esc") for s in e.steps]
    up = [s for s in steps if s.extra.get("escalated")]
    assert up and len(up) < len(steps)
    for s in steps:
        assert "lp_max_prob" in s.extra  # LP's pass ran on every step (the network gave it all of them)
        unsure = s.extra["lp_max_prob"] < floor
        assert s.extra.get("escalated", False) == unsure and s.tier == (HP if unsure else LP)
        assert s.weight_bytes == (HP_BYTES + LP_BYTES if unsure else LP_BYTES)
        assert s.extra["paid"] == (["hp", "lp"] if unsure else ["lp"])
        assert ("tiers_agree" in s.extra) == unsure  # both tiers ran there: flips are seen for free
        assert s.router_prob < 1.01  # the network's P(HP) is what the step records, not the escalation
    # the HP tier's action is the one taken on an escalated step
    hp = _clients()["hp"]
    for s in up[:3]:
        scores, _ = hp.score_actions_costed([s.prompt], [s.admissible])
        assert s.action == s.admissible[int(np.argmax(scores[0].sum_logprobs))]
