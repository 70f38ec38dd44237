"""The causal check: does forcing LP on the steps the router flags hurt more than on others?

Per-step KL is a proxy; what matters is downstream success. For each evaluation task and seed:

1. **Reference.** Play the episode with HP at every step while the learned router scores each
   step (:class:`ShadowRouter`: it records P(HP) but always answers HP). Flagged steps are those
   with P(HP) >= the router's threshold or, with ``flag_share``, the top share of each episode's
   own steps by P(HP) (at least one): every task then takes part, where a threshold flags mostly
   the long, looping episodes that HP loses anyway.
2. **Arms.** Replay the task with HP everywhere except a forced set of step indices, run on LP
   (:class:`ForcedLPRouter`):
   * ``flagged``: the flagged steps (at most ``max_forced`` of them, highest P(HP) first);
   * ``unflagged``: the same number of steps drawn at random (seeded) from the unflagged ones.
   Tasks with no flagged step, or fewer unflagged steps than flagged ones, are left out of both
   arms (counted in ``causal.json``).
3. Report success of each arm with 95% bootstrap CIs, and the CI of the difference
   (``dmr report``). If KL-trained routing finds the steps that matter, success(unflagged) -
   success(flagged) is positive with a CI above 0.

Forced step indices refer to the reference trajectory; HP decoding is greedy, so a replay follows
the reference exactly up to its first forced step and may diverge after it.

Episodes go to ``<run_dir>/causal/{reference,flagged,unflagged}/seed_<s>/``, each with
``extra["forced_lp_steps"]``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np

from dmr_rl.report import layout
from dmr_rl.router.base import RouteDecision, Router

HP, LP = 1, 0


class ShadowRouter(Router):
    """Always HP; ``p_hp`` is what ``inner`` (a learned router) would give, so the episode
    records the router's score at every step of an HP trajectory."""

    name = "shadow"

    def __init__(self, inner: Router):
        self.inner = inner

    @property
    def needs_lp_hidden(self) -> bool:
        return bool(getattr(self.inner, "needs_lp_hidden", False))

    def route(self, contexts, rng, sample=False, lp_action_probs=None, hp_action_probs=None, **kw):
        d = self.inner.route(contexts, rng, sample=False, **kw)
        n = len(contexts)
        return RouteDecision(tiers=np.ones(n, dtype=np.int64), p_hp=np.asarray(d.p_hp, dtype=float),
                             logprobs=np.zeros(n))


class ForcedLPRouter(Router):
    """HP at every step except the step indices listed for the context's task, which go to LP.

    ``forced``: {task text: [step indices]}. Contexts are matched by ``StepContext.task``, so the
    tasks of one run must have distinct texts (:func:`plan_forced` ensures it).
    """

    name = "forced_lp"

    def __init__(self, forced: Optional[dict] = None, **_):
        self.forced = {str(k): {int(s) for s in v} for k, v in (forced or {}).items()}

    def route(self, contexts, rng, sample=False, lp_action_probs=None, hp_action_probs=None, **_):
        tiers = np.array([LP if c.step in self.forced.get(c.task, ()) else HP for c in contexts], dtype=np.int64)
        return RouteDecision(tiers=tiers, p_hp=tiers.astype(float), logprobs=np.zeros(len(contexts)))


def plan_forced(reference: list, threshold: float, seed: int, max_forced: int = 3,
                flag_share: Optional[float] = None) -> tuple[dict, dict, dict]:
    """From reference episodes (HP trajectories with router scores), the two arms' forced sets.

    Flagged: the steps with P(HP) >= ``threshold``, or with ``flag_share`` the top
    ``max(1, round(flag_share * steps))`` of the episode's steps; highest P(HP) first, at most
    ``max_forced``. Returns (flagged {task: steps}, unflagged {task: steps}, counts). Pure: no
    Ray, no models.
    """
    flagged, unflagged = {}, {}
    counts = {"reference": len(reference), "no_flagged_step": 0, "too_few_unflagged": 0, "duplicate_task": 0}
    seen = set()
    for ep in reference:
        if ep.task in seen:
            counts["duplicate_task"] += 1
            continue
        seen.add(ep.task)
        p = np.array([s.router_prob for s in ep.steps], dtype=float)
        steps = np.array([s.step for s in ep.steps])
        order = np.argsort(-p, kind="stable")
        if flag_share is None:
            order = order[p[order] >= threshold]
        else:
            order = order[: max(1, int(round(flag_share * len(p))))]
        flag_idx = steps[order][:max_forced]
        if flag_idx.size == 0:
            counts["no_flagged_step"] += 1
            continue
        pool = np.setdiff1d(steps, flag_idx) if flag_share is not None else steps[p < threshold]
        if pool.size < flag_idx.size:
            counts["too_few_unflagged"] += 1
            continue
        rng = np.random.default_rng([int(seed), int(ep.task_index)])
        flagged[ep.task] = sorted(int(s) for s in flag_idx)
        unflagged[ep.task] = sorted(int(s) for s in rng.choice(pool, size=flag_idx.size, replace=False))
    counts["kept"] = len(flagged)
    return flagged, unflagged, counts


