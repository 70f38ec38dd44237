"""Per-episode sessions through the served path: model server, tier clients, rollout workers.

Contract: a session id per episode lets a tier keep the episode's KV cache between its steps;
results are the same with and without sessions (and after a resend to a replica that holds a
stale cache or none), workers end the sessions of finished episodes on the tiers that served
them, and a client sends its session-carrying requests to one stable replica.
"""
from __future__ import annotations

import asyncio
import functools
import time

import numpy as np
import pytest

from dmr_rl.config import TierConfig
from dmr_rl.rollout.envs import EnvSpec
from dmr_rl.rollout.worker import ActingSpec, RolloutWorker
from dmr_rl.serving.clients import LocalTierClient
from dmr_rl.serving.fake_backend import FakeBackend
from dmr_rl.serving.model_server import ModelServer

# consecutive steps of two episodes: prompts grow, one changes its tail, one shrinks
EP_A = ["Task: put a mug in the fridge.\n> go to cabinet 1\nYou see a mug 1.\n>",
        "Task: put a mug in the fridge.\n> go to cabinet 1\nYou see a mug 1.\n> take mug 1\nYou take it.\n>",
        "Task: put a mug in the fridge.\n> go to cabinet 1\nYou see a mug 1.\n> look\nNothing.\n>",
        "Task: put a mug in the fridge.\n>"]
EP_B = ["Task: heat an egg.\n>", "Task: heat an egg.\n> go to microwave 1\nThe microwave 1 is closed.\n>",
        "Task: heat an egg.\n> go to microwave 1\nThe microwave 1 is closed.\n> open microwave 1\nYou open it.\n>",
        "Task: heat an egg.\n> go to microwave 1\nThe microwave 1 is closed.\n> open microwave 1\nYou open it.\n"
        "> heat egg 1 with microwave 1\nDone.\n>"]
