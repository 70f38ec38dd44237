"""Corrupt records never vanish: only a torn last line is skipped; anything else is an error naming
file and line, or, with --skip-corrupt, a skip the report states, dropping the task for every method."""
from __future__ import annotations

import json

import numpy as np
import pytest

from dmr_rl.report import layout
from dmr_rl.rollout.records import EpisodeRecord, StepRecord, TrajectoryStore
from environments.errors import DataError

METHODS = {"hp_only": "default", "lp_only": "default", "random": "ratio0.50"}


def _ep(method, seed, task, won):
    steps = [StepRecord(step=k, obs="o", action="a", tier=int(k % 2), prompt_tokens=10, weight_bytes=1e8)
             for k in range(3)]
    return EpisodeRecord(f"{method}-{seed}-{task}", task, f"t{task}", "pick_and_place_simple", "", method=method,
                         seed=seed, won=won, score=float(won), steps=steps)


def _run(root, seeds=(0, 1), tasks=6):
    rng = np.random.default_rng(0)
    for m, p in METHODS.items():
        layout.write_point_meta(root, m, p, {})
        for s in seeds:
            TrajectoryStore(layout.seed_dir(layout.point_dir(root, m, p), s), "driver").append(
                [_ep(m, s, t, bool(rng.random() < 0.6)) for t in range(tasks)])
    return root


def _shard(root, method, seed):
    return layout.seed_dir(layout.point_dir(root, method, METHODS[method]), seed) / "driver.jsonl"


def _break_line(path, k, how):
    lines = path.read_text().split("\n")
    lines[k] = lines[k][: len(lines[k]) // 2] if how == "cut" else json.dumps("just a string")
    path.write_text("\n".join(lines))


def test_torn_last_line_is_skipped_and_a_reopened_writer_cuts_it(tmp_path):
    store = TrajectoryStore(tmp_path, "w")
    store.append([_ep("m", 0, 0, True), _ep("m", 0, 1, False)])
    with open(store.path, "a") as f:
        f.write('{"episode_id": "m-0-2", "task_in')  # killed mid-write
    with pytest.warns(UserWarning, match="torn record on line 3"):
        assert [e.task_index for e in TrajectoryStore.read(tmp_path)] == [0, 1]
    TrajectoryStore(tmp_path, "w").append(_ep("m", 0, 2, True))  # a restarted writer
    assert [e.task_index for e in TrajectoryStore.read(tmp_path)] == [0, 1, 2]  # nothing torn in the middle


@pytest.mark.parametrize("how, reason", [("cut", "not valid JSON"), ("string", "a JSON str")])
def test_a_corrupt_line_inside_a_shard_names_file_and_line(tmp_path, how, reason):
    root = _run(tmp_path)
    shard = _shard(root, "random", 1)
    _break_line(shard, 2, how)
    with pytest.raises(DataError, match=rf"line 3 .*{reason}.*--skip-corrupt.*{shard}"):
        layout.load_eval(root)


def test_skip_corrupt_counts_per_method_and_drops_the_task_for_every_method(tmp_path):
    root = _run(tmp_path)
    _break_line(_shard(root, "random", 1), 2, "cut")  # task 2; its text still says so
    _break_line(_shard(root, "lp_only", 0), 4, "string")  # task 4: nothing left to read it from
    with layout.skipping_corrupt():
        loaded = layout.load_eval(root)
    assert [e.task_index for e in loaded["random"]["ratio0.50"]["by_seed"][1]] == [0, 1, 3, 5]  # 2, 4 left out
    assert [e.task_index for e in loaded["hp_only"]["default"]["by_seed"][0]] == [0, 1, 3, 5]
    skipped = layout.skipped_records(root)
    assert [(r["method"], r["seed"], r["line"], r["task_index"]) for r in skipped] == \
        [("lp_only", 0, 5, None), ("random", 1, 3, 2)]
    assert layout.skipped_counts(skipped) == {"lp_only": 1, "random": 1}
    dropped = layout.dropped_pairs(root)
    assert dropped == {(m, s, t) for m in METHODS for s in (0, 1) for t in (2, 4)}
    assert layout.dropped_pairs(_run(tmp_path / "clean")) == set()


def test_dmr_report_skip_corrupt_states_the_skip_in_its_header(tmp_path, capsys):
    from dmr_rl.cli import main

    root = _run(tmp_path, tasks=8)
    _break_line(_shard(root, "random", 1), 2, "cut")
    assert main(["report", str(root), "--bootstrap", "50", "--no-tensorboard"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "line 3" in err[0] and "driver.jsonl" in err[0]
    assert main(["report", str(root), "--bootstrap", "50", "--no-tensorboard", "--skip-corrupt"]) == 0
    head = (root / "report" / "report.md").read_text().split("\n")[:4]
    assert any("1 corrupt record line(s) skipped" in ln and "random 1" in ln and "[2]" in ln for ln in head), head
    results = json.loads((root / "report" / "results.json").read_text())
    assert results["skipped_records"]["per_method"] == {"random": 1}
    assert results["skipped_records"]["dropped_tasks"] == [2]
