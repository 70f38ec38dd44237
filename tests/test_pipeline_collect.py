"""dmr collect -> dmr label on a tiny setup: trajectories on disk, KL labels in train_sft's format."""
from __future__ import annotations

import functools
import json

import numpy as np
import pytest

from dmr_rl.cli import main
from dmr_rl.config import load_config
from dmr_rl.algos.kl_labels import kl_summary, label_steps
from dmr_rl.rollout.records import TrajectoryStore


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    from dmr_rl.models.checkpoints import make_tiny_checkpoint

    root = tmp_path_factory.mktemp("tiny_pipeline")
    return str(make_tiny_checkpoint(root / "a", arch="llama", seed=0)), str(make_tiny_checkpoint(root / "b", arch="llama", seed=1))


def _overrides(run_dir, data, hp, lp, episodes=4):
    return [f"run_dir={run_dir}", f"env.data_dir={data}", "env.max_steps=3", f"hp.model_path={hp}",
            f"lp.model_path={lp}", "lp.quant_method=none", "lp.bits=16", f"collect.episodes={episodes}",
            "collect.num_workers=1", "collect.envs_per_worker=2", "label.rho=0.25"]


def test_collect_then_label_same_model_gives_zero_kl(alfworld_data, tiny_models, tmp_path, capsys):
    a, _ = tiny_models
    sets = [x for o in _overrides(tmp_path / "run", alfworld_data, a, a) for x in ("--set", o)]
    assert main(["collect", "--local", "--no-progress", *sets]) == 0
    out = capsys.readouterr().out
    shards = tmp_path / "run" / "trajectories" / "collect"
    assert str(shards) in out and "success" in out
    eps = TrajectoryStore.read(shards)
    assert len(eps) == 4 and all(1 <= e.length <= 3 for e in eps)
    assert all(s.tier == 1 and s.prompt for e in eps for s in e.steps)  # the HP agent acted
    summary = json.loads((tmp_path / "run" / "trajectories" / "collect_summary.json").read_text())
    assert summary["stored_episodes"] == 4 and summary["hp_ratio"] == 1.0

    assert main(["label", "--no-progress", *sets]) == 0
    out = capsys.readouterr().out
    path = tmp_path / "run" / "labels" / "steps.jsonl"
    assert str(path) in out and "top-5% share" in out
    from dmr_rl.pipeline.train_sft import read_labelled_steps

    rows = read_labelled_steps(path)  # train_sft's reader validates the format
    assert len(rows) == sum(e.length for e in eps)
    assert all(abs(r["kl"]) < 1e-9 and r["label"] == 0 for r in rows)
    by_ep = {e.episode_id: e for e in eps}
    for r in rows:
        e = by_ep[r["episode_id"]]
        assert r["obs"] == e.steps[r["step"]].obs and len(r["history"]) == r["step"]


def test_label_different_models_marks_the_budget_share(alfworld_data, tiny_models, tmp_path):
    from dmr_rl.pipeline import collect, label

    a, b = tiny_models
    cfg = load_config(None, _overrides(tmp_path / "run", alfworld_data, a, b, episodes=3))
    collect.run(cfg, local=True, progress=False)
    stats = label.run(cfg, progress=False)
    rows = [json.loads(line) for line in open(stats["labelled_steps"])]
    kls = np.array([r["kl"] for r in rows])
    assert (kls > 0).all()
    assert sum(r["label"] for r in rows) == int(round(0.25 * len(rows))) == stats["positives"]
    cut = min(r["kl"] for r in rows if r["label"])
    assert all(r["kl"] <= cut for r in rows if not r["label"])
    assert stats["kl"]["mean"] == pytest.approx(kls.mean())
    cfg.label.kl_space = "tokens"
    tok = label.run(cfg, out_path=str(tmp_path / "tok.jsonl"), progress=False)
    assert tok["kl"]["mean"] > 0 and tok["steps"] == len(rows)
    # greedy_flip: positives are exactly the steps whose two greedy actions differ; kl stays the actions KL
    cfg.label.kl_space = "greedy_flip"
    flip = label.run(cfg, out_path=str(tmp_path / "flip.jsonl"), progress=False)
    frows = [json.loads(line) for line in open(flip["labelled_steps"])]
    assert [r["kl"] for r in frows] == pytest.approx(kls.tolist())
    assert sum(r["label"] for r in frows) == flip["positives"] == flip["greedy_flips"]
    # every labelled row keeps its flip, whatever the label rule: the KL-labelled rows carry the same flips
    assert [r["flip"] for r in rows] == [r["flip"] for r in frows] == [r["label"] for r in frows]
    assert flip["mode"] == "greedy_flip" and flip["threshold"] is None and flip["kl_temperature"] == 1.0