CANDS = ["go to cabinet 1", "go to cabinet 2", "take mug 1 from cabinet 1", "look", "open microwave 1"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from dmr_rl.models.checkpoints import make_tiny_checkpoint

    return str(make_tiny_checkpoint(tmp_path_factory.mktemp("tiny_sessions"), arch="qwen3", seed=5))


def _tiny_backend(path, **kw):
    from dmr_rl.models import load_backend

    return load_backend(model_path=path, dtype="float32", **kw)


def _close(a, b):
    for x, y in zip(a, b):
        np.testing.assert_allclose(x.sum_logprobs, y.sum_logprobs, atol=1e-4)
        assert x.num_tokens.tolist() == y.num_tokens.tolist()


def test_model_server_sessions_same_scores_hits_and_end(tiny):
    """Two workers' one-row requests share each forward, each row keeps its own session; scores
    equal the uncached backend's; the cache is hit; end_sessions empties it."""
    server = ModelServer("hp", 0, functools.partial(_tiny_backend, tiny), max_batch_size=8, max_wait_ms=200)
    plain = LocalTierClient("hp", _tiny_backend(tiny, max_sessions=0))

    async def play():
        got = []
        for pa, pb in zip(EP_A, EP_B):
            (ra, _), (rb, _) = await asyncio.gather(server.score_actions([pa], [CANDS], sessions=["a"]),
                                                    server.score_actions([pb], [CANDS[:3]], sessions=["b"]))
            got.append((ra, rb))
        unsessioned, _ = await server.score_actions(EP_A[:2], [CANDS, CANDS])
        return got, unsessioned

    got, unsessioned = asyncio.run(play())
    for (ra, rb), pa, pb in zip(got, EP_A, EP_B):
        _close(ra + rb, plain.score_actions([pa, pb], [CANDS, CANDS[:3]]))
    _close(unsessioned, plain.score_actions(EP_A[:2], [CANDS, CANDS]))
    assert server.stats()["max_rows_in_batch"] == 2  # the two sessions rode in one forward
    cache = server.info()["session_cache"]
    assert cache["hits"] == 2 * (len(EP_A) - 1) and cache["reused_tokens"] > 0 and cache["sessions"] == 2
    assert asyncio.run(server.end_sessions(["a", "b", "unknown"])) == 3
    assert server.info()["session_cache"]["sessions"] == 0
    with pytest.raises(ValueError, match="2 prompts but 1 session ids"):
        asyncio.run(server.score_actions(EP_A[:2], [CANDS, CANDS], sessions=["a"]))


def test_resends_between_replicas_with_stale_caches_give_the_same_scores(tiny):
    """An episode whose steps land on two replicas in turn (as after resends): each replica holds
    a cache from two steps back, reused only over the verified common token prefix."""
    replicas = [ModelServer("lp", i, functools.partial(_tiny_backend, tiny)) for i in range(2)]
    plain = _tiny_backend(tiny, max_sessions=0)
    steps = EP_A + EP_B  # the second half shares no prefix with the stale cache

    async def play():
        return [(await replicas[k % 2].score_actions([p], [CANDS], sessions=["ep"]))[0][0]
                for k, p in enumerate(steps)]

    for k, (got, p) in enumerate(zip(asyncio.run(play()), steps)):
        _close([got], plain.score_actions([p], [CANDS]))
    hits = [r.info()["session_cache"]["hits"] for r in replicas]
    assert hits == [(len(steps) + 1) // 2 - 1, len(steps) // 2 - 1]


def test_local_client_passes_sessions_only_when_given():
    be = FakeBackend("hp")
    client = LocalTierClient("hp", be)
    ref = client.score_actions(EP_A[:2], [CANDS, CANDS])
    assert be.session_calls == 0
    got = client.score_actions(EP_A[:2], [CANDS, CANDS], sessions=["x", None])
    assert be.session_calls == 1 and all((a.sum_logprobs == b.sum_logprobs).all() for a, b in zip(ref, got))
    client.end_sessions(["x"])
    client.end_sessions([])
    assert be.ended == ["x"]


def _fake_clients():
    return {t: LocalTierClient(t, FakeBackend(t)) for t in ("hp", "lp")}


def test_worker_ends_sessions_only_on_tiers_that_served_the_episode(alfworld_data, tmp_path):
    spec = EnvSpec("alfworld", alfworld_data, "train", max_steps=3)
    clients = _fake_clients()
    w = RolloutWorker(2, clients, spec, num_envs=2, shard_dir=str(tmp_path))
    w.run_episodes([0, 1, 2], method="lp")
    hp, lp = clients["hp"].backend, clients["lp"].backend
    assert hp.session_calls == 0 and hp.ended == []
    assert lp.session_calls == sum(e.length for e in w.store.read(tmp_path)) and len(lp.ended) == 3
    assert len(set(lp.ended)) == 3 and all(s.startswith("w2-") for s in lp.ended)
    w.run_episodes([0, 1, 2], method="lp")  # the same tasks again: new ids (one per episode played)
    assert len(set(lp.ended)) == 6
    g = RolloutWorker(3, _fake_clients(), spec, num_envs=2, shard_dir=str(tmp_path / "g"),
                      acting=ActingSpec(action_mode="generate"))
    g.run_episodes([0, 1], method="mixed", seed=1)
    assert all(c.backend.session_calls == 0 and c.backend.ended == [] for c in g.clients.values())


def test_worker_episodes_on_a_tiny_model_hit_the_cache_and_match_sessionless_play(alfworld_data, tmp_path, tiny):
    """The same episodes with sessions on and off: identical actions and action probabilities;
    with sessions the caches are hit, and empty once every episode ended."""
    spec = EnvSpec("alfworld", alfworld_data, "train", max_steps=4)
    played = {}
    for on in (True, False):
        clients = {t: LocalTierClient(t, _tiny_backend(tiny)) for t in ("hp", "lp")}
        w = RolloutWorker(0, clients, spec, num_envs=2, shard_dir=str(tmp_path / str(on)),
                          acting=ActingSpec(sessions=on))
        s = w.run_episodes([0, 1, 2], method="mixed", seed=4, return_episodes=True)
        played[on] = {e.episode_id: e for e in s["episode_records"]}
        caches = [c.backend.info()["session_cache"] for c in clients.values()]
        if on:
            assert sum(c["hits"] for c in caches) > 0 and sum(c["reused_tokens"] for c in caches) > 0
            assert all(c["sessions"] == 0 for c in caches), caches  # ended with their episodes
        else:
            assert all(c["hits"] == c["misses"] == 0 for c in caches)
    assert played[True].keys() == played[False].keys()
    for eid, e in played[True].items():
        f = played[False][eid]
        assert [(x.tier, x.action) for x in e.steps] == [(x.tier, x.action) for x in f.steps]
        np.testing.assert_allclose([x.extra["action_prob"] for x in e.steps],
                                   [x.extra["action_prob"] for x in f.steps], atol=1e-4)


def _wait_for(fn, timeout_s=30.0):
    end = time.time() + timeout_s
    while time.time() < end:
        if fn():
            return True
        time.sleep(0.05)
    return False


def test_ray_sessions_go_home_survive_a_dead_replica_and_servers_run_one_thread(ray_session):
    from dmr_rl.serving.launcher import create_model_servers

    base = create_model_servers("lp", TierConfig(num_replicas=2, max_wait_ms=0), functools.partial(FakeBackend, "lp"),
                                max_restarts=0)
    try:
        infos = ray_session.get([h.info.remote() for h in base.handles])
        assert [i["server_torch_threads"] for i in infos] == [1, 1]  # Ray CPU share 0.25 -> one thread
        client = base.with_offset(3)  # home replica 3 % 2 = 1
        ref = FakeBackend("lp")
        assert client.home_replica() == 1
        for k in range(4):
            got = client.score_actions([EP_A[k], EP_B[k]], [CANDS, CANDS], sessions=["a", "b"])
            _close(got, ref.score_actions([EP_A[k], EP_B[k]], [CANDS, CANDS]))
        assert client.sent == [0, 4]
        for _ in range(4):  # no sessions: balanced as before
            client.score_actions(EP_A[:1], [CANDS])
        assert client.sent[0] >= 1
        client.end_sessions(["a"])
        assert _wait_for(lambda: ray_session.get(base.handles[1].info.remote())["ended_sessions"] == 1)
        infos = ray_session.get([h.info.remote() for h in base.handles])
        assert [i["session_calls"] for i in infos] == [0, 8] and infos[0]["ended_sessions"] == 0
        ray_session.kill(base.handles[1])  # the home replica dies for good
        got = client.score_actions([EP_A[3]], [CANDS], sessions=["b"])  # resent to replica 0
        _close(got, ref.score_actions([EP_A[3]], [CANDS]))
        assert client.home_replica() == 0 and client.drain_notes()[0]["outcome"].startswith("restarts exhausted")
        client.end_sessions(["b"])  # replica 1 is dead: skipped; replica 0 served b's resend
        assert _wait_for(lambda: ray_session.get(base.handles[0].info.remote())["ended_sessions"] == 1)
        client.end_sessions(["never-sent"])  # nothing to tell anyone
    finally:
        base.shutdown()


def test_bench_pipeline_sessions_section_on_fake_tiers(ray_session, alfworld_data, tmp_path):
    """experiments/bench_pipeline.py --sections sessions: the same episodes with sessions on and
    off through model servers, both rates measured, the same actions played."""
    import sys
    from argparse import Namespace
    from pathlib import Path

    from dmr_rl.config import load_config

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "experiments"))
    import bench_pipeline

    cfg = load_config(None, [f"run_dir={tmp_path}", f"env.data_dir={alfworld_data}", "env.max_steps=3",
                             "collect.envs_per_worker=2", "router.max_tokens=64"])
    specs = bench_pipeline._specs(cfg, Namespace(fake=True, fake_delay_ms=1.0))
    rows = bench_pipeline.sessions_throughput(cfg, specs, [1], episodes=2, method="random", reps=1)
    assert len(rows) == 1 and rows[0]["steps"] > 0 and rows[0]["same_actions"] is True
    assert rows[0]["on_steps_per_s"] > 0 and rows[0]["off_steps_per_s"] > 0
