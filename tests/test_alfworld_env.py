"""AlfWorldEnv on TextWorld's PDDL engine: reset/step/win per task type, invalid commands, bad input."""
from __future__ import annotations

import json
import os
import shutil

import pytest

pytest.importorskip("alfworld")
pytest.importorskip("textworld")

from environments import make_env  # noqa: E402
from environments.alfworld import loader, rooms  # noqa: E402
from environments.base import INFO_KEYS, BatchTextEnv  # noqa: E402
from environments.errors import DataError, UnknownSplitError  # noqa: E402


@pytest.fixture(scope="module")
def seen_env(alfworld_data):
    return make_env("alfworld", alfworld_data, "valid_seen")


def _index_of(env, task_type):
    return next(i for i, g in enumerate(env.games) if g.task_type == task_type)


@pytest.mark.parametrize("task_type", rooms.TASK_TYPES)
def test_expert_wins_every_task_type(seen_env, task_type):
    env = seen_env
    obs, info = env.reset(options={"task_index": _index_of(env, task_type)})
    assert obs.startswith("-= Welcome to TextWorld, ALFRED! =-")
    assert "You are in the middle of a room. Looking quickly around you, you see" in obs
    assert f"Your task is to: {info['task']}." in obs
    assert set(INFO_KEYS) <= set(info) and info["task_type"] == task_type
    assert info["step"] == 0 and not info["won"] and info["score"] == 0.0
    done, reward = False, 0.0
    while not done:
        command = env.expert_action()
        assert command in info["admissible_commands"]
        obs, reward, terminated, truncated, info = env.step(command)
        assert not info["invalid"]
        done = terminated or truncated
    assert terminated and not truncated
    assert info["won"] and info["score"] == 1.0 and reward == 1.0
    assert info["step"] <= 20


def test_invalid_command_counts_as_a_step_and_returns_engine_feedback(seen_env):
    env = seen_env
    _, info0 = env.reset(options={"task_index": 0})
    obs, reward, terminated, truncated, info = env.step("dance with the fridge")
    assert obs == "Nothing happens."
    assert info["invalid"] and info["step"] == 1 and reward == 0.0 and not terminated
    assert info["admissible_commands"] == info0["admissible_commands"]
    obs, *_ , info = env.step(info["admissible_commands"][0])
    assert not info["invalid"] and info["step"] == 2 and obs != "Nothing happens."


def test_episode_cap_truncates(alfworld_data):
    env = make_env("alfworld", alfworld_data, "train", max_steps=3)
    assert make_env("alfworld", alfworld_data, "train").max_steps == 50
    env.reset(options={"task_index": 1})
    for k in range(3):
        _, _, terminated, truncated, info = env.step("look")
    assert truncated and not terminated and info["step"] == 3
    with pytest.raises(RuntimeError):
        env.step("look")


def test_reset_is_deterministic_and_ids_are_stable(seen_env):
    env = seen_env
    a = env.reset(seed=123)
    b = env.reset(seed=123)
    assert a[0] == b[0] and a[1]["task_id"] == b[1]["task_id"]
    assert env.task_ids == sorted(env.task_ids) and len(env.task_ids) == 8
    obs, info = env.reset(options={"task_id": env.task_ids[3]})
    assert info["task_id"] == env.task_ids[3]


def test_speedups_give_identical_text(alfworld_data):
    """Memoised parsing and shallow context copies change no observation or command list."""
    from environments.alfworld import speedups

    seen_env = make_env("alfworld", alfworld_data, "valid_seen", max_steps=400)

    def play(index):
        obs, info = seen_env.reset(options={"task_index": index})
        out = [obs, info["admissible_commands"]]
        for command in ("look", "inventory", "help"):
            obs, _, _, _, info = seen_env.step(command)
            out += [command, obs, info["admissible_commands"]]
        for _ in range(30):
            extras = [next((c for c in info["admissible_commands"] if c.startswith(verb)), None)
                      for verb in ("examine", "open")]
            extras = [c for c in extras if c]
            for command in extras + [None]:
                command = command or seen_env.expert_action()
                obs, _, terminated, _, info = seen_env.step(command)
                out += [command, obs, info["admissible_commands"]]
                if terminated:
                    return out
        raise AssertionError("expert did not finish")

    indices = [_index_of(seen_env, t) for t in ("pick_heat_then_place_in_recep", "look_at_obj_in_light")]
    fast = [play(i) for i in indices]
    speedups.uninstall()
    try:
        slow = [play(i) for i in indices]
    finally:
        speedups.install()
    assert fast == slow
    assert any("You open the" in str(x) for x in fast) and any("This is" in str(x) or "There's nothing" in str(x)
                                                              for x in fast)


def test_batch_of_alfworld_envs_steps_independently(alfworld_data):
    envs = [make_env("alfworld", alfworld_data, "valid_unseen") for _ in range(2)]
    batch = BatchTextEnv(envs)
    obs, infos = batch.reset([0, 5])
    assert infos[0]["task_id"] != infos[1]["task_id"]
    while batch.active():
        out = batch.step({i: envs[i].expert_action() for i in batch.active()})
        for i, (_, _, terminated, truncated, info) in out.items():
            assert not info["invalid"]
    assert all(e._state.won for e in envs)


