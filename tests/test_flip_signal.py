"""experiments/flip_signal.py: out-of-fold flip rankings on a run's collected steps."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "experiments"))
import flip_signal  # noqa: E402

from dmr_rl.rollout.records import EpisodeRecord, StepRecord, TrajectoryStore  # noqa: E402


def _run(root: Path, n_tasks=20, steps=10, seed=0, sign=1.0) -> Path:
    """Collected steps where LP is unsure exactly on the flips and LP's state's first coordinate
    carries the KL label (flip steps labelled, plus noise; ``sign`` -1: the other way round)."""
    rng = np.random.default_rng(seed)
    eps, rows = [], []
    for t in range(n_tasks):
        recs = []
        for i in range(steps):
            flip = bool(rng.random() < 0.2)
            label = int(flip or rng.random() < 0.1)
            hidden = rng.normal(size=8)
            hidden[0] += sign * 3.0 * label
            recs.append(StepRecord(step=i, obs="", action="a", tier=1, kl=float(label),
                                   extra={"lp_hidden": hidden.tolist(), "tiers_agree": not flip,
                                          "lp_max_prob": 0.4 if flip else 0.9}))
            rows.append({"episode_id": f"e{t}", "step": i, "label": label})
        eps.append(EpisodeRecord(episode_id=f"e{t}", task_index=t, task_id=str(t), task_type="x", task="", steps=recs))
    TrajectoryStore(root / "trajectories" / "collect", "worker-0").append(eps)
    (root / "labels").mkdir(parents=True)
    (root / "labels" / "steps.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return root


def test_rankings_and_the_priced_floor(tmp_path):
    out = flip_signal.main([str(_run(tmp_path)), "--lp-bytes-share", "0.5", "--folds", "4", "--seeds", "2"])
    r = out["rankings"]
    assert out["steps"] == 200 and out["tasks"] == 20
    assert r["lp_confidence"]["auroc"] == 1.0 and r["lp_confidence"]["flips_on_top_0.4"] == 1.0  # LP unsure on every flip
    assert 0.6 < r["probe_kl_labels"]["auroc_mean"] < 1.0  # the state carries the label, the label the flips (noisily)
    for k in r.values():
        assert k["ci"][0] <= k["auroc"] <= k["ci"][1]
    floor = out["floor_at_the_probes_bytes"]["flip_recall_by_escalation_share"]
    assert floor["0.2"] == 1.0 > floor["0"]  # at the probe's bytes the floor finds what the probe misses
    assert json.loads((tmp_path / "analysis" / "flip_signal.json").read_text()) == out


def test_a_run_without_labels_is_named(tmp_path):
    root = _run(tmp_path)
    (root / "labels" / "steps.jsonl").unlink()
    with pytest.raises(SystemExit, match="no labelled steps"):
        flip_signal.main([str(root), "--lp-bytes-share", "0.5"])


def test_more_runs_join_the_training_folds(tmp_path):
    """The learning curve: other runs' steps are fitted on, this run's folds stay the test. Runs whose
    state carries the label the other way round pull the probe's ranking of this run's flips down."""
    root = _run(tmp_path / "a")
    others = [str(_run(tmp_path / f"b{i}", n_tasks=40, seed=i + 1, sign=-1.0)) for i in range(2)]
    out = flip_signal.main([str(root), "--lp-bytes-share", "0.5", "--folds", "4", "--seeds", "2",
                            "--more-runs", *others])
    curve = out["probe_kl_labels_by_training_tasks"]
    assert [c["train_tasks"] for c in curve] == [15, 55, 95] and curve[2]["runs_added"] == others
    assert curve[0]["auroc_mean"] == out["rankings"]["probe_kl_labels"]["auroc_mean"]
    assert curve[0]["auroc_mean"] > 0.6 > curve[1]["auroc_mean"] >= curve[2]["auroc_mean"] - 0.05
