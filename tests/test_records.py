"""The trajectory store: torn writes are skipped, malformed records are named."""
from __future__ import annotations

import json

import pytest

from dmr_rl.rollout.records import HP, LP, EpisodeRecord, StepRecord, TrajectoryStore
from environments.errors import DataError


def _episode(eid: str) -> EpisodeRecord:
    return EpisodeRecord(eid, 0, "t0", "pick_and_place_simple", "put a mug in the sink",
                         steps=[StepRecord(0, "o", "go to sink 1", HP), StepRecord(1, "o2", "look", LP)])


def test_round_trip_and_torn_line(tmp_path):
    store = TrajectoryStore(tmp_path, "w0")
    store.append([_episode("e1"), _episode("e2")])
    with open(store.path, "a") as f:
        f.write('{"episode_id": "e3", "task_ind')  # killed mid-write
    with pytest.warns(UserWarning, match="torn record on line 3"):
        episodes = TrajectoryStore.read(tmp_path)
    assert [e.episode_id for e in episodes] == ["e1", "e2"]
    assert episodes[0].hp_ratio == 0.5 and episodes[0].steps[0].action == "go to sink 1"


def test_malformed_record_is_named(tmp_path):
    store = TrajectoryStore(tmp_path, "w1")
    store.append(_episode("e1"))
    with open(store.path, "a") as f:
        f.write(json.dumps({"episode_id": "e2"}) + "\n")
    with pytest.raises(DataError, match=r"line 2.*w1\.jsonl"):
        TrajectoryStore.read(tmp_path)


def test_missing_directory_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        TrajectoryStore.read(tmp_path / "nowhere")