def test_label_reads_the_kl_collection_recorded_and_matches_rescoring(alfworld_data, tiny_models, tmp_path):
    """collect.record_kl: both tiers at every collected step (KV cache kept per episode); dmr label
    then labels from the recorded KL and flips without loading a tier, and they equal what scoring
    every step again gives."""
    from dmr_rl.pipeline import collect, label

    a, b = tiny_models
    cfg = load_config(None, _overrides(tmp_path / "run", alfworld_data, a, b, episodes=3)
                      + ["collect.record_kl=true", "hp.dtype=float32", "lp.dtype=float32"])
    s = collect.run(cfg, local=True, progress=False)
    assert s["record_kl"] is True
    eps = TrajectoryStore.read(s["trajectories"])
    assert all(x.kl is not None and "tiers_agree" in x.extra for e in eps for x in e.steps)
    rec = label.run(cfg, out_path=str(tmp_path / "rec.jsonl"), progress=False)
    assert rec["kl_source"] == "recorded at collection" and "start" not in rec["timers_s"]
    new = label.run(cfg, out_path=str(tmp_path / "new.jsonl"), progress=False, rescore=True)
    assert new["kl_source"] == "scored" and "kl" in new["timers_s"]
    r1 = [json.loads(line) for line in open(rec["labelled_steps"])]
    r2 = [json.loads(line) for line in open(new["labelled_steps"])]
    assert [r["kl"] for r in r1] == pytest.approx([r["kl"] for r in r2], rel=1e-4, abs=1e-6)
    assert [r["flip"] for r in r1] == [r["flip"] for r in r2] and [r["label"] for r in r1] == [r["label"] for r in r2]
    assert rec["positives"] > 0 and rec["steps"] == sum(e.length for e in eps)
    # a sampling agent's recorded agreement is between sampled actions, not the greedy ones: scored again
    cfg.agent.temperature = 0.7
    assert label.run(cfg, out_path=str(tmp_path / "t.jsonl"), progress=False)["kl_source"] == "scored"


def test_collect_through_ray_actors_with_mixed_policy(ray_session, alfworld_data, tmp_path):
    from dmr_rl.pipeline import collect
    from dmr_rl.serving.fake_backend import FakeBackend

    cfg = load_config(None, _overrides(tmp_path / "run", alfworld_data, str(tmp_path), str(tmp_path), episodes=6)
                      + ["collect.policy=mixed", "collect.num_workers=2", "collect.envs_per_worker=1"])
    specs = {t: functools.partial(FakeBackend, t) for t in ("hp", "lp")}
    s = collect.run(cfg, local=False, record_kl=True, progress=False, backend_specs=specs)
    eps = TrajectoryStore.read(s["trajectories"])
    assert s["stored_episodes"] == len(eps) == 6 and len(s["shards"]) == 2
    steps = [x for e in eps for x in e.steps]
    assert {x.tier for x in steps} == {0, 1} and all(x.kl is not None for x in steps)
    assert s["kl"]["steps"] == len(steps) and s["tier_cost"]["hp"]["rows"] >= len(steps)


