"""experiments/pool_runs.py: independent runs' router-vs-random pairs pooled, each run's tasks their own clusters."""
import json
import sys
from pathlib import Path
from typing import Optional

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "experiments"))
import pool_runs  # noqa: E402

from dmr_rl.rollout.records import EpisodeRecord, StepRecord, TrajectoryStore  # noqa: E402


def _run(root: Path, router_won: list, random_won: dict, hp_won: Optional[list]) -> Path:
    """A run directory holding what pool_runs reads: results.json's comparison and both points' shards."""
    def write(method, point, seed, won):
        eps = [EpisodeRecord(episode_id=f"{method}-{seed}-{t}", task_index=t, task_id=str(t), task_type="x", task="",
                             seed=seed, won=bool(w), score=float(w),
                             steps=[StepRecord(step=0, obs="", action="a", tier=0)]) for t, w in enumerate(won)]
        TrajectoryStore(root / "eval" / method / point / f"seed_{seed}", "driver").append(eps)

    write("grpo", "r0.40", 0, router_won)
    if hp_won is not None:
        write("hp_only", "default", 0, hp_won)
    for seed, won in random_won.items():
        write("random", "ratio0.400", seed, won)
    comp = {"method": "grpo", "point": "r0.40", "vs": "random", "vs_point": "ratio0.400", "matched_on": "hp_ratio",
            "success": 0.0, "vs_success": 0.0, "hp_ratio": 0.4, "vs_hp_ratio": 0.4, "diff_mean": 0.0,
            "diff_ci": [0.0, 0.0], "mcnemar_p": 1.0}
    (root / "eval" / "results.json").write_text(json.dumps({"comparisons": [comp]}))
    return root


def test_pooled_pairs_keep_each_runs_tasks_apart(tmp_path, capsys):
    a = _run(tmp_path / "a", [1, 1, 0, 1], {0: [0, 1, 0, 0], 1: [0, 0, 0, 1]}, [1, 1, 1, 1])
    b = _run(tmp_path / "b", [1, 0, 1], {0: [1, 0, 0], 1: [0, 0, 0]}, [1, 1, 0])
    out = pool_runs.main([str(a), str(b), "--n-boot", "200"])
    assert out["n_tasks"] == 7  # task 0 of run a and task 0 of run b are two clusters
    # per task: router won - mean of random's two draws
    diffs = [1 - 0, 1 - 0.5, 0 - 0, 1 - 0.5, 1 - 0.5, 0 - 0, 1 - 0]
    assert out["diff_mean"] == pytest.approx(sum(diffs) / 7)
    assert out["diff_ci"][0] <= out["diff_mean"] <= out["diff_ci"][1]
    assert "pooled:" in capsys.readouterr().out
    # HP-only wins 6 of the 7 tasks, the router 5: it keeps 5/6 of HP-only's success
    assert out["share_of_hp_only"] == pytest.approx(5 / 6)
    assert out["share_of_hp_only_ci"][0] <= 5 / 6 <= out["share_of_hp_only_ci"][1]


def test_a_run_without_hp_only_pools_the_difference_but_no_share(tmp_path, capsys):
    a = _run(tmp_path / "a", [1, 1, 0, 1], {0: [0, 1, 0, 0], 1: [0, 0, 0, 1]}, [1, 1, 1, 1])
    b = _run(tmp_path / "b", [1, 0, 1], {0: [1, 0, 0], 1: [0, 0, 0]}, None)
    out = pool_runs.main([str(a), str(b), "--n-boot", "200"])
    assert out["n_tasks"] == 7 and "share_of_hp_only" not in out
    assert f"{b} did not play hp_only" in capsys.readouterr().out


def test_pooled_against_another_point_of_every_run(tmp_path, capsys):
    a = _run(tmp_path / "a", [1, 1, 0, 1], {0: [0, 1, 0, 0], 1: [0, 0, 0, 1]}, [1, 1, 1, 1])
    b = _run(tmp_path / "b", [1, 0, 1], {0: [1, 0, 0], 1: [0, 0, 0]}, [1, 1, 0])
    out = pool_runs.main([str(a), str(b), "--vs", "hp_only/default", "--n-boot", "200"])
    assert out["vs"] == "hp_only/default" and out["n_tasks"] == 7
    assert out["diff_mean"] == pytest.approx((5 - 6) / 7) and out["vs_success"] == pytest.approx(6 / 7)
    with pytest.raises(SystemExit, match="no evaluation point grpo/r0.30"):
        pool_runs.main([str(a), "--vs", "grpo/r0.30"])
    with pytest.raises(SystemExit, match="expected METHOD/POINT"):
        pool_runs.main([str(a), "--vs", "grpo"])


def test_a_run_without_results_is_named(tmp_path):
    with pytest.raises(SystemExit, match="no evaluation results"):
        pool_runs.main([str(tmp_path / "missing")])
