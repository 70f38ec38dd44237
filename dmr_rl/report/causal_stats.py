"""The causal check's numbers: per row (``kl``, ``router``) and arm (``flagged``, ``unflagged``).

Per arm: tasks, success, forced LP steps actually played, how many of them changed the action (the
tiers' greedy actions differed there), episodes with at least one change and their success. The
comparison is paired by task: mean of (unflagged - flagged) success with a percentile bootstrap CI
over tasks (one replay per task and arm). If the flagged steps are the ones that matter, forcing
LP there hurts more: the difference is positive.
"""
from __future__ import annotations

import numpy as np

ARMS = ("flagged", "unflagged")


def forced_changes(ep) -> tuple[int, int]:
    """(forced steps the episode reached, of them those where LP's action differed from HP's)."""
    forced = set(int(s) for s in ep.extra.get("forced_lp_steps", []))
    played = [st for st in ep.steps if st.step in forced]
    return len(played), sum(1 for st in played if st.extra.get("tiers_agree") is False)


def arm_summary(episodes: list) -> dict:
    forced = [forced_changes(ep) for ep in episodes]
    changed_eps = [ep for ep, (_, c) in zip(episodes, forced) if c > 0]
    return {"tasks": len(episodes), "success": float(np.mean([ep.won for ep in episodes])) if episodes else None,
            "forced_steps": int(sum(f for f, _ in forced)), "changed_steps": int(sum(c for _, c in forced)),
            "episodes_changed": len(changed_eps),
            "success_when_changed": float(np.mean([ep.won for ep in changed_eps])) if changed_eps else None}


def paired_task_diff(a: dict, b: dict, n_boot: int = 2000, seed: int = 0) -> dict:
    """Mean of a[t] - b[t] over the tasks both have, and the 95% bootstrap CI of that same mean
    (tasks resampled). a, b: {task: value}."""
    from dmr_rl.report.metrics import mean_with_ci

    tasks = sorted(set(a) & set(b))
    if not tasks:
        return {"n_tasks": 0, "diff_mean": None, "diff_ci": None}
    est, ci = mean_with_ci([float(a[t]) - float(b[t]) for t in tasks], n_boot, seed)
    return {"n_tasks": len(tasks), "diff_mean": est, "diff_ci": ci}


def flip_detection(reference: list) -> dict:
    """How well the router's P(HP) and the per-step KL find the steps where the tiers' greedy
    actions differ (*flips*), on the reference replays (HP acting, both tiers scored every step).

    reference: EpisodeRecords; steps without ``tiers_agree`` are skipped. Returns steps, flips,
    flip_rate and router_auroc / kl_auroc (rank AUROC over all steps; 0.5 = chance; nan when a class
    is absent), and router_auroc_within: the median over episodes holding both flips and agreements
    of the router's AUROC inside the episode (``within_episodes`` of them). On few tasks the pooled
    number can be one long episode's: a failed one that loops flips on most steps.
    """
    from dmr_rl.algos.router_losses import auroc

    rows = [(i, st) for i, ep in enumerate(reference) for st in ep.steps if "tiers_agree" in st.extra]
    steps = [st for _, st in rows]
    episode = np.array([i for i, _ in rows], dtype=np.int64)
    flips = np.array([not st.extra["tiers_agree"] for st in steps], dtype=bool)
    router = np.array([st.router_prob for st in steps], dtype=float)
    kl = np.array([np.nan if st.kl is None else float(st.kl) for st in steps], dtype=float)
    has_kl = np.isfinite(kl)  # auroc is nan when a class is absent (no steps included)
    inside = [episode == i for i in np.unique(episode)]
    within = [auroc(router[m], flips[m]) for m in inside if 0 < flips[m].sum() < m.sum()]
    return {"steps": len(steps), "flips": int(flips.sum()), "flip_rate": float(flips.mean()) if steps else float("nan"),
            "router_auroc": auroc(router, flips), "kl_auroc": auroc(kl[has_kl], flips[has_kl]),
            "router_auroc_within": float(np.median(within)) if within else float("nan"),
            "within_episodes": len(within)}


def causal_summary(causal: dict, n_boot: int = 2000, seed: int = 0) -> dict:
    """From :func:`dmr_rl.report.layout.load_causal`'s dict: {"params", "reference", "rows": {row: {...}}}."""
    arms = {name: [ep for eps in by_seed.values() for ep in eps] for name, by_seed in causal["arms"].items()}
    reference = {ep.task_index: float(ep.won) for ep in arms.get("reference", [])}
    rows = {}
    for row in sorted({name.split("_", 1)[0] for name in arms if "_" in name}):
        per_arm = {arm: arms.get(f"{row}_{arm}", []) for arm in ARMS}
        won = {arm: {ep.task_index: float(ep.won) for ep in eps} for arm, eps in per_arm.items()}
        tasks = set(won["flagged"])
        rows[row] = {
            **{arm: arm_summary(eps) for arm, eps in per_arm.items()},
            "reference_same_tasks": (float(np.mean([reference[t] for t in tasks if t in reference]))
                                     if tasks & set(reference) else None),
            "unflagged_minus_flagged": paired_task_diff(won["unflagged"], won["flagged"], n_boot, seed),
        }
    return {"params": causal.get("params", {}), "reference_tasks": len(reference), "rows": rows,
            "flips": flip_detection(arms.get("reference", []))}


def causal_lines(summary: dict) -> list[str]:
    """Markdown lines for the report."""
    out = ["| flags from | arm | tasks | success | forced LP steps | changed the action | success when changed |",
           "|---|---|---|---|---|---|---|"]
    for row, r in summary.get("rows", {}).items():
        for arm in ARMS:
            a = r[arm]
            when = "-" if a["success_when_changed"] is None else f"{a['success_when_changed']:.2f} ({a['episodes_changed']})"
            succ = "-" if a["success"] is None else f"{a['success']:.2f}"
            out.append(f"| {row} | {arm} | {a['tasks']} | {succ} | {a['forced_steps']} | {a['changed_steps']} | {when} |")
    for row, r in summary.get("rows", {}).items():
        d = r["unflagged_minus_flagged"]
        if d["diff_mean"] is None:
            out.append(f"- {row} flags: no task could be replayed in both arms.")
            continue
        lo, hi = d["diff_ci"]
        verdict = ("forcing LP on flagged steps hurts more" if lo > 0 else
                   "forcing LP on flagged steps hurts less" if hi < 0 else "no difference detected")
        out.append(f"- {row} flags: unflagged - flagged success {d['diff_mean']:+.3f} [{lo:+.3f}, {hi:+.3f}] "
                   f"over {d['n_tasks']} tasks: {verdict}.")
    f = summary.get("flips")
    if f and f["steps"]:
        out.append(f"- On the reference replays (HP acting, both tiers scored) the tiers' greedy actions differ on "
                   f"{f['flips']} of {f['steps']} steps ({100 * f['flip_rate']:.1f}%); the router's P(HP) ranks "
                   f"those steps with AUROC {f['router_auroc']:.3f}, the per-step KL with AUROC {f['kl_auroc']:.3f} "
                   f"(0.5 = chance)" + (f"; inside an episode, the router's median AUROC over the "
                                        f"{f['within_episodes']} episodes with both flips and agreements is "
                                        f"{f['router_auroc_within']:.3f}." if f.get("within_episodes") else "."))
    return out
