"""The causal check: does forcing LP on precision-sensitive steps hurt more than on matched others?

Per-step KL is a proxy; what matters is downstream success. On the evaluation tasks (deterministic
environment, greedy agent):

1. **Reference.** Play every task with HP at every step while both tiers score each step (so the
   step records KL(HP || LP) and whether the tiers' greedy actions agree) and the learned router
   scores it (:class:`ShadowRouter`: records P(HP), always answers HP).
2. **Flags**, two rows:
   * ``kl``: the steps the stage-1 labels would call precision-sensitive: KL >= the labels'
     threshold (budget mode: the (1 - rho) quantile of the labelled steps' KL; threshold mode:
     ``label.kl_threshold``; greedy_flip mode: the tiers' greedy actions differ);
   * ``router``: the top ``eval.causal_flag_share`` of each episode's steps by router P(HP).
   At most ``max_forced`` per episode, highest score first.
3. **Matched controls.** For each flagged step, an unflagged step from the same step-index bucket
   (``bucket`` steps wide), drawn (seeded by task) only from steps below the flag threshold; a task
   whose flagged steps cannot all be matched is left out of that row (counted in ``causal.json``).
4. **Arms.** Replay each task with HP everywhere except the forced step indices, run on LP
   (:class:`ForcedLPRouter`; both tiers run on the forced steps, so each records whether LP's
   action differed from HP's there; the other steps call HP alone). The report gives per arm:
   success, forced steps, how many changed the action, success among episodes where at least one
   did, and the paired (task) difference unflagged - flagged with a task-clustered CI
   (:mod:`dmr_rl.report.causal_stats`).

Episodes go to ``<run_dir>/causal/{reference,kl_flagged,kl_unflagged,router_flagged,router_unflagged}/seed_<s>/``.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Optional

import numpy as np

from dmr_rl.report import layout
from dmr_rl.router.base import RouteDecision, Router

HP, LP = 1, 0
ROWS = ("kl", "router")


class ShadowRouter(Router):
    """Always HP; ``p_hp`` is what ``inner`` (a learned router) would give. Both tiers run at every
    step (``needs_both``) so the reference records KL and tier agreement."""

    name = "shadow"
    needs_both = True

    def __init__(self, inner: Router):
        self.inner = inner

    @property
    def needs_lp_hidden(self) -> bool:
        return bool(getattr(self.inner, "needs_lp_hidden", False))

    @property
    def hidden_layer(self) -> int:  # the state the inner router was trained on, not the last layer's
        return int(getattr(self.inner, "hidden_layer", 0))

    def route(self, contexts, rng, sample=False, lp_action_probs=None, hp_action_probs=None, **kw):
        d = self.inner.route(contexts, rng, sample=False, **kw)
        n = len(contexts)
        return RouteDecision(tiers=np.ones(n, dtype=np.int64), p_hp=np.asarray(d.p_hp, dtype=float),
                             logprobs=np.zeros(n))


class ForcedLPRouter(Router):
    """HP at every step except the step indices listed for the context's task, which go to LP.
    Both tiers run on the forced steps only (:meth:`both_tiers_at`), so a forced step records whether
    LP changed the action; every other step pays HP alone.

    ``forced``: {task text: [step indices]}; the tasks of one run have distinct texts (:func:`plan_row`).
    """

    name = "forced_lp"

    def __init__(self, forced: Optional[dict] = None, **_):
        self.forced = {str(k): {int(s) for s in v} for k, v in (forced or {}).items()}

    def both_tiers_at(self, context) -> bool:
        return context.step in self.forced.get(context.task, ())

    def route(self, contexts, rng, sample=False, lp_action_probs=None, hp_action_probs=None, **_):
        tiers = np.array([LP if self.both_tiers_at(c) else HP for c in contexts], dtype=np.int64)
        return RouteDecision(tiers=tiers, p_hp=tiers.astype(float), logprobs=np.zeros(len(contexts)))


def plan_row(reference: list, scores: list, threshold, seed: int, max_forced: int = 3,
             bucket: int = 5) -> tuple[dict, dict, dict]:
    """Forced step sets of one row from reference episodes and a per-step score.

    reference: EpisodeRecords; scores: per episode, an array of shape (steps,) (higher = more
    sensitive); threshold: a float (flag score >= threshold) or, per episode, a float. Flagged: the
    steps at or above the threshold, highest first, at most ``max_forced``. Each flagged step gets a
    control drawn from the unflagged steps below the threshold in its step-index bucket
    (``step // bucket``), without replacement. Returns (flagged {task: steps}, unflagged {task:
    steps}, counts). Pure: no Ray, no models.
    """
    flagged, unflagged = {}, {}
    counts = {"reference": len(reference), "no_flagged_step": 0, "unmatched": 0, "duplicate_task": 0}
    seen = set()
    for e, (ep, score) in enumerate(zip(reference, scores)):
        if ep.task in seen:
            counts["duplicate_task"] += 1
            continue
        seen.add(ep.task)
        score = np.asarray(score, dtype=float)
        thr = float(threshold[e] if isinstance(threshold, (list, tuple, np.ndarray)) else threshold)
        steps = np.array([s.step for s in ep.steps])
        order = np.argsort(-score, kind="stable")
        flag = steps[order[score[order] >= thr]][:max_forced]
        if flag.size == 0:
            counts["no_flagged_step"] += 1
            continue
        rng = np.random.default_rng([int(seed), int(ep.task_index)])
        pool = set(int(s) for s in steps[score < thr])
        controls = []
        for s in sorted(int(x) for x in flag):
            same = sorted(p for p in pool if p // bucket == s // bucket)
            if not same:
                break
            pick = int(rng.choice(same))
            controls.append(pick)
            pool.discard(pick)
        if len(controls) < flag.size:
            counts["unmatched"] += 1
            continue
        flagged[ep.task] = sorted(int(s) for s in flag)
        unflagged[ep.task] = sorted(controls)
    counts["kept"] = len(flagged)
    return flagged, unflagged, counts


def kl_flag_rule(cfg, reference: list) -> tuple[list, object]:
    """Per-episode scores and the threshold of the ``kl`` row, following ``cfg.label``."""
    space = cfg.label.kl_space
    if space == "greedy_flip":
        scores = [np.array([0.0 if s.extra.get("tiers_agree", True) else 1.0 for s in ep.steps]) for ep in reference]
        return scores, 0.5
    scores = [np.array([np.nan if s.kl is None else float(s.kl) for s in ep.steps]) for ep in reference]
    if cfg.label.mode == "threshold":
        return scores, float(cfg.label.kl_threshold)
    labelled = layout.load_kl_values(cfg.run_dir)
    pool = labelled if labelled else [v for sc in scores for v in sc if np.isfinite(v)]
    if not pool:
        raise ValueError("causal check: no per-step KL on the reference episodes nor in the run's labels")
    return scores, float(np.quantile(pool, 1.0 - float(cfg.label.rho)))


def router_flag_rule(reference: list, flag_share: float) -> tuple[list, list]:
    """Per-episode router scores and per-episode thresholds: the top ``flag_share`` of its steps (>= 1)."""
    scores, thresholds = [], []
    for ep in reference:
        p = np.array([s.router_prob for s in ep.steps], dtype=float)
        k = max(1, int(round(flag_share * len(p))))
        scores.append(p)
        thresholds.append(float(np.sort(p)[::-1][k - 1]) if len(p) else np.inf)
    return scores, thresholds


def run(cfg, router_ckpt, group=None, episodes: Optional[int] = None, max_forced: int = 3,
        flag_share: Optional[float] = None, bucket: int = 5, progress: bool = True) -> Path:
    """Run the causal check; return ``<run_dir>/causal/causal.json``.

    ``episodes``: tasks replayed (default ``eval.causal_episodes``; an evenly spread subset of the
    evaluation split). ``flag_share``: the router row's share (default ``eval.causal_flag_share``).
    ``group``: an existing RolloutGroup on the evaluation split; otherwise one is started here.
    """
    from dmr_rl.config import ConfigError
    from dmr_rl.pipeline.eval_points import env_is_deterministic
    from dmr_rl.pipeline.evaluate import eval_tasks, num_tasks_of
    from dmr_rl.router import make_router

    if not env_is_deterministic(cfg):
        raise ConfigError("the causal check replays forced step indices of a reference episode: it needs a "
                          "deterministic environment and a greedy agent (agent.temperature=0)")
    router = make_router("transformer", path=str(router_ckpt), num_threads=1)
    share = float(cfg.eval.causal_flag_share if flag_share is None else flag_share)
    n_eps = int(episodes or cfg.eval.causal_episodes or cfg.eval.episodes)
    seed = int(cfg.eval.seeds[0])
    root = layout.causal_dir(cfg.run_dir)
    own, clients = group is None, None
    if own:
        from dmr_rl.pipeline.evaluate import start_group

        group, clients = start_group(cfg, root / "_worker_shards")
    counts = {}
    try:
        tasks = eval_tasks(num_tasks_of(group), n_eps)
        group.set_router(ShadowRouter(router))
        ref = group.run_episodes(tasks, "router", seed=seed, return_episodes=True,
                                 rng_key=(int(cfg.seed), "causal", "reference"))["episode_records"]
        ref.sort(key=lambda ep: ep.task_index)
        _write(root / "reference", seed, ref, "reference", {})
        rules = {"kl": kl_flag_rule(cfg, ref), "router": router_flag_rule(ref, share)}
        for row in ROWS:
            scores, thr = rules[row]
            flagged, unflagged, counts[row] = plan_row(ref, scores, thr, seed, max_forced, bucket)
            keep = [ep.task_index for ep in ref if ep.task in flagged]
            for arm, forced in (("flagged", flagged), ("unflagged", unflagged)):
                if keep:
                    group.set_router(ForcedLPRouter(forced))
                    eps = group.run_episodes(keep, "router", seed=seed, return_episodes=True,
                                             rng_key=(int(cfg.seed), "causal", f"{row}_{arm}"))["episode_records"]
                    _write(root / f"{row}_{arm}", seed, eps, f"{row}_{arm}", forced)
            if progress:
                print(f"causal check, {row} row: {counts[row]['kept']} of {len(ref)} tasks replayed", flush=True)
    finally:
        if own:
            from dmr_rl.pipeline.evaluate import stop_group

            stop_group(group, clients)
    meta = {"router_ckpt": str(router_ckpt), "flag_share": share, "max_forced": max_forced, "bucket": bucket,
            "label_rule": {"mode": cfg.label.mode, "kl_space": cfg.label.kl_space, "rho": cfg.label.rho},
            "kl_threshold": None if cfg.label.kl_space == "greedy_flip" else rules["kl"][1],
            "tasks": len(tasks), "seed": seed, "counts": counts}
    path = root / "causal.json"
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(meta, indent=1))
    return path


def _write(arm_dir: Path, seed: int, episodes: list, arm: str, forced: dict) -> None:
    from dmr_rl.rollout.records import TrajectoryStore

    d = layout.seed_dir(arm_dir, seed)
    if d.exists():
        shutil.rmtree(d)
    for ep in episodes:
        ep.method = f"causal_{arm}"
        ep.extra["forced_lp_steps"] = list(forced.get(ep.task, []))
    TrajectoryStore(d, "driver").append(episodes)
