"""The ALFWorld game generator: real layout, fields ALFWorld reads, determinism, unseen split."""
from __future__ import annotations

import filecmp
import glob
import json
import os
import re

import pytest

pytest.importorskip("alfworld")
pytest.importorskip("textworld")

from environments.alfworld import rooms  # noqa: E402
from environments.alfworld.generator import generate, split_sizes  # noqa: E402

SPLITS = ("train", "valid_seen", "valid_unseen")


def _trials(root, split):
    return sorted(glob.glob(os.path.join(root, "json_2.1.1", split, "*", "trial_*")))


def _load(trial):
    with open(os.path.join(trial, "game.tw-pddl")) as f:
        game = json.load(f)
    with open(os.path.join(trial, "traj_data.json")) as f:
        traj = json.load(f)
    return game, traj


def _files(root):
    return sorted(os.path.relpath(f, root) for f in glob.glob(os.path.join(root, "**", "*"), recursive=True)
                  if os.path.isfile(f))


def _same_tree(a, b):
    files = _files(a)
    if files != _files(b):
        return False
    return all(filecmp.cmp(os.path.join(a, f), os.path.join(b, f), shallow=False) for f in files)


def test_generator_is_deterministic_for_a_seed(tmp_path):
    a, b, c = (str(tmp_path / x) for x in "abc")
    sa = generate(a, n=6, seed=7)
    sb = generate(b, n=6, seed=7)
    generate(c, n=6, seed=8, verify=False)
    assert sa["splits"] == sb["splits"]
    assert len(_files(a)) == 12 and _same_tree(a, b), "same seed must give byte-identical files"
    assert not _same_tree(a, c), "another seed must give other games"


def test_layout_fields_and_task_types(alfworld_data):
    from alfworld.info import ALFRED_PDDL_PATH

    with open(ALFRED_PDDL_PATH) as f:
        domain = f.read()
    room_types = set()
    for split in SPLITS:
        trials = _trials(alfworld_data, split)
        assert len(trials) == 8  # n=24 -> a third per split
        types = set()
        for trial in trials:
            task_dir = os.path.basename(os.path.dirname(trial))
            assert re.fullmatch(r"trial_T\d{8}_\d{6}_\d{6}", os.path.basename(trial))
            game, traj = _load(trial)
            assert set(game) >= {"pddl_domain", "grammar", "pddl_problem", "solvable", "walkthrough"}
            assert game["pddl_domain"] == domain
            assert game["solvable"] is True and len(game["walkthrough"]) >= 2
            params = traj["pddl_params"]
            assert set(params) >= {"object_target", "parent_target", "mrecep_target", "toggle_target",
                                   "object_sliced"}
            assert traj["task_type"] in rooms.TASK_TYPES
            types.add(traj["task_type"])
            room_types.add(traj["scene"]["room_type"])
            target = params["toggle_target"] or params["parent_target"]
            assert task_dir == (f"{traj['task_type']}-{params['object_target']}-None-{target}-"
                                f"{traj['scene']['scene_num']}")
            # the goal text went into the shipped grammar (add_task_to_grammar)
            desc = traj["turk_annotations"]["anns"][0]["task_desc"]
            assert f"Your task is to: {desc}." in game["grammar"] and "UNKNOWN GOAL" not in game["grammar"]
            assert params["object_target"].lower() in desc
            problem = game["pddl_problem"]
            assert "(:goal" in problem and "(opened " not in problem  # openable ones start closed
            n_receps = len(re.findall(r" - receptacle\n", problem))
            assert rooms.MIN_RECEPTACLES <= n_receps <= rooms.MAX_RECEPTACLES
            assert problem.count(" - object\n") >= 5  # targets plus distractors
            spec = rooms.ROOM_RECEPTACLES[traj["scene"]["room_type"]]
            for cls, (_, most) in spec.items():  # no second fridge, bed or sofa
                init = problem.split("(:goal")[0]
                assert len(re.findall(rf"\(receptacleType \S+ {cls}Type\)", init)) <= most
            if traj["task_type"] == "look_at_obj_in_light":
                assert params["toggle_target"] == "DeskLamp" and params["parent_target"] == ""
            else:
                assert params["parent_target"] and params["toggle_target"] == ""
        assert types == set(rooms.TASK_TYPES), f"{split} misses task types"
    assert room_types == set(rooms.ROOM_TYPES)


def test_valid_unseen_uses_combinations_and_scenes_absent_from_train(alfworld_data):
    def triples_and_scenes(split):
        out, scenes = set(), set()
        for trial in _trials(alfworld_data, split):
            _, traj = _load(trial)
            p = traj["pddl_params"]
            out.add((p["object_target"], p["toggle_target"] or p["parent_target"], traj["scene"]["room_type"]))
            scenes.add(traj["scene"]["scene_num"])
        return out, scenes

    train, train_scenes = triples_and_scenes("train")
    seen, seen_scenes = triples_and_scenes("valid_seen")
    unseen, unseen_scenes = triples_and_scenes("valid_unseen")
    assert unseen and not (unseen & train) and not (unseen & seen)
    assert not (unseen_scenes & (train_scenes | seen_scenes))


def test_generated_games_start_unsolved_and_the_plan_wins(alfworld_data):
    """`solvable` is honest: replaying the stored walkthrough on the engine wins, the start does not."""
    import textworld
    from alfworld.agents.environment.alfred_tw_env import AlfredDemangler
    from textworld.envs.pddl import PddlEnv

    env = AlfredDemangler(PddlEnv(textworld.EnvInfos(won=True, admissible_commands=True)))
    for trial in _trials(alfworld_data, "train")[:4]:
        game, _ = _load(trial)
        env.load(os.path.join(trial, "game.tw-pddl"))
        state = env.reset()
        assert not state["won"]
        for command in game["walkthrough"]:
            assert command in state["admissible_commands"]
            state, _, _ = env.step(command)
        assert state["won"]


def test_generate_rejects_bad_n(tmp_path):
    with pytest.raises(ValueError, match="n must be"):
        generate(str(tmp_path), n=0, seed=0)


def test_train_n_sizes_the_train_split_alone(tmp_path):
    assert split_sizes(7) == {"train": 3, "valid_seen": 2, "valid_unseen": 2}
    assert split_sizes(6, train_n=5) == {"train": 5, "valid_seen": 2, "valid_unseen": 2}
    summary = generate(str(tmp_path), n=3, seed=3, verify=False, train_n=4)
    assert {s: len(_trials(str(tmp_path), s)) for s in SPLITS} == {"train": 4, "valid_seen": 1, "valid_unseen": 1}
    assert summary["splits"]["train"]["games"] == 4
    with pytest.raises(ValueError, match="train_n"):
        split_sizes(6, train_n=-1)
