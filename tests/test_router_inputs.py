"""experiments/router_inputs.py: the offline study of which router inputs predict flips."""
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "experiments"))
import router_inputs as ri  # noqa: E402


def test_task_folds_keep_each_task_in_one_fold_and_use_every_fold():
    tasks = np.repeat(np.arange(7), 3)
    folds = ri.task_folds(tasks, 3, seed=1)
    for t in range(7):
        assert len(set(folds[tasks == t])) == 1
    assert set(folds.tolist()) == {0, 1, 2}
    with pytest.raises(ValueError, match="7 tasks cannot fill 8 folds"):
        ri.task_folds(tasks, 8, seed=0)


def test_hp_share_to_catch_counts_steps_in_score_order():
    flips = np.array([1, 0, 1, 0, 0, 0, 0, 1, 0, 0])
    perfect = flips + 0.01 * np.arange(10)
    assert ri.hp_share_to_catch(perfect, flips, recall=1.0) == pytest.approx(0.3)
    # a score ranking the flips last needs every step to hold 80% of them (3 flips -> 3 needed)
    assert ri.hp_share_to_catch(-perfect, flips, recall=0.8) == pytest.approx(1.0)
    assert ri.hp_share_to_catch(perfect, flips, recall=0.5) == pytest.approx(0.2)


def test_lp_confidence_is_high_when_unsure():
    sure, sure_h = ri.lp_confidence(np.array([10.0, 0.0, 0.0]))
    unsure, unsure_h = ri.lp_confidence(np.array([1.0, 1.0, 0.0]))
    assert sure < 0.01 and unsure == pytest.approx(1.0) and unsure_h > sure_h


def test_auroc_ci_is_clustered_by_task_and_contains_the_estimate():
    rng = np.random.default_rng(0)
    tasks = np.repeat(np.arange(12), 10)
    flips = (rng.random(120) < 0.2).astype(int)
    scores = flips + rng.normal(0, 0.8, 120)
    r = ri.auroc_with_ci(scores, flips, tasks, n_boot=300)
    assert r["ci"][0] <= r["auroc"] <= r["ci"][1] and 0.6 < r["auroc"] < 1.0
    # with every step its own cluster the interval is narrower than with 12 clusters of 10
    one = ri.auroc_with_ci(scores, flips, np.arange(120), n_boot=300)
    assert one["ci"][1] - one["ci"][0] < r["ci"][1] - r["ci"][0]


def test_lp_hidden_router_learns_a_signal_only_the_hidden_state_carries(tmp_path):
    """The stage-1 router trained through train_sft.fit on rows whose flips are written in the
    LP hidden vector (and nowhere in the text) ranks held-out flips well with lp_hidden features
    and at chance with tokens alone."""
    from dmr_rl.config import load_config
    from dmr_rl.rollout.records import EpisodeRecord, StepRecord
    from dmr_rl.router.transformer import TransformerRouter

    rng = np.random.default_rng(0)
    index, flips, hidden = [], [], []
    for task in range(16):
        ep = EpisodeRecord(episode_id=f"e{task}", task_index=task, task_id=str(task), task_type="t",
                           task="put a mug on the table",
                           steps=[StepRecord(step=t, obs="you see a mug", action="look", tier=1,
                                             admissible=["look"]) for t in range(10)])
        for t in range(10):
            y = int(rng.random() < 0.3)
            index.append(("collect", ep, t))
            flips.append(y)
            hidden.append((rng.normal(0, 1, 8) + 3.0 * y * np.eye(8)[0]).astype(np.float32))
    scores = {"kl": np.array(flips, float), "flip": np.array(flips), "lp_hidden": np.stack(hidden)}
    cfg = load_config(None, ["sft.epochs=40", "sft.lr=0.003", "router.max_tokens=32"])
    folds = ri.task_folds(np.array([e.task_index for _, e, _ in index]), 2, seed=0)
    test, train = folds == 0, folds != 0
    labels = ri.fold_labels("flip", scores, train, cfg.label)
    out = {}
    for features in ("tokens", "lp_hidden"):
        work = tmp_path / features
        work.mkdir()
        out[features] = ri.train_and_score(cfg, features, ri.fold_rows(index, scores, labels, train),
                                           ri.fold_rows(index, scores, labels, test), work)
    # the linear probe (no token encoder, router.n_layers=0) on the same rows, its inputs standardised
    # by the training rows' mean and std, which the saved router carries
    probe_cfg = load_config(None, ["sft.epochs=40", "sft.lr=0.03", "router.max_tokens=32",  # 80 updates: a probe takes a larger step
                                   "router.features=lp_hidden", "router.n_layers=0"])
    (tmp_path / "probe").mkdir()
    out["probe"] = ri.train_and_score(probe_cfg, "lp_hidden", ri.fold_rows(index, scores, labels, train),
                                      ri.fold_rows(index, scores, labels, test), tmp_path / "probe")
    saved = TransformerRouter.load(tmp_path / "probe" / "router")
    np.testing.assert_allclose(saved.net.hidden_mean.numpy(), scores["lp_hidden"][train].mean(0), atol=1e-4)
    y = scores["flip"][test]
    assert ri.auroc_with_ci(out["lp_hidden"], y, np.arange(test.sum()))["auroc"] > 0.85
    assert ri.auroc_with_ci(out["probe"], y, np.arange(test.sum()))["auroc"] > 0.85
    assert abs(ri.auroc_with_ci(out["tokens"], y, np.arange(test.sum()))["auroc"] - 0.5) < 0.15
