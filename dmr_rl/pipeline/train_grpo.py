"""Stage 2: GRPO on the router, with rollouts supplied by a callable.

    fit(cfg, rollout_fn, out_dir, init_router=<stage-1 dir>, num_tasks=N, resume=False)

``rollout_fn(router_weights, task_indices, group_size, seed) -> list[EpisodeRecord]`` runs
``group_size`` episodes per task index with a TransformerRouter holding ``router_weights``
(a state dict, numpy arrays) that SAMPLES its decisions (``route(..., sample=True)``), and
records per step the tier taken (``StepRecord.tier``) and its log-prob under that router
(``StepRecord.router_logprob``). The Ray rollout workers provide it; tests pass a synthetic one.
Passing the weights on every call is how new weights reach the workers each iteration.

Per iteration: pick ``grpo.tasks_per_iter`` tasks; roll out G per task; reward = success (the
episode's ``won``, or ``score`` for WebShop) minus the HP-share cost (``grpo.hp_cost``, hinge when
``grpo.hp_budget`` >= 0); advantages relative to each task's group (``grpo.adv_norm``); one batch row per
step (features, tier, recorded log-prob, the reference = stage-1 router's logit, the episode's
advantage); ``grpo.epochs_per_iter`` LearnerGroup updates; new weights. Checkpoint every
``grpo.checkpoint_every`` iterations and after the last one:
``<out_dir>/checkpoints/iter_XXXX/{learner/, router.pt, router.json, state.json}`` and
``<out_dir>/checkpoints/LATEST`` (written last, so a crash mid-checkpoint leaves the previous
one valid; a fresh run in the same directory drops the old LATEST first). ``resume=True`` restores learner (weights + optimizer), iteration count, RNG and
history from LATEST. The final router is saved to ``<out_dir>/router``.

TensorBoard scalars: train/success, train/hp_ratio, train/reward, grpo/kl_to_ref,
grpo/clip_frac, grpo/pg_loss, grpo/entropy, grpo/ratio_mean, time/rollout, time/update.
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from dmr_rl.algos.grpo import broadcast_to_steps, episode_rewards, group_advantages

# lp_hidden routers: each StepRecord carries the LP hidden vector in ``extra["lp_hidden"]``.
GRPO_SCALARS = ("kl_to_ref", "clip_frac", "pg_loss", "entropy", "ratio_mean", "loss")


def episode_success(ep, use_score: bool) -> float:
    return float(ep.score) if use_score else float(bool(ep.won))


def build_grpo_batch(episodes: list, ref_router, features, hp_cost: float, hp_budget: float,
                     use_score: bool = False, adv_norm: str = "group_mean"):
    """Rewards, group advantages and the per-step batch columns for one iteration.

    ``adv_norm``: how advantages are normalised (``dmr_rl.algos.grpo.ADV_NORMS``). Steps the
    router's ``hp_first_steps`` rule decided (``ref_router.forced_hp``) get weight 0: the network
    did not choose them.
    Returns (columns dict of numpy arrays, info dict: success, hp_ratio, reward means, adv
    metrics). Raises ValueError naming the episode and step when a step lacks a recorded
    router log-prob or tier.
    """
    from dmr_rl.router.features import contexts_from_episode, features_in_chunks

    episodes = [ep for ep in episodes if ep.steps]
    if not episodes:
        raise ValueError("rollout_fn returned no episode with steps")
    success = np.array([episode_success(ep, use_score) for ep in episodes])
    hp_share = np.array([ep.hp_ratio for ep in episodes])
    rewards = episode_rewards(success, hp_share, hp_cost, hp_budget)
    adv, adv_m = group_advantages(rewards, [ep.task_index for ep in episodes], mode=adv_norm)
    ctxs, actions, old_lp = [], [], []
    for ep in episodes:
        ctxs += contexts_from_episode(ep)
        for s in ep.steps:
            if s.tier not in (0, 1) or s.router_logprob is None or not math.isfinite(s.router_logprob):
                raise ValueError(f"episode {ep.episode_id} step {s.step}: tier={s.tier!r}, "
                                 f"router_logprob={s.router_logprob!r}; GRPO needs the sampled tier "
                                 "and its log-prob recorded at every step")
            actions.append(s.tier)
            old_lp.append(s.router_logprob)
    hidden = None
    if getattr(features, "name", "") == "lp_hidden":
        hidden = [s.extra.get("lp_hidden") for ep in episodes for s in ep.steps]
    feats = features_in_chunks(features, ctxs, lp_hidden=hidden)
    n = len(actions)
    columns = dict(feats,
                   actions=np.array(actions, dtype=np.int64),
                   old_logp=np.array(old_lp, dtype=np.float32),
                   ref_logits=ref_router.logits_from_features(feats).astype(np.float32),
                   advantages=broadcast_to_steps(adv, [ep.length for ep in episodes]).astype(np.float32),
                   weights=(~ref_router.forced_hp([s.step for ep in episodes for s in ep.steps])).astype(np.float32))
    info = {"success": float(success.mean()), "hp_ratio": float(hp_share.mean()),
            "reward": float(rewards.mean()), "episodes": len(episodes), "steps": n, **adv_m}
    return columns, info


def _ckpt_root(out_dir) -> Path:
    return Path(out_dir) / "checkpoints"


def save_checkpoint(out_dir, iteration: int, learner_group, router, rng, history: list) -> Path:
    """Write iter_XXXX (learner state incl. optimizer, router, state.json), then LATEST."""
    root = _ckpt_root(out_dir)
    d = root / f"iter_{iteration:04d}"
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    learner_group.save_to_path(str((d / "learner").resolve()))
    router.save(d)
    (d / "state.json").write_text(json.dumps({"iteration": iteration, "rng": rng.bit_generator.state,
                                              "history": history}, default=float))
    tmp = root / "LATEST.tmp"
    tmp.write_text(d.name)
    tmp.replace(root / "LATEST")
    return d


def latest_checkpoint(out_dir) -> Optional[Path]:
    p = _ckpt_root(out_dir) / "LATEST"
    if not p.is_file():
        return None
    d = _ckpt_root(out_dir) / p.read_text().strip()
    if not (d / "state.json").is_file():
        raise FileNotFoundError(f"{p} points to {d}, which holds no state.json")
    return d


def fit(cfg, rollout_fn: Callable, out_dir, *, num_tasks: int, init_router: Optional[str] = None,
        resume: bool = False, log_dir: Optional[str] = None, learner_group=None,
        progress: bool = True, torch_threads: Optional[int] = 1, minibatch_size: Optional[int] = None,
        use_score: Optional[bool] = None, iterations: Optional[int] = None) -> dict:
    """Run GRPO. cfg: ``DMRConfig`` (uses cfg.router, cfg.grpo, cfg.seed, cfg.env.name).

    num_tasks: size of the task pool rollout_fn indexes. init_router: stage-1 router dir (the
    starting point AND the KL reference); None: a fresh router from cfg.seed is both.
    learner_group: reuse one built with ``build_learner_group(..., "grpo", ...)``.
    minibatch_size: None = the whole iteration's steps per gradient step. use_score: reward from
    ``score`` instead of ``won`` (default: True for webshop). iterations: override
    ``grpo.iterations`` (total, counting resumed ones). Returns {"history": [...per iteration],
    "iteration": last, "router_dir", "time"}.
    """
    import torch
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    from dmr_rl.learners.router_learners import (build_learner_group, check_learner_group, make_batch,
                                                  reset_learner_group, router_weights, update_metrics)
    from dmr_rl.pipeline.timing import Timers
    from dmr_rl.router.transformer import TransformerRouter

    g = cfg.grpo
    total = g.iterations if iterations is None else iterations
    if num_tasks <= 0:
        raise ValueError(f"num_tasks must be positive, got {num_tasks}")
    use_score = (cfg.env.name == "webshop") if use_score is None else use_score
    out = Path(out_dir)
    timers = Timers()
    prev_threads = torch.get_num_threads()
    if torch_threads:
        torch.set_num_threads(torch_threads)
    try:
        if init_router:
            ref = TransformerRouter.load(init_router)
        else:
            if cfg.router.features == "lp_hidden":
                from dmr_rl.config import ConfigError

                raise ConfigError("router.features=lp_hidden: GRPO needs the stage-1 router (it fixes the LP "
                                  "hidden size); run `dmr train sft` first or pass its directory as init")
            ref = TransformerRouter(cfg.router, seed=cfg.seed)
        policy = TransformerRouter(ref.config, threshold=ref.threshold, weights=ref.get_weights())
        with timers("build_learners"):
            # (a LearnerGroup's truth value is its remote-learner count: test against None)
            loss = {"clip_eps": g.clip_eps, "kl_coef": g.kl_coef}
            if learner_group is not None:
                check_learner_group(learner_group, "grpo", g.lr, **loss)
                lg = learner_group
            else:
                lg = build_learner_group(ref.config, "grpo", num_learners=g.num_learners, lr=g.lr,
                                         seed=cfg.seed, **loss)
        rng = np.random.default_rng(cfg.seed)
        history: list = []
        start = 1
        ckpt = latest_checkpoint(out) if resume else None
        if ckpt is not None:
            state = json.loads((ckpt / "state.json").read_text())
            lg.restore_from_path(str((ckpt / "learner").resolve()))
            rng.bit_generator.state = state["rng"]
            history = state["history"]
            start = int(state["iteration"]) + 1
        else:
            reset_learner_group(lg, ref.get_weights())
            stale = _ckpt_root(out) / "LATEST"
            if stale.is_file():  # a fresh run in a used dir: never resume into the old run
                stale.unlink()
        policy.set_weights(router_weights(lg))

        writer = SummaryWriter(log_dir) if log_dir else None
        n_tasks = min(g.tasks_per_iter, num_tasks)
        bar = tqdm(range(start, total + 1), desc="train grpo", disable=not progress, leave=False)
        for it in bar:
            tasks = rng.choice(num_tasks, size=n_tasks, replace=False).tolist()
            seed = int(rng.integers(0, 2**31 - 1))
            with timers("rollout"):
                episodes = rollout_fn(policy.get_weights(), tasks, g.group_size, seed)
            with timers("batch"):
                columns, info = build_grpo_batch(episodes, ref, policy.features, g.hp_cost,
                                                 g.hp_budget, use_score=use_score, adv_norm=g.adv_norm)
            with timers("update"):
                m = update_metrics(lg.update(batch=make_batch(columns), num_epochs=g.epochs_per_iter,
                                             minibatch_size=minibatch_size or info["steps"],
                                             shuffle_batch_per_epoch=minibatch_size is not None))
                policy.set_weights(router_weights(lg))
            row = {"iteration": it, **info, **{k: m.get(k, float("nan")) for k in GRPO_SCALARS},
                   "time_rollout": timers.last("rollout"), "time_update": timers.last("update")}
            history.append(row)
            if writer:
                for k in ("success", "hp_ratio", "reward"):
                    writer.add_scalar(f"train/{k}", row[k], it)
                for k in GRPO_SCALARS:
                    writer.add_scalar(f"grpo/{k}", row[k], it)
                writer.add_scalar("time/rollout", row["time_rollout"], it)
                writer.add_scalar("time/update", row["time_update"], it)
            bar.set_postfix(success=f"{info['success']:.2f}", hp=f"{info['hp_ratio']:.2f}",
                            reward=f"{info['reward']:.2f}")
            if it % max(1, g.checkpoint_every) == 0 or it == total:
                with timers("checkpoint"):
                    save_checkpoint(out, it, lg, policy, rng, history)
        policy.save(out / "router")
        from dmr_rl.pipeline.train_sft import annotate_router

        annotate_router(out / "router", stage="grpo", hp_cost=g.hp_cost, hp_budget=g.hp_budget,
                        adv_norm=g.adv_norm, iteration=history[-1]["iteration"] if history else start - 1)
        if writer:
            writer.close()
        return {"history": history, "iteration": history[-1]["iteration"] if history else start - 1,
                "router_dir": str(out / "router"), "time": timers.as_dict()}
    finally:
        if torch_threads:
            torch.set_num_threads(prev_threads)


def run(cfg, *, init: Optional[str] = None, out_dir=None, resume: bool = False, local: bool = False,
        progress: bool = True) -> dict:
    """Stage 2 end to end: start the tiers and rollout workers (``dmr_rl.serving.launcher``), run
    :func:`fit` with their ``rollout_fn``, shut them down. ``init``: stage-1 router dir (default
    ``<run_dir>/router_sft`` when it holds a router). Writes ``grpo.json`` and ``config.yaml`` into
    ``out_dir`` (default ``<run_dir>/router_grpo``) so evaluation can read lambda back."""
    from dmr_rl.config import save_config
    from dmr_rl.serving import launcher

    run_dir = Path(cfg.run_dir)
    out = Path(out_dir or run_dir / "router_grpo")
    if init is None and (run_dir / "router_sft" / "router.json").is_file():
        init = str(run_dir / "router_sft")
    if init and not (Path(init) / "router.json").is_file():
        raise FileNotFoundError(f"stage-1 router {init}: no router checkpoint (router.json) there")
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    (out / "grpo.json").write_text(json.dumps({"stage": "grpo", "hp_cost": cfg.grpo.hp_cost,
                                               "hp_budget": cfg.grpo.hp_budget, "adv_norm": cfg.grpo.adv_norm,
                                               "init": init}))
    router = ({"name": "transformer", "kwargs": {"path": init, "num_threads": 1}} if init else
              {"name": "transformer", "kwargs": {"config": cfg.router, "seed": cfg.seed, "num_threads": 1}})
    group = clients = None
    try:
        if not local:
            launcher.ray_init(cfg.ray, run_dir)
        clients = launcher.create_tier_clients(cfg, ("hp", "lp"), local=local)
        name = out.name.replace("router_", "")  # router_grpo -> grpo: its rollouts and TensorBoard scalars
        group = launcher.create_rollout_group(cfg, clients, run_dir / "trajectories" / name, local=local, router=router)
        return fit(cfg, group.rollout_fn, out, num_tasks=group.num_tasks(), init_router=init,
                   resume=resume, log_dir=str(run_dir / "tb" / name), progress=progress)
    finally:
        launcher.shutdown_all(group, clients)