def test_handcoded_expert_option(alfworld_data):
    env = make_env("alfworld", alfworld_data, "valid_seen", expert_type="handcoded")
    obs, info = env.reset(options={"task_index": _index_of(env, "pick_and_place_simple")})
    done = False
    while not done:
        obs, _, terminated, truncated, info = env.step(env.expert_action())
        done = terminated or truncated
    assert info["won"]
    with pytest.raises(ValueError, match="expert_type"):
        make_env("alfworld", alfworld_data, "valid_seen", expert_type="oracle")


# ---- bad input ------------------------------------------------------------------------------
def test_missing_data_dir_names_the_path(tmp_path, monkeypatch):
    missing = str(tmp_path / "nowhere")
    with pytest.raises(DataError, match="nowhere"):
        make_env("alfworld", missing, "train")
    monkeypatch.delenv("ALFWORLD_DATA", raising=False)
    with pytest.raises(DataError, match="ALFWORLD_DATA"):
        make_env("alfworld", "", "train")
    with pytest.raises(DataError, match="json_2.1.1"):
        make_env("alfworld", str(tmp_path), "train")


def test_root_from_environment_variable(alfworld_data, monkeypatch):
    monkeypatch.setenv("ALFWORLD_DATA", alfworld_data)
    assert make_env("alfworld", None, "train").num_tasks == 8


def test_unknown_split(alfworld_data):
    with pytest.raises(UnknownSplitError, match="valid_unknown"):
        make_env("alfworld", alfworld_data, "valid_unknown")
    assert make_env("alfworld", alfworld_data, "eval_out_of_distribution").num_tasks == 8


@pytest.fixture()
def broken_copy(alfworld_data, tmp_path):
    """A copy of the train split where the test can damage individual games."""
    root = tmp_path / "data"
    shutil.copytree(os.path.join(alfworld_data, "json_2.1.1", "train"), root / "json_2.1.1" / "train")
    trials = sorted(str(p) for p in (root / "json_2.1.1" / "train").glob("*/trial_*"))
    return str(root), trials


def test_malformed_game_is_skipped_with_a_warning_naming_the_file(broken_copy):
    root, trials = broken_copy
    bad = os.path.join(trials[0], "game.tw-pddl")
    with open(bad, "w") as f:
        f.write('{"pddl_domain": "(define", ')  # truncated JSON
    with pytest.warns(loader.AlfWorldDataWarning, match="game.tw-pddl"):
        env = make_env("alfworld", root, "train")
    assert env.num_tasks == len(trials) - 1 and env.skipped["malformed"] == 1
    obs, info = env.reset(options={"task_index": 0})  # the run goes on
    assert "Your task is to" in obs


def test_game_missing_a_field_names_the_field(broken_copy):
    root, trials = broken_copy
    game_file = os.path.join(trials[1], "game.tw-pddl")
    with open(game_file) as f:
        data = json.load(f)
    del data["pddl_problem"]
    with open(game_file, "w") as f:
        json.dump(data, f)
    with pytest.raises(DataError, match="pddl_problem") as err:
        loader.check_game_file(game_file)
    assert err.value.field == "pddl_problem" and err.value.path == game_file
    traj_file = os.path.join(trials[2], "traj_data.json")
    with open(traj_file) as f:
        traj = json.load(f)
    del traj["pddl_params"]["object_target"]
    with open(traj_file, "w") as f:
        json.dump(traj, f)
    with pytest.raises(DataError, match="object_target"):
        loader.check_traj_file(traj_file)
    with pytest.warns(loader.AlfWorldDataWarning) as record:
        env = make_env("alfworld", root, "train")
    messages = " ".join(str(w.message) for w in record)
    assert "pddl_problem" in messages and "pddl_params.object_target" in messages
    assert env.num_tasks == len(trials) - 2


def test_unsolvable_games_are_skipped_and_bad_pddl_is_named(broken_copy):
    root, trials = broken_copy
    game_file = os.path.join(trials[0], "game.tw-pddl")
    with open(game_file) as f:
        data = json.load(f)
    data["solvable"] = False
    with open(game_file, "w") as f:
        json.dump(data, f)
    other = os.path.join(trials[1], "game.tw-pddl")
    with open(other) as f:
        data = json.load(f)
    data["pddl_problem"] = "(define (problem broken"
    with open(other, "w") as f:
        json.dump(data, f)
    env = make_env("alfworld", root, "train")
    assert env.skipped["not_solvable"] == 1 and env.num_tasks == len(trials) - 1
    broken_index = [g.game_file for g in env.games].index(other)
    with pytest.raises(DataError, match="game.tw-pddl"):
        env.reset(options={"task_index": broken_index})


def test_evaluation_spreads_tasks_over_the_split(seen_env):
    """A few episodes cover several task types (tasks are stored grouped by type)."""
    from environments.runner import evaluate_policy, spread_tasks

    assert spread_tasks(10, 4) == [0, 2, 5, 7]
    assert spread_tasks(3, 7) == [0, 1, 2, 0, 1, 2, 0]
    with pytest.raises(ValueError):
        spread_tasks(5, 0)
    n = len(rooms.TASK_TYPES)
    from environments.policies import POLICIES

    summary = evaluate_policy(seen_env, POLICIES["expert"](), n)
    assert len(summary["success_by_task_type"]) >= n // 2
