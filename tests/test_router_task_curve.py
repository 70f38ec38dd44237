"""experiments/router_task_curve.py: the stage-1 router's learning curve over training tasks."""
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "experiments"))
import router_task_curve as rtc  # noqa: E402

WORDS = ["mug", "apple", "drawer", "table", "fridge", "lamp", "shelf", "cabinet"]


def rows_with_a_text_signal(n_tasks=24, T=8, seed=0):
    """Steps whose flip (and high KL) is written in the observation: the word 'locked'."""
    rng = np.random.default_rng(seed)
    rows = []
    for task in range(n_tasks):
        for t in range(T):
            flip = int(rng.random() < 0.3)
            ws = list(rng.choice(WORDS, 6)) + (["locked"] if flip else [])
            rows.append({"episode_id": f"e{task}", "step": t, "task": "put a mug in the fridge", "task_index": task,
                         "obs": "You see " + " ".join(ws) + ".", "history": [],
                         "kl": float(rng.exponential(0.2) + 2.0 * flip), "label": 0, "flip": flip})
    return rows


def test_relabel_fits_the_kl_cut_on_the_training_rows_only():
    from dmr_rl.config import load_config

    rows = [{"kl": k} for k in (0.1, 0.2, 0.3, 0.4, 5.0, 6.0, 7.0, 8.0)]
    train = np.array([True] * 4 + [False] * 4)
    lab = rtc.relabel(rows, train, load_config(None, ["label.rho=0.25"]).label)
    # the cut is the top quarter of the training KLs (0.4): every test row above it is positive
    assert [r["label"] for r in lab] == [0, 0, 0, 1, 1, 1, 1, 1]
    assert [r["target"] for r in lab] == [float(r["label"]) for r in lab]
    flips = [dict(r, flip=f) for r, f in zip(rows, (1, 0, 0, 0, 0, 0, 0, 1))]
    assert [r["label"] for r in rtc.relabel(flips, train, load_config(None).label, rule="flip")] == [1, 0, 0, 0, 0, 0, 0, 1]


def test_curve_holds_out_fixed_tasks_and_learns_the_signal():
    from dmr_rl.config import load_config

    cfg = load_config(None, ["sft.epochs=25", "sft.lr=0.003", "router.max_tokens=32", "label.rho=0.3"])
    rows = rows_with_a_text_signal()
    res = rtc.curve(cfg, rows, sizes=[2, 16], repeats=1, test_share=0.25, seed=0)
    assert res["test_tasks"] == 6 and res["pool_tasks"] == 18 and res["test_steps"] == 48
    big, small = res["curve"][16], res["curve"][2]
    assert big["train_steps"] == 128 and small["train_steps"] == 16
    assert big["auroc_flip"]["auroc"] > 0.9
    assert big["auroc_flip"]["ci"][0] <= big["auroc_flip"]["auroc"] <= big["auroc_flip"]["ci"][1]
    with pytest.raises(ValueError, match="only 18 are left"):
        rtc.curve(cfg, rows, sizes=[19], repeats=1, test_share=0.25, seed=0)
