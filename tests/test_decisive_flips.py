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


def test_the_cross_validated_probe_finds_a_signal_that_is_there_and_not_one_that_is_not():
    from dmr_rl.algos.router_losses import auroc

    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(40), 10)
    x = rng.normal(size=(400, 8))
    y = (x[:, 0] + 0.5 * rng.normal(size=400) > 1.0).astype(float)
    assert auroc(decisive_flips.cv_probe_scores(x, y, groups, alpha=1.0), y) > 0.85
    noise = (rng.random(400) < 0.2).astype(float)
    assert abs(auroc(decisive_flips.cv_probe_scores(x, noise, groups, alpha=1.0), noise) - 0.5) < 0.15


def test_probe_comparison_reads_labelled_steps_and_scores_each_rule_against_the_decisive_flips():
    rng = np.random.default_rng(1)
    rows = []
    for t in range(30):
        for s in range(8):
            h = rng.normal(size=4)
            rows.append({"episode_id": f"e{t}", "step": s, "task_index": t, "lp_hidden": list(h),
                         "kl": float(h[1] + 3), "label": int(h[1] > 0.7)})
    decisive = {(r["episode_id"], r["step"]) for r in rows if r["lp_hidden"][0] > 1.0}
    out = decisive_flips.probe_comparison(rows, decisive)
    assert out["steps"] == 240 and out["decisive"] == len(decisive) > 10
    assert out["probe_on_decisive"] > 0.9  # the decisive steps are where feature 0 is high
    assert abs(out["probe_on_kl_labels"] - 0.5) < 0.15 and abs(out["kl"] - 0.5) < 0.15  # the KL follows feature 1
