"""Faults during an evaluation point: a killed model server and a killed rollout worker are
restarted by Ray, in-flight requests are resent, finished episodes are reused, and the point
ends with exactly the episodes of an undisturbed run."""
from __future__ import annotations

import functools
import os
import signal
import threading
import time

import pytest

from dmr_rl.config import TierConfig
from dmr_rl.errors import ActorError
from dmr_rl.rollout.envs import EnvSpec
from dmr_rl.rollout.group import RolloutGroup
from dmr_rl.rollout.records import HP, TrajectoryStore
from dmr_rl.serving.fake_backend import FakeBackend

TASKS = [0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5, 0, 1, 2, 3]
KEY = (7, "random", "ratio0.50")


def _start(alfworld_data, shard_dir, max_restarts=2, delay=0.03):
    from dmr_rl.serving.launcher import create_model_servers, create_rollout_workers

    clients = {t: create_model_servers(t, TierConfig(max_wait_ms=0), functools.partial(FakeBackend, t, delay),
                                       max_restarts=max_restarts) for t in ("hp", "lp")}
    spec = EnvSpec("alfworld", alfworld_data, "train", max_steps=4)
    handles = create_rollout_workers(2, {"env_spec": spec, "num_envs": 2, "shard_dir": str(shard_dir)}, clients,
                                     max_restarts=max_restarts)
    return clients, RolloutGroup(handles, shard_dir)


def _stop(clients, group):
    group.shutdown()
    for c in clients.values():
        c.shutdown()


def _by_position(summary) -> dict:
    return {e.extra["position"]: (e.task_index, e.episode_id, e.won,
                                  [(s.tier, s.action, s.obs, round(s.router_prob, 6)) for s in e.steps])
            for e in summary["episode_records"]}


def _pid(ray, handle) -> int:
    return int(ray.get(handle.ready.remote(), timeout=60)["pid"])


def _kill_when(path, lines: int, pids: list, deadline_s: float = 120.0) -> threading.Thread:
    """SIGKILL ``pids`` once ``path`` holds ``lines`` lines (episodes finished before the kill)."""
    def run():
        end = time.time() + deadline_s
        while time.time() < end:
            if path.exists() and len(path.read_text().splitlines()) >= lines:
                break
            time.sleep(0.01)
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_point_survives_a_killed_model_server_and_rollout_worker(ray_session, alfworld_data, tmp_path):
    clients, group = _start(alfworld_data, tmp_path / "shards")
    try:
        calm = group.run_episodes(TASKS, "mixed", seed=1, return_episodes=True, rng_key=KEY)
        assert calm["episodes"] == len(TASKS) and "fault_notes" not in calm
        shard = group.shard_path(1)
        before = len(shard.read_text().splitlines())
        lines = []
        group.on_note = lines.append
        killer = _kill_when(shard, before + 2, [_pid(ray_session, clients["lp"].handles[0]),
                                                _pid(ray_session, group.workers[1])])
        hurt = group.run_episodes(TASKS, "mixed", seed=1, return_episodes=True, rng_key=KEY)
        killer.join()
        assert _by_position(hurt) == _by_position(calm)  # episode by episode, step by step
        assert hurt["fault_notes"] == lines
        worker = [ln for ln in lines if ln.startswith("rollout worker 1 died; restarted;")]
        assert len(worker) == 1, lines
        reused = int(worker[0].split("; ")[2].split()[0])
        assert reused >= 2  # the episodes it finished before the kill were kept, not replayed
        server = [ln for ln in lines if ln.startswith("model server lp/0 died; restarted;")]
        assert len(server) <= 1, lines  # (one line, unless no LP request was in flight at the kill)
        # the restarted actors serve the next point
        assert group.run_episodes([0, 1], "lp", seed=0)["episodes"] == 2
        assert group.run_episodes([0, 1], "mixed", seed=0, rng_key=KEY)["episodes"] == 2
        # a worker killed between two points: the next point's router reaches its restarted self
        os.kill(_pid(ray_session, group.workers[0]), signal.SIGKILL)
        group.set_router({"name": "random", "kwargs": {"hp_ratio": 1.0}})
        s = group.run_episodes([0, 1, 2, 3], "router", seed=0, return_episodes=True)
        assert s["episodes"] == 4 and {e.extra["worker"] for e in s["episode_records"]} == {0, 1}
        assert all(st.tier == HP for e in s["episode_records"] for st in e.steps)
    finally:
        _stop(clients, group)


def test_model_server_death_mid_request_is_resent_and_counted(ray_session, alfworld_data, tmp_path):
    clients, group = _start(alfworld_data, tmp_path, delay=0.3)
    try:
        ref = clients["lp"].score_actions_ref(["> "] * 3, [["look", "go to sink 1"]] * 3)
        time.sleep(0.1)  # the request is in the server's batch now
        os.kill(_pid(ray_session, clients["lp"].handles[0]), signal.SIGKILL)
        results, costs = clients["lp"].get(ref)
        assert len(results) == len(costs) == 3
        assert clients["lp"].drain_notes() == [{"tier": "lp", "replica": 0, "outcome": "restarted", "resent": 1}]
    finally:
        _stop(clients, group)


def test_restarts_exhausted_end_in_one_actor_error(ray_session, alfworld_data, tmp_path):
    clients, group = _start(alfworld_data, tmp_path, max_restarts=0)
    try:
        assert group.run_episodes([0], "lp", seed=0)["episodes"] == 1
        os.kill(_pid(ray_session, clients["lp"].handles[0]), signal.SIGKILL)
        with pytest.raises(ActorError, match=r"tier 'lp' replica 0 .*no replica of the tier is left") as e:
            group.run_episodes([1, 2], "lp", seed=0)
        assert "\n" not in str(e.value)
        for h in group.workers:
            os.kill(_pid(ray_session, h), signal.SIGKILL)
        with pytest.raises(ActorError, match=r"rollout worker \d died.*no rollout worker is left"):
            group.run_episodes([1, 2], "hp", seed=0)
        assert len(TrajectoryStore.read(tmp_path)) >= 1  # what was finished is kept
    finally:
        _stop(clients, group)
