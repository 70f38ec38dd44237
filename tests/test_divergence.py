"""experiments/divergence.py: where a router's lost episodes leave HP-only's path, LP loops, flip shares by step."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "experiments"))
import divergence  # noqa: E402

from dmr_rl.rollout.records import EpisodeRecord, StepRecord, TrajectoryStore  # noqa: E402


def _ep(task, actions, tiers, won, prompts=None, p_hp=None, agree=None):
    steps = [StepRecord(step=i, obs="", action=a, tier=t, prompt=(prompts or actions)[i],
                        router_prob=(p_hp or [0.5] * len(actions))[i],
                        extra={} if agree is None else {"tiers_agree": agree[i]})
             for i, (a, t) in enumerate(zip(actions, tiers))]
    return EpisodeRecord(episode_id=f"e{task}-{won}-{len(actions)}", task_index=task, task_id=str(task),
                         task_type="x", task="", won=won, score=float(won), steps=steps)


def test_lost_episodes_their_first_divergence_loops_and_collected_flip_shares(tmp_path, capsys):
    run = tmp_path / "run"
    TrajectoryStore(run / "eval" / "hp_only" / "default" / "seed_0", "driver").append(
        [_ep(0, ["a", "b", "c"], [1, 1, 1], True), _ep(1, ["a", "b"], [1, 1], True),
         _ep(2, ["x"], [1], False)])
    TrajectoryStore(run / "eval" / "grpo" / "r0.40" / "seed_0", "driver").append(
        [_ep(0, ["z", "b", "c"], [0, 0, 0], False, p_hp=[0.3, 0.2, 0.1]),  # leaves at step 0
         _ep(1, ["a", "q", "q", "q"], [1, 0, 0, 0], False, prompts=["p0", "p1", "p2", "p1"]),  # at 1, loops from 3
         _ep(2, ["y"], [0], False)])  # HP-only lost it too: not counted as lost where HP won
    (run / "eval" / "grpo" / "r0.40" / "point.json").write_text(json.dumps({"params": {"threshold": 0.6}}))
    TrajectoryStore(run / "trajectories" / "collect", "w0").append(
        [_ep(5, ["a", "b", "c", "d", "e", "f"], [1] * 6, True, agree=[False, True, True, True, False, True]),
         _ep(6, ["a", "b"], [1, 1], True, agree=[True, True])])
    out = divergence.main([str(run)])
    assert out["tasks"] == 3 and out["hp_only_won"] == 2 and out["router_won"] == 0 and out["threshold"] == 0.6
    assert [(x["task"], x["first_divergence"], x["tier_there"], x["p_hp_there"], x["lp_loop_from"])
            for x in out["lost_where_hp_won"]] == [(0, 0, 0, 0.3, None), (1, 1, 0, 0.5, 3)]
    assert out["lost_at_step_0"] == 1 and out["failures_with_lp_loop"] == 1 and out["failures"] == 3
    shares = out["collected_flip_share"]
    assert shares["step 0"] == {"steps": 2, "flip_share": 0.5}
    assert shares["steps 1-4"]["steps"] == 5 and shares["steps 1-4"]["flip_share"] == pytest.approx(0.2)
    assert shares["steps 5+"] == {"steps": 1, "flip_share": 0.0}
    assert "leaves HP's path at step 0" in capsys.readouterr().out


def test_a_missing_point_is_named(tmp_path):
    with pytest.raises(SystemExit, match="hp_only/default: no episodes"):
        divergence.main([str(tmp_path)])