def _first_index_per_task(reference: list, flagged: dict) -> list:
    """Task indices to replay: per flagged task text, the first reference episode with it (the one
    :func:`plan_forced` planned from; a later task index with the same text would be forced on
    steps planned for another game)."""
    out, seen = [], set()
    for ep in reference:
        if ep.task in flagged and ep.task not in seen:
            seen.add(ep.task)
            out.append(ep.task_index)
    return out


def _distinct_tasks(episodes_tasks: list) -> list:
    return list(dict.fromkeys(episodes_tasks))


def run(cfg, router_ckpt, group=None, episodes: Optional[int] = None, max_forced: int = 3,
        threshold: Optional[float] = None, flag_share: Optional[float] = None, progress: bool = True) -> Path:
    """Run the causal check; return ``<run_dir>/causal/causal.json``.

    ``episodes``: tasks per seed (default ``eval.causal_episodes``, else ``eval.episodes``).
    Flagged = P(HP) >= ``threshold`` (default: the checkpoint's own threshold); with
    ``flag_share`` (default ``eval.causal_flag_share``; 0 means none) instead, the top share of
    each reference episode's steps by P(HP) (see :func:`plan_forced`).
    ``group``: an existing RolloutGroup; otherwise one is started (and stopped) here.
    """
    from tqdm import tqdm

    from dmr_rl.pipeline.evaluate import num_tasks_of, task_sample
    from dmr_rl.router import make_router

    router = make_router("transformer", path=str(router_ckpt), num_threads=1)
    thr = float(router.threshold if threshold is None else threshold)
    n_eps = int(episodes or cfg.eval.causal_episodes or cfg.eval.episodes)
    if flag_share is None:
        flag_share = float(cfg.eval.causal_flag_share) or None
    run_dir = Path(cfg.run_dir)
    root = layout.causal_dir(run_dir)
    own, clients = group is None, None
    if own:
        from dmr_rl.pipeline.evaluate import start_group

        group, clients = start_group(cfg, root / "_worker_shards")
    counts_by_seed = {}
    try:
        n_tasks = num_tasks_of(group)
        seeds = [int(s) for s in cfg.eval.seeds]
        bar = tqdm(total=3 * len(seeds), desc="causal", unit="run", disable=not progress, dynamic_ncols=True)
        for s in seeds:
            tasks = _distinct_tasks(task_sample(n_tasks, min(n_eps, n_tasks), s))
            group.set_router(ShadowRouter(router))
            ref = group.run_episodes(tasks, "router", seed=s, return_episodes=True)["episode_records"]
            _write(root / "reference", s, ref, "reference", {})
            bar.update(1)
            flagged, unflagged, counts = plan_forced(ref, thr, s, max_forced, flag_share)
            counts["threshold"] = None if flag_share is not None else thr
            counts_by_seed[str(s)] = counts
            keep = _first_index_per_task(ref, flagged)
            for arm, forced in (("flagged", flagged), ("unflagged", unflagged)):
                if keep:
                    group.set_router(ForcedLPRouter(forced))
                    eps = group.run_episodes(keep, "router", seed=s, return_episodes=True)["episode_records"]
                    _write(root / arm, s, eps, arm, forced)
                bar.update(1)
        bar.close()
    finally:
        if own:
            from dmr_rl.pipeline.evaluate import stop_group

            stop_group(group, clients)
    meta = {"router_ckpt": str(router_ckpt), "threshold": thr, "flag_share": flag_share, "max_forced": max_forced,
            "episodes_per_seed": n_eps, "seeds": [int(s) for s in cfg.eval.seeds], "counts": counts_by_seed}
    path = root / "causal.json"
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(meta, indent=1))
    return path


def _write(arm_dir: Path, seed: int, episodes: list, arm: str, forced: dict) -> None:
    import shutil

    from dmr_rl.rollout.records import TrajectoryStore

    d = layout.seed_dir(arm_dir, seed)
    if d.exists():
        shutil.rmtree(d)
    for ep in episodes:
        ep.method = f"causal_{arm}"
        ep.extra["forced_lp_steps"] = list(forced.get(ep.task, []))
    TrajectoryStore(d, "driver").append(episodes)
