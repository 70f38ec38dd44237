"""Stage 1 and stage 2 through the RLlib LearnerGroup (num_learners=0), on synthetic data.

Stage 1: labels = "the observation mentions 'locked'"; the router must reach held-out AUROC >= 0.9.
Stage 2: a synthetic environment where an episode succeeds only if every 'locked' step ran on HP;
GRPO runs with a fake rollout_fn, changes the router, checkpoints and resumes exactly.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("ray.rllib")

from dmr_rl.config import load_config  # noqa: E402
from dmr_rl.rollout.records import EpisodeRecord, StepRecord  # noqa: E402
from dmr_rl.step import StepContext  # noqa: E402

WORDS = "apple cabinet fridge drawer table lamp mug towel sink counter shelf box bed key".split()


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


def synthetic_labelled_rows(n_eps=60, T=8, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for e in range(n_eps):
        hist = []
        for t in range(T):
            ws = list(rng.choice(WORDS, 10))
            crit = bool(rng.random() < 0.3)
            if crit:
                ws.insert(int(rng.integers(0, 10)), "locked")
            obs = "You see " + " ".join(ws) + "."
            kl = float(rng.exponential(0.5) + (2.0 if crit else 0.0))
            rows.append({"episode_id": f"ep{e}", "step": t, "task": "put a mug in the fridge",
                         "task_index": e // 2,  # every task collected twice, as a replaying collection does
                         "obs": obs, "history": [list(h) for h in hist], "kl": kl, "label": int(crit),
                         "flip": int(not crit)})  # anti-labels, so auroc_flip must read this field
            hist.append((f"go to {rng.choice(WORDS)} 1", obs))
    return rows


# ---- stage 1 ---------------------------------------------------------------------------------
def test_sft_reaches_auroc_on_holdout_and_saves_a_loadable_router(tmp_path):
    from dmr_rl.pipeline.train_sft import fit, read_labelled_steps, write_labelled_steps
    from dmr_rl.router import make_router

    path = write_labelled_steps(tmp_path / "steps.jsonl", synthetic_labelled_rows())
    assert len(read_labelled_steps(path)) == 480
    cfg = load_config(None, ["sft.epochs=8", "sft.lr=1e-3", "sft.batch_size=32", "sft.holdout=0.25"])
    res = fit(cfg, path, tmp_path / "router", log_dir=str(tmp_path / "tb"), progress=False)
    # the holdout is 25% of the 30 TASKS, each with both of its episodes
    assert res["n_holdout_tasks"] == 8 and res["n_train_tasks"] == 22
    assert res["n_holdout_episodes"] == 16 and res["n_train_episodes"] == 44
    # BCE's positive weight from the training labels' balance (sft.pos_weight = 0: auto)
    from dmr_rl.pipeline.train_sft import split_by_task

    train, _ = split_by_task(read_labelled_steps(path), 0.25, seed=cfg.seed)
    pos = sum(r["label"] for r in train)
    assert res["pos_weight"] == pytest.approx((len(train) - pos) / pos) and res["pos_weight"] > 1.5
    assert res["holdout"]["auroc"] >= 0.9, res["history"]
    assert res["history"][0]["auroc"] < res["holdout"]["auroc"]  # it learned, it did not start there
    assert res["holdout"]["auroc_flip"] == pytest.approx(1.0 - res["holdout"]["auroc"])
    # the saved router reproduces the held-out ranking on fresh contexts
    router = make_router("transformer", path=str(tmp_path / "router"))
    crit = StepContext(task="put a mug in the fridge", obs="You see mug locked drawer table.", step=3)
    calm = StepContext(task="put a mug in the fridge", obs="You see mug open drawer table.", step=3)
    d = router.route([crit, calm], np.random.default_rng(0))
    assert d.p_hp[0] > d.p_hp[1]
    assert json.loads((tmp_path / "router" / "sft_metrics.json").read_text())["holdout"]["auroc"] >= 0.9
    assert {"sft/loss", "sft/auroc", "sft/precision", "sft/recall", "time/update"} <= _scalar_tags(tmp_path / "tb")


def test_split_by_task_keeps_every_task_on_one_side():
    from dmr_rl.pipeline.train_sft import balance_pos_weight, split_by_task

    rows = synthetic_labelled_rows(n_eps=20, T=2)
    train, hold = split_by_task(rows, 0.3, seed=1)
    tr, ho = {r["task_index"] for r in train}, {r["task_index"] for r in hold}
    assert not tr & ho and len(ho) == 3 and len(tr) == 7 and len(train) + len(hold) == len(rows)
    # rows without task_index fall back to the task text: one task cannot be split
    text_only = [{k: v for k, v in r.items() if k != "task_index"} for r in rows]
    assert split_by_task(text_only, 0.3)[1] == []
    assert balance_pos_weight([1, 0, 0, 0], 0.0) == 3.0 and balance_pos_weight([1, 0], 2.5) == 2.5
    assert balance_pos_weight([0, 0], 0.0) == 1.0  # no positives: unweighted


def test_labelled_steps_errors_name_file_line_and_field(tmp_path):
    from environments.errors import DataError

    from dmr_rl.pipeline.train_sft import read_labelled_steps

    p = tmp_path / "bad.jsonl"
    row = synthetic_labelled_rows(1, 1)[0]
    del row["kl"]
    p.write_text(json.dumps(synthetic_labelled_rows(1, 1)[0]) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl:2: missing field 'kl'"):
        read_labelled_steps(p)
    p.write_text("{not json\n")
    with pytest.raises(DataError, match=r"bad.jsonl:1: not valid JSON"):
        read_labelled_steps(p)
    with pytest.raises(FileNotFoundError):
        read_labelled_steps(tmp_path / "nope.jsonl")


# ---- stage 2 ---------------------------------------------------------------------------------
def make_synthetic_rollout(T=6, p_crit=0.35, seed=0, n_tasks=12):
    """rollout_fn over a synthetic task pool: fixed observations per task; the episode is won
    iff every step whose observation says 'locked' was routed to HP."""
    from dmr_rl.router.transformer import TransformerRouter

    rng = np.random.default_rng(seed)
    tasks = []
    for i in range(n_tasks):
        obs = []
        for t in range(T):
            ws = list(rng.choice(WORDS, 6))
            if rng.random() < p_crit or t == i % T:
                ws.insert(2, "locked")
            obs.append("You see " + " ".join(ws) + ".")
        tasks.append(obs)
    calls = []

    def rollout_fn(weights, task_indices, group_size, seed):
        calls.append({"tasks": list(task_indices), "seed": seed})
        router = TransformerRouter(weights=weights)
        rng = np.random.default_rng(seed)
        eps = []
        for ti in task_indices:
            for g in range(group_size):
                eps.append(EpisodeRecord(episode_id=f"t{ti}-g{g}-{seed}", task_index=int(ti),
                                         task_id=f"task{ti}", task_type="synthetic",
                                         task=f"open the box number {ti}"))
        for t in range(T):
            ctxs = [StepContext(task=ep.task, obs=tasks[ep.task_index][t],
                                history=[(s.action, "ok") for s in ep.steps], step=t) for ep in eps]
            d = router.route(ctxs, rng, sample=True)
            for ep, tier, lp, p in zip(eps, d.tiers, d.logprobs, d.p_hp):
                ep.steps.append(StepRecord(step=t, obs=tasks[ep.task_index][t],
                                           action=f"act {t}", tier=int(tier), router_prob=float(p),
                                           router_logprob=float(lp)))
        for ep in eps:
            ep.won = all(s.tier == 1 for s in ep.steps if "locked" in s.obs)
            ep.score = float(ep.won)
        return eps

    rollout_fn.calls = calls
    rollout_fn.tasks = tasks
    return rollout_fn


@pytest.fixture(scope="module")
def grpo_learners():
    from dmr_rl.learners.router_learners import build_learner_group

    return build_learner_group(grpo_cfg(), "grpo")


def grpo_cfg(*extra):
    return load_config(None, ["grpo.iterations=2", "grpo.tasks_per_iter=4", "grpo.group_size=4",
                              "grpo.lr=1e-3", "grpo.checkpoint_every=1", "grpo.epochs_per_iter=2",
                              "grpo.hp_cost=0.3", *extra])


def _scalar_tags(log_dir) -> set:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return set(acc.Tags()["scalars"])


def _weights_equal(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_grpo_two_iterations_change_the_router_checkpoint_and_resume_exactly(tmp_path, grpo_learners):
    from dmr_rl.pipeline.train_grpo import fit, latest_checkpoint
    from dmr_rl.router.transformer import TransformerRouter

    cfg = grpo_cfg()
    init = TransformerRouter(cfg.router, seed=cfg.seed).get_weights()
    rollout = make_synthetic_rollout()
    res = fit(cfg, rollout, tmp_path / "a", num_tasks=12, learner_group=grpo_learners,
              log_dir=str(tmp_path / "tb"), progress=False)
    assert [h["iteration"] for h in res["history"]] == [1, 2]
    assert all(h["steps"] == 4 * 4 * 6 for h in res["history"])
    assert all(0.0 <= h["hp_ratio"] <= 1.0 and np.isfinite(h["kl_to_ref"]) for h in res["history"])
    after2 = TransformerRouter.load(res["router_dir"]).get_weights()
    assert not _weights_equal(init, after2)  # parameters changed
    assert rollout.calls[1]["seed"] != rollout.calls[0]["seed"]
    ck = latest_checkpoint(tmp_path / "a")
    assert ck.name == "iter_0002" and (ck / "learner").is_dir()
    assert _weights_equal(TransformerRouter.load(ck).get_weights(), after2)

    # scramble the learners (other weights, cleared optimizer): resuming must restore them
    from dmr_rl.learners.router_learners import reset_learner_group, router_weights

    assert _weights_equal(router_weights(grpo_learners), after2)  # the group passed in was used
    reset_learner_group(grpo_learners, TransformerRouter(seed=123).get_weights())
    # resume to 3 iterations: continues at 3, from equal weights, optimizer and RNG restored
    res3 = fit(cfg, rollout, tmp_path / "a", num_tasks=12, learner_group=grpo_learners,
               resume=True, iterations=3, progress=False)
    assert [h["iteration"] for h in res3["history"]] == [1, 2, 3]
    assert res3["history"][:2] == json.loads((ck / "state.json").read_text())["history"]
    resumed3 = TransformerRouter.load(res3["router_dir"]).get_weights()

    # an uninterrupted 3-iteration run gives the same rollout seeds, tasks and weights
    straight = make_synthetic_rollout()
    res_s = fit(cfg, straight, tmp_path / "b", num_tasks=12, learner_group=grpo_learners,
                iterations=3, progress=False)
    assert straight.calls == rollout.calls
    got = TransformerRouter.load(res_s["router_dir"]).get_weights()
    for k in got:
        np.testing.assert_allclose(got[k], resumed3[k], rtol=1e-5, atol=1e-6)
    assert {"train/success", "train/hp_ratio", "train/reward", "grpo/kl_to_ref", "grpo/clip_frac",
            "grpo/pg_loss", "time/rollout", "time/update"} <= _scalar_tags(tmp_path / "tb")
    # a reused group built for other settings is refused, not silently used
    with pytest.raises(ValueError, match="kl_coef=0.05, the config asks for 0.5"):
        fit(grpo_cfg("grpo.kl_coef=0.5"), rollout, tmp_path / "c", num_tasks=12,
            learner_group=grpo_learners, progress=False)


def test_grpo_raises_reward_on_the_synthetic_environment(tmp_path, grpo_learners):
    """One 'locked' step per episode must run on HP to win; HP costs 0.1 per unit share.
    A fresh router (P(HP) ~ 0.3) wins ~20%; GRPO must raise success and reward."""
    from dmr_rl.pipeline.train_grpo import fit

    cfg = grpo_cfg("grpo.tasks_per_iter=6", "grpo.group_size=6",
                   "grpo.hp_cost=0.1", "grpo.checkpoint_every=100", "grpo.epochs_per_iter=3")
    rollout = make_synthetic_rollout(p_crit=0.0, T=4)
    res = fit(cfg, rollout, tmp_path, num_tasks=12, learner_group=grpo_learners, iterations=12,
              progress=False)
    hist = res["history"]
    first = np.mean([h["reward"] for h in hist[:3]])
    last = np.mean([h["reward"] for h in hist[-3:]])
    assert last > first + 0.2, [round(h["reward"], 3) for h in hist]
    assert np.mean([h["success"] for h in hist[-3:]]) > np.mean([h["success"] for h in hist[:3]])


def test_remote_learner_trains_the_router(ray_session):
    """num_learners=1: the learner classes ship to a Ray actor and update the router there."""
    from dmr_rl.learners.router_learners import (build_learner_group, make_batch, router_weights,
                                                  update_metrics)

    lg = build_learner_group(None, "sft", num_learners=1, lr=1e-2, seed=0)
    try:
        rows = synthetic_labelled_rows(n_eps=6, T=8, seed=1)
        from dmr_rl.router.features import TokenFeatures, features_in_chunks

        ctxs = [StepContext(task=r["task"], obs=r["obs"], step=r["step"]) for r in rows]
        cols = dict(features_in_chunks(TokenFeatures(), ctxs),
                    targets=np.array([r["label"] for r in rows], np.float32),
                    weights=np.ones(len(rows), np.float32))
        w0 = router_weights(lg)
        first = update_metrics(lg.update(batch=make_batch(cols), num_epochs=1))["bce"]
        for _ in range(4):
            last = update_metrics(lg.update(batch=make_batch(cols), num_epochs=1))["bce"]
        w1 = router_weights(lg)
        assert not _weights_equal(w0, w1)
        assert last < first
    finally:
        lg.shutdown()


def test_grpo_batch_leaves_the_steps_hp_first_steps_decided_out_of_the_loss():
    from dmr_rl.pipeline.train_grpo import build_grpo_batch
    from dmr_rl.router.transformer import TransformerRouter

    rollout = make_synthetic_rollout(T=4)
    episodes = rollout(TransformerRouter(seed=0).get_weights(), [0, 1], 2, 0)
    for k, want in ((0, [1, 1, 1, 1]), (2, [0, 0, 1, 1])):
        ref = TransformerRouter(seed=0, hp_first_steps=k)
        cols, info = build_grpo_batch(episodes, ref, ref.features, hp_cost=0.3, hp_budget=None)
        assert info["steps"] == 16
        np.testing.assert_array_equal(cols["weights"], want * 4)


def test_grpo_with_lp_hidden_features_needs_the_stage1_router(tmp_path):
    from dmr_rl.config import ConfigError, load_config
    from dmr_rl.pipeline.train_grpo import fit

    cfg = load_config(None, ["router.features=lp_hidden", f"run_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="stage-1 router"):
        fit(cfg, lambda *a: [], tmp_path / "out", num_tasks=4, progress=False)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
