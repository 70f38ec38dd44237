"""experiments/decisive_flips.py: the replay plan (one forced flip per replay) and its summary."""
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "experiments"))
import decisive_flips  # noqa: E402

from dmr_rl.rollout.records import EpisodeRecord, StepRecord  # noqa: E402


def _ep(task, agree, won=True, text=None):
    steps = [StepRecord(step=i, obs="", action="a", tier=1, extra={"tiers_agree": a}) for i, a in enumerate(agree)]
    return EpisodeRecord(episode_id=f"e{task}", task_index=task, task_id=str(task), task_type="x",
                         task=text or f"task {task}", won=won, score=float(won), steps=steps)


def test_rounds_force_one_flip_per_replay_of_won_episodes_only():
    eps = [_ep(0, [True, False, True, False]), _ep(1, [False]), _ep(2, [False, False], won=False),
           _ep(3, [True, True]), _ep(4, [False], text="task 0")]  # 4 repeats task 0's text
    rounds, counts = decisive_flips.flip_rounds(eps)
    assert rounds == [{0: ("task 0", 1), 1: ("task 1", 0)}, {0: ("task 0", 3)}]
    assert counts == {"episodes": 5, "won": 4, "with_flips": 2, "duplicate_task": 1}
    only_first, _ = decisive_flips.flip_rounds(eps, max_episodes=1)
    assert only_first == [{0: ("task 0", 1)}, {0: ("task 0", 3)}]


def test_summary_counts_decisive_flips_and_ranks_scores_against_them():
    flips = [{"decisive": d, "step": s, "task_type": t, "kl": kl, "label": lab, "p_hp": p}
             for d, s, t, kl, lab, p in [(True, 0, "a", 0.9, 1, 0.2), (False, 3, "a", 0.1, 0, 0.8),
                                         (True, 7, "b", 0.8, 0, np.nan), (False, 9, "b", 0.2, 1, 0.1)]]
    out = decisive_flips.summarise(flips)
    assert (out["flips"], out["decisive"], out["decisive_share"]) == (4, 2, 0.5)
    assert out["by_bucket"] == {"step 0": {"flips": 1, "decisive": 1}, "steps 1-4": {"flips": 1, "decisive": 0},
                                "steps 5+": {"flips": 2, "decisive": 1}}
    assert out["by_task_type"] == {"a": {"flips": 2, "decisive": 1}, "b": {"flips": 2, "decisive": 1}}
    a = out["auroc_decisive_among_flips"]
    assert a["kl"] == 1.0 and a["label"] == 0.5
    assert a["p_hp"] == pytest.approx(0.5)  # the nan step is left out: 0.2 (decisive) vs 0.8, 0.1
