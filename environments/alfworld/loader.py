"""Find ALFWorld games in the real layout and check them before any engine touches them.

Layout: ``<root>/json_2.1.1/{train,valid_seen,valid_unseen}/<task-dir>/trial_*/`` holding
``game.tw-pddl`` (JSON: pddl_domain, grammar, pddl_problem, solvable) and ``traj_data.json``
(task_type, pddl_params). As ALFWorld's own ``collect_game_files`` does, games marked not
solvable and "movable"/"Sliced" task directories are skipped. A malformed game (bad JSON, a
missing field) is reported with a warning naming the file and the field, and skipped; the scan
goes on. A missing root or an unknown split raises :class:`~environments.errors.DataError`.
"""
from __future__ import annotations

import json
import logging
import os
import warnings
from dataclasses import dataclass
from typing import Optional

from environments.errors import DataError, UnknownSplitError

log = logging.getLogger(__name__)

DATA_DIRNAME = "json_2.1.1"
SPLITS = ("train", "valid_seen", "valid_unseen")
SPLIT_ALIASES = {"eval_in_distribution": "valid_seen", "eval_out_of_distribution": "valid_unseen"}
GAME_FIELDS = {"pddl_domain": str, "grammar": str, "pddl_problem": str, "solvable": bool}
PDDL_PARAM_FIELDS = ("object_target", "parent_target", "toggle_target", "mrecep_target", "object_sliced")


class AlfWorldDataWarning(UserWarning):
    """A game was skipped because its files are malformed (the message names file and field)."""


@dataclass(frozen=True)
class GameEntry:
    """One playable game: its files, and what traj_data.json says about the task."""

    game_file: str
    traj_file: str
    task_id: str        # "<task-dir>/<trial>", relative to the split directory
    task_type: str
    pddl_params: dict


def resolve_root(data_dir: Optional[str]) -> str:
    """The data root: ``data_dir`` if given, else ``$ALFWORLD_DATA``; it must exist."""
    root = data_dir or os.environ.get("ALFWORLD_DATA", "")
    if not root:
        raise DataError("no ALFWorld data directory given and ALFWORLD_DATA is not set")
    if not os.path.isdir(root):
        raise DataError("ALFWorld data directory does not exist", path=root)
    return root


def split_dir(root: str, split: str) -> str:
    """``<root>/json_2.1.1/<split>`` (ALFWorld's eval_* names are accepted as aliases)."""
    split = SPLIT_ALIASES.get(split, split)
    base = os.path.join(root, DATA_DIRNAME)
    if not os.path.isdir(base):
        raise DataError(f"not an ALFWorld data root: {DATA_DIRNAME}/ is missing", path=base)
    if split not in SPLITS:
        raise UnknownSplitError(f"unknown split {split!r}; known: {list(SPLITS)}", path=base)
    path = os.path.join(base, split)
    if not os.path.isdir(path):
        raise UnknownSplitError(f"split {split!r} is not in this data root", path=path)
    return path


def _load_json(path: str) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise DataError("file is missing", path=path) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"not valid JSON ({e})", path=path) from None
    if not isinstance(data, dict):
        raise DataError("expected a JSON object", path=path)
    return data


def check_game_file(path: str) -> dict:
    """Parse ``game.tw-pddl`` and check its fields; returns the data or raises DataError(path, field)."""
    data = _load_json(path)
    for name, typ in GAME_FIELDS.items():
        if name not in data:
            raise DataError("missing field", path=path, field=name)
        if not isinstance(data[name], typ):
            raise DataError(f"expected {typ.__name__}, got {type(data[name]).__name__}", path=path, field=name)
    return data


def check_traj_file(path: str) -> dict:
    """Parse ``traj_data.json`` and check what ALFWorld reads from it."""
    from environments.alfworld.rooms import TASK_TYPES

    data = _load_json(path)
    if not isinstance(data.get("task_type"), str):
        raise DataError("missing field", path=path, field="task_type")
    if data["task_type"] not in TASK_TYPES:
        raise DataError(f"unknown task type {data['task_type']!r}", path=path, field="task_type")
    params = data.get("pddl_params")
    if not isinstance(params, dict):
        raise DataError("missing field", path=path, field="pddl_params")
    for name in PDDL_PARAM_FIELDS:
        if name not in params:
            raise DataError("missing field", path=path, field=f"pddl_params.{name}")
    return data


def collect_games(root: str, split: str) -> tuple[list[GameEntry], dict]:
    """All playable games of ``split``, sorted by task id, and counts of what was skipped."""
    base = split_dir(root, split)
    games: list[GameEntry] = []
    skipped = {"malformed": 0, "not_solvable": 0, "unsupported": 0}
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames.sort()
        if "traj_data.json" not in filenames:
            continue
        if "movable" in dirpath or "Sliced" in dirpath:
            skipped["unsupported"] += 1
            continue
        game_file = os.path.join(dirpath, "game.tw-pddl")
        traj_file = os.path.join(dirpath, "traj_data.json")
        try:
            traj = check_traj_file(traj_file)
            game = check_game_file(game_file)
        except DataError as e:
            skipped["malformed"] += 1
            msg = f"skipping malformed ALFWorld game: {e}"
            log.warning(msg)
            warnings.warn(msg, AlfWorldDataWarning, stacklevel=2)
            continue
        if not game["solvable"]:
            skipped["not_solvable"] += 1
            log.info("skipping unsolvable game %s", game_file)
            continue
        task_id = os.path.relpath(dirpath, base).replace(os.sep, "/")
        games.append(GameEntry(game_file, traj_file, task_id, traj["task_type"], dict(traj["pddl_params"])))
    games.sort(key=lambda g: g.task_id)
    return games, skipped