def test_label_rules_and_stats_by_hand():
    labels, _, thr = label_steps([0.0, 0.5, 0.1, 2.0, 0.0, 0.3, 0.0, 0.0], "budget", rho=0.25)
    assert labels.tolist() == [0, 1, 0, 1, 0, 0, 0, 0] and thr == 0.5
    labels, _, _ = label_steps([0.0, 0.0, 0.0, 0.0], "budget", rho=0.5)
    assert labels.tolist() == [0, 0, 0, 0]  # a zero-KL step is never precision-sensitive
    labels, _, thr = label_steps([0.05, 0.1, 0.2], "threshold", threshold=0.1)
    assert labels.tolist() == [0, 1, 1] and thr == 0.1
    s = kl_summary([1.0] * 19 + [81.0])
    assert s["top5_share"] == pytest.approx(81.0 / 100.0) and s["p50"] == 1.0 and s["mean"] == 5.0


def test_label_kl_follows_the_acting_rule_by_hand():
    from dmr_rl.models.backends.base import ActionScores
    from dmr_rl.pipeline.label import action_kl_and_flip

    # HP prefers action 0 by sum log-prob; per token (length-normalised) action 1 wins for HP
    hp = ActionScores(np.array([-2.0, -3.0]), np.array([1, 3]))
    lp = ActionScores(np.array([-3.0, -2.0]), np.array([1, 3]))
    kl1, flip = action_kl_and_flip(hp, lp)
    p = np.exp([-2.0, -3.0]) / np.exp([-2.0, -3.0]).sum()
    assert kl1 == pytest.approx(float(np.sum(p * (np.log(p) - np.log(p[::-1])))))
    assert flip == 1  # argmax 0 vs argmax 1
    # length-normalised scores: HP [-2, -1], LP [-3, -2/3]: both pick action 1
    kl_ln, flip_ln = action_kl_and_flip(hp, lp, length_normalised=True)
    assert flip_ln == 0 and kl_ln > 0 and kl_ln != pytest.approx(kl1)
    # a sampling agent at temperature 2: the KL of the tempered distributions (smaller here)
    kl_t, _ = action_kl_and_flip(hp, lp, temperature=2.0)
    q = np.exp([-1.0, -1.5]) / np.exp([-1.0, -1.5]).sum()
    assert kl_t == pytest.approx(float(np.sum(q * (np.log(q) - np.log(q[::-1]))))) and kl_t < kl1


def test_label_calls_both_tiers_at_once_and_keeps_step_order():
    """step_scores sends a batch to HP and LP concurrently: each fake tier waits at a two-party barrier
    that only opens when the other tier's call is in flight too (sequential calls time out)."""
    import threading
    from types import SimpleNamespace

    from dmr_rl.models.backends.base import ActionScores
    from dmr_rl.pipeline.label import step_scores

    barrier = threading.Barrier(2, timeout=10)

    class Tier:
        def __init__(self, sign):
            self.sign = sign

        def score_actions(self, prompts, candidates):
            barrier.wait()
            return [ActionScores(np.array([0.0, self.sign * float(p)]), np.array([1, 1])) for p in prompts]

    steps = [SimpleNamespace(prompt=str(i), admissible=["a", "b"]) for i in range(5)]
    out = step_scores({"hp": Tier(+1), "lp": Tier(-1)}, steps, "actions", batch_size=2)
    assert out["flip"].tolist() == [0, 1, 1, 1, 1]  # HP picks b, LP a, once the margin is non-zero
    assert out["kl"][0] == 0.0 and np.all(np.diff(out["kl"]) > 0)  # each step's KL in its own row


def test_named_timers_accumulate_and_reach_tensorboard(tmp_path):
    import time

    from dmr_rl.pipeline.timing import Timers

    t = Timers()
    for _ in range(2):
        with t("rollout"):
            time.sleep(0.01)
    t.add("update", 0.5)
    d = t.as_dict()
    assert d["rollout"] >= 0.02 and t.counts["rollout"] == 2 and d["update"] == 0.5
    assert 0.01 <= t.last("rollout") < d["rollout"]
    t.write_tensorboard(tmp_path)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == {"time/rollout", "time/update"}
    assert acc.Scalars("time/update")[0].value == 0.5
