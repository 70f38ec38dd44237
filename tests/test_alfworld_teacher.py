"""ExplorerExpert: wins every task type from observations alone, deterministically."""
from __future__ import annotations

import pytest

pytest.importorskip("alfworld")
pytest.importorskip("textworld")

from environments import make_env  # noqa: E402
from environments.alfworld import rooms  # noqa: E402
from environments.alfworld.teacher import ExplorerExpert, parse_items, parse_task  # noqa: E402
from environments.policies import POLICIES  # noqa: E402
from environments.runner import run_episode  # noqa: E402


def test_parse_task_and_items():
    assert parse_task("put a clean mug in coffeemachine") == ("pick_clean_then_place_in_recep", "mug",
                                                              "coffeemachine")
    assert parse_task("put some apple on countertop") == ("pick_and_place_simple", "apple", "countertop")
    assert parse_task("find two pen and put them in drawer")[0] == "pick_two_obj_and_place"
    assert parse_task("examine the book with the desklamp") == ("look_at_obj_in_light", "book", "desklamp")
    with pytest.raises(ValueError):
        parse_task("make coffee")
    assert parse_items("a apple 1, a mug 2, and a cup 1.") == ["apple 1", "mug 2", "cup 1"]
    assert parse_items("a apple 1, and a egg 2.") == ["apple 1", "egg 2"]
    assert parse_items("nothing.") == []


@pytest.mark.parametrize("prefer_likely", [False, True])
def test_explorer_wins_every_task_type(alfworld_data, prefer_likely):
    env = make_env("alfworld", alfworld_data, "valid_unseen")
    won = {}
    for i, game in enumerate(env.games):
        result = run_episode(env, ExplorerExpert(prefer_likely=prefer_likely), i, record_actions=True)
        won.setdefault(game.task_type, []).append(result.won)
        assert result.steps <= 50
    assert set(won) == set(rooms.TASK_TYPES)
    assert all(all(v) for v in won.values()), won


def test_plain_search_visits_places_in_admissible_order(alfworld_data):
    """Without the prior, the n-th new place searched is the first admissible "go to" place not
    visited yet: what the agent's prompt lists first under "Unvisited"."""
    env = make_env("alfworld", alfworld_data, "train")
    for i in range(min(6, env.num_tasks)):
        obs, info = env.reset(options={"task_index": i})
        order = [a[len("go to "):] for a in info["admissible_commands"] if a.startswith("go to ")]
        teacher, visited, done = ExplorerExpert(), [], False
        teacher.reset(env)
        while not done:
            action = teacher.act(obs, info)
            place = action[len("go to "):] if action.startswith("go to ") else None
            if place and place not in visited and teacher.holding is None and not any(
                    n.rsplit(" ", 1)[0] == teacher.task[1] for n in teacher.seen):
                assert place == next(p for p in order if p not in visited), (action, visited)
            if place:
                visited.append(place)
            obs, _, terminated, truncated, info = env.step(action)
            done = terminated or truncated


def test_explorer_uses_only_observations(alfworld_data):
    """It never takes an object before an observation has shown it, and it is deterministic."""
    env = make_env("alfworld", alfworld_data, "valid_seen")
    for i in range(4):
        obs, info = env.reset(options={"task_index": i})
        teacher = ExplorerExpert()
        teacher.reset(env)
        seen_text, actions, done = obs, [], False
        while not done:
            action = teacher.act(obs, info)
            if action.startswith("take "):
                name = action[len("take "):].split(" from ")[0]
                assert f" {name}" in seen_text, f"took {name} before seeing it"
            actions.append(action)
            obs, _, terminated, truncated, info = env.step(action)
            seen_text += "\n" + obs
            done = terminated or truncated
        again = run_episode(env, ExplorerExpert(), i, record_actions=True)
        assert again.actions == actions


def test_explorer_is_registered():
    assert isinstance(POLICIES["explorer"](seed=0), ExplorerExpert)
