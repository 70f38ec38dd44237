"""Per-episode generators: the same episode whatever the batching, worker count or order."""
from __future__ import annotations

import numpy as np
import pytest

from dmr_rl.rollout.envs import EnvSpec
from dmr_rl.rollout.group import RolloutGroup
from dmr_rl.rollout.worker import RolloutWorker
from dmr_rl.seeding import RowRngs, episode_rng, key_words, occurrence_draws
from dmr_rl.serving.clients import LocalTierClient
from dmr_rl.serving.fake_backend import FakeBackend


def test_episode_rng_is_keyed_stably_and_draws_count_repeats():
    a = episode_rng(0, "random", "ratio0.25", 1, 7, 0).random(4)
    np.testing.assert_array_equal(a, episode_rng(0, "random", "ratio0.25", 1, 7, 0).random(4))
    for other in [(1, "random", "ratio0.25", 1, 7, 0), (0, "first_k", "ratio0.25", 1, 7, 0),
                  (0, "random", "ratio0.40", 1, 7, 0), (0, "random", "ratio0.25", 2, 7, 0),
                  (0, "random", "ratio0.25", 1, 8, 0), (0, "random", "ratio0.25", 1, 7, 1)]:
        assert not np.array_equal(a, episode_rng(*other).random(4)), other
    # SHA-256 of the key: a fixed value, the same in every process and Python version
    assert key_words(0, "m", "p")[0] == key_words(0, "m", "p")[0]
    assert key_words(1, "m") != key_words("1", "m")
    assert occurrence_draws([3, 1, 3, 3, 1]) == [0, 0, 1, 2, 1]


def test_row_rngs_give_each_row_its_own_stream_and_refuse_mixing():
    gens = [np.random.default_rng(k) for k in range(3)]
    rows = RowRngs([np.random.default_rng(k) for k in range(3)])
    np.testing.assert_array_equal(rows.random(3), [g.random() for g in gens])
    assert rows.row(1).random() == gens[1].random()
    with pytest.raises(ValueError, match="one value per row"):
        rows.random(2)


def _episodes(alfworld_data, tmp_path, n_workers, n_envs, tasks, method="random_mixed", temperature=0.0):
    from dmr_rl.rollout.worker import ActingSpec

    spec = EnvSpec("alfworld", alfworld_data, "train", max_steps=4)
    clients = {"hp": LocalTierClient("hp", FakeBackend("hp")), "lp": LocalTierClient("lp", FakeBackend("lp"))}
    workers = [RolloutWorker(i, clients, spec, num_envs=n_envs, shard_dir=str(tmp_path),
                             acting=ActingSpec(temperature=temperature)) for i in range(n_workers)]
    group = RolloutGroup(workers, tmp_path, local=True)
    eps = group.run_episodes(tasks, "mixed", seed=3, return_episodes=True, rng_key=(9, "random", "ratio0.50"),
                             chunk=3 if n_workers == 1 else 0)["episode_records"]
    return {(e.task_index, e.extra["draw"]): [(s.tier, s.action) for s in e.steps] for e in eps}, eps


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_random_routing_and_sampled_actions_do_not_depend_on_batching_or_workers(alfworld_data, tmp_path,
                                                                                temperature):
    tasks = [0, 1, 2, 0, 3, 0]
    one, eps = _episodes(alfworld_data, tmp_path / "a", 1, 1, tasks, temperature=temperature)
    many, _ = _episodes(alfworld_data, tmp_path / "b", 3, 2, tasks, temperature=temperature)
    order, _ = _episodes(alfworld_data, tmp_path / "c", 2, 3, tasks[::-1], temperature=temperature)
    assert one == many == order
    assert sorted(one) == [(0, 0), (0, 1), (0, 2), (1, 0), (2, 0), (3, 0)]
    # a task listed three times got three different draws, and the routing is really random
    steps = [x for v in one.values() for x in v]
    assert 0 < sum(t for t, _ in steps) < len(steps)
    assert len({tuple(one[(0, d)]) for d in range(3)}) > 1
    assert len({e.episode_id for e in eps}) == len(tasks)
