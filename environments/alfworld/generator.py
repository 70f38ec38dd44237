"""Offline generator of ALFWorld games in ALFWorld's own on-disk layout (``dmr games alfworld``).

``generate(out, n, seed)`` writes ``<out>/json_2.1.1/{train,valid_seen,valid_unseen}/<task-dir>/
trial_*/game.tw-pddl`` (JSON: pddl_domain, grammar, pddl_problem, solvable, walkthrough) and
``traj_data.json`` (task_type, pddl_params, scene, turk_annotations) beside it. The domain and
grammar are the ones alfworld ships (``ALFRED_PDDL_PATH``, ``ALFRED_TWL2_PATH`` with the task
added by ``add_task_to_grammar``); goals come from alfworld's goal library. Every game is
checked at generation time: the planner expert's plan is played on TextWorld's PDDL engine and
``solvable`` records whether it won (a failed sample is redrawn up to 3 times, then written
honestly as not solvable).

Splits: each third of ``n`` (train gets the remainder), the six task types dealt round-robin.
valid_unseen uses object-receptacle-room triples reserved away from train and valid_seen, and
ALFRED's unseen floor plans. Output is byte-identical for a given (n, seed).
"""
from __future__ import annotations

import json
import os
import random
import re
from collections import Counter, defaultdict
from typing import Optional

from environments.alfworld import rooms
from environments.alfworld.problem import GameSpec, make_scene, place_objects, pddl_problem

SPLITS = ("train", "valid_seen", "valid_unseen")
DATA_DIRNAME = "json_2.1.1"
MAX_REDRAWS = 3


def reserve_unseen(rng: random.Random) -> set[tuple[str, str, str]]:
    """Object-receptacle-room triples only valid_unseen may use (about a fifth of each task type)."""
    reserved: set = set()
    for task_type in rooms.TASK_TYPES:
        combos = rooms.task_combos(task_type)
        keys = sorted({c.key for c in combos})
        rng.shuffle(keys)
        want = max(2, len(keys) // 5)
        for key in keys:
            if sum(1 for c in combos if c.key in reserved) >= want:
                break
            reserved.add(key)
        if all(c.key in reserved for c in combos):  # keep some for the seen splits
            reserved.discard(keys[-1])
    return reserved


def split_sizes(n: int, train_n: int = 0) -> dict[str, int]:
    """Games per split: a third of ``n`` for each validation split, the rest for train; ``train_n``
    > 0 sets the train split's size instead (more training tasks, the validation splits unchanged)."""
    third = n // 3
    if train_n < 0:
        raise ValueError(f"train_n must be 0 (the rest of n) or positive, got {train_n}")
    return {"train": train_n or n - 2 * third, "valid_seen": third, "valid_unseen": third}


def _scene_numbers(room: str, split: str) -> list[int]:
    unseen = rooms.UNSEEN_SCENES[room]
    return list(unseen) if split == "valid_unseen" else [s for s in rooms.SCENES[room] if s not in unseen]


class _Sampler:
    def __init__(self, seed: int, rng: random.Random):
        self.seed, self.rng = seed, rng
        self.reserved = reserve_unseen(rng)
        self.scenes: dict = {}

    def scene(self, room: str, num: int):
        if (room, num) not in self.scenes:
            self.scenes[(room, num)] = make_scene(self.seed, room, num)
        return self.scenes[(room, num)]

    def draw(self, task_type: str, split: str) -> GameSpec:
        unseen = split == "valid_unseen"
        combos = [c for c in rooms.task_combos(task_type) if (c.key in self.reserved) == unseen]
        for _ in range(200):
            combo = self.rng.choice(combos)
            num = self.rng.choice(_scene_numbers(combo.room, split))
            scene = self.scene(combo.room, num)
            try:
                objects = place_objects(self.rng, combo, scene, n_distractors=self.rng.randint(4, 10))
            except ValueError:
                continue
            return GameSpec(combo, scene, objects)
        raise RuntimeError(f"could not place a {task_type} game for split {split}")


def _trial_name(rng: random.Random) -> str:
    return (f"trial_T2019{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}_{rng.randint(0, 23):02d}"
            f"{rng.randint(0, 59):02d}{rng.randint(0, 59):02d}_{rng.randint(0, 999999):06d}")


def _task_desc_and_grammar(traj: dict, seed_text: str) -> tuple[str, str]:
    """ALFWorld's templated goal text, through alfworld's own ``add_task_to_grammar``.

    alfworld draws the template from the global ``random``; it is seeded here and restored after.
    """
    from alfworld.agents.utils.misc import add_task_to_grammar
    from alfworld.info import ALFRED_TWL2_PATH

    with open(ALFRED_TWL2_PATH) as f:
        grammar = f.read()
    saved = random.getstate()
    try:
        random.seed(seed_text)
        grammar = add_task_to_grammar(grammar, traj)
    finally:
        random.setstate(saved)
    desc = re.search(r"Your task is to: (.*?)\.\"", grammar).group(1)
    return desc, grammar


class PlannerCheck:
    """Plays the planner expert's plan on the PDDL engine: a game is solvable if the plan wins."""

    def __init__(self):
        import textworld
        from alfworld.agents.environment.alfred_tw_env import AlfredDemangler
        from textworld.envs.pddl import PddlEnv

        from environments.alfworld import speedups

        speedups.install()
        infos = textworld.EnvInfos(won=True, admissible_commands=True, policy_commands=True)
        self.env = AlfredDemangler(PddlEnv(infos))

    def __call__(self, game_data: dict, max_steps: int = 60) -> Optional[list[str]]:
        """The winning plan as commands, or None when the planner finds none or it does not win."""
        self.env.load(game_data)
        state = self.env.reset()
        plan = list(state["policy_commands"] or [])
        if not plan:
            return None
        self.env.request_infos.policy_commands = False
        try:
            for command in plan[:max_steps]:
                state, _, done = self.env.step(command)
                if done:
                    break
        finally:
            self.env.request_infos.policy_commands = True
        return plan if state["won"] else None


def generate(out_dir: str, n: int, seed: int, verify: bool = True, train_n: int = 0) -> dict:
    """Write the games of :func:`split_sizes` (``n``, ``train_n``) under ``out_dir`` and return a
    summary (counts per split and task type)."""
    from alfworld.info import ALFRED_PDDL_PATH

    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    with open(ALFRED_PDDL_PATH) as f:
        domain = f.read()
    rng = random.Random(seed)
    sampler = _Sampler(seed, rng)
    check = PlannerCheck() if verify else None
    used_trials: set = set()
    summary: dict = {"out_dir": os.path.abspath(out_dir), "n": n, "seed": seed,
                     "unseen_triples": len(sampler.reserved), "splits": {}}
    for split, size in split_sizes(n, train_n).items():
        types: list[str] = []
        while len(types) < size:
            cycle = list(rooms.TASK_TYPES)
            rng.shuffle(cycle)
            types += cycle
        counts: Counter = Counter()
        solvable_by_type: dict = defaultdict(int)
        rooms_used: Counter = Counter()
        for index, task_type in enumerate(types[:size]):
            for attempt in range(MAX_REDRAWS + 1):
                game = sampler.draw(task_type, split)
                trial = _trial_name(rng)
                while trial in used_trials:
                    trial = _trial_name(rng)
                used_trials.add(trial)
                files = _game_files(game, trial, domain, split, seed)
                plan = check(files["game"]) if check else []
                if plan is not None:
                    break
            files["game"]["solvable"] = plan is not None
            files["game"]["walkthrough"] = plan or []
            _write(out_dir, split, game, trial, files)
            counts[task_type] += 1
            solvable_by_type[task_type] += int(plan is not None)
            rooms_used[game.combo.room] += 1
        summary["splits"][split] = {
            "games": size, "solvable": sum(solvable_by_type.values()),
            "task_types": dict(sorted(counts.items())), "rooms": dict(sorted(rooms_used.items())),
        }
    return summary


def _task_dir(game: GameSpec) -> str:
    c = game.combo
    return f"{c.task_type}-{c.obj}-None-{c.target}-{game.scene.scene_num}"


def _game_files(game: GameSpec, trial: str, domain: str, split: str, seed: int) -> dict:
    c = game.combo
    light = c.task_type == "look_at_obj_in_light"
    traj = {
        "task_id": trial,
        "task_type": c.task_type,
        "pddl_params": {"object_target": c.obj, "parent_target": "" if light else c.target,
                        "mrecep_target": "", "toggle_target": c.target if light else "",
                        "object_sliced": False},
        "scene": {"floor_plan": f"FloorPlan{game.scene.scene_num}", "scene_num": game.scene.scene_num,
                  "room_type": game.scene.room},
        "split": split,
        "repeat_idx": 0,
    }
    desc, grammar = _task_desc_and_grammar(traj, f"{seed}/{split}/{trial}")
    traj["turk_annotations"] = {"anns": [{"assignment_id": "generated", "task_desc": desc,
                                          "high_descs": [], "votes": [1, 1, 1]}]}
    game_data = {"pddl_domain": domain, "grammar": grammar, "pddl_problem": pddl_problem(trial, game),
                 "solvable": False, "walkthrough": []}
    return {"game": game_data, "traj": traj}


def _write(out_dir: str, split: str, game: GameSpec, trial: str, files: dict) -> str:
    path = os.path.join(out_dir, DATA_DIRNAME, split, _task_dir(game), trial)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "game.tw-pddl"), "w") as f:
        json.dump(files["game"], f)
    with open(os.path.join(path, "traj_data.json"), "w") as f:
        json.dump(files["traj"], f, indent=2)
    return path
