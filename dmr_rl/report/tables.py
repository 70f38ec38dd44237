"""The numbers of a run (``results.json``) and their Markdown tables (``report.md``).

:func:`summarise` computes everything from the episode shards of one run directory; nothing
comes from elsewhere. :func:`markdown` renders that dict.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from dmr_rl.report import layout
from dmr_rl.report import metrics as M

WEAK, STRONG, RANDOM = "lp_only", "hp_only", "random"
CPT_LEVELS = (50, 80)
HP_BUDGET = 0.40  # the issue's bar: >= 95% of HP-only success at an HP ratio of at most 40%


def _point_summary(entry: dict, n_boot: int, boot_seed: int) -> dict:
    agg = M.aggregate_seeds(entry["by_seed"], n_boot=n_boot, boot_seed=boot_seed)
    return {
        "params": entry["params"], "default": entry["default"], "seeds": agg["seeds"],
        "episodes": agg["episodes"], "tasks": agg["tasks"],
        "success_mean": agg["success_rate_mean"], "success_std": agg["success_rate_std"],
        "success_ci": agg["success_ci"],
        "score_mean": agg["mean_score_mean"], "score_std": agg["mean_score_std"], "score_ci": agg["score_ci"],
        "hp_ratio": agg["hp_ratio_mean"], "hp_ratio_std": agg["hp_ratio_std"], "hp_ratio_ci": agg["hp_ratio_ci"],
        "cost": agg["cost_per_episode_mean"], "cost_std": agg["cost_per_episode_std"],
        "mean_length": agg["mean_length_mean"], "tokens_per_episode": agg["tokens_per_episode_mean"],
        "latency_hp_s": agg["latency_hp_s_mean"], "latency_lp_s": agg["latency_lp_s_mean"],
        "per_seed": agg["per_seed"],
    }


def _reference(methods: dict, name: str) -> Optional[dict]:
    points = methods.get(name)
    if not points:
        return None
    p = next(iter(points.values()))  # baselines without a knob have one point
    return {"method": name, "success": p["success_mean"], "score": p["score_mean"], "cost": p["cost"],
            "hp_ratio": p["hp_ratio"]}


def _tradeoff(points: dict, weak: dict, strong: dict) -> dict:
    """APGR and CPT of one method's operating points, on the HP-ratio axis and the cost axis."""
    names = list(points)
    hp = [points[n]["hp_ratio"] for n in names]
    cost = [M.normalised_cost(points[n]["cost"], weak["cost"], strong["cost"]) for n in names]
    out: dict = {"points": names}
    for quality in ("success", "score"):
        q = [points[n][f"{quality}_mean"] for n in names]
        suffix = "" if quality == "success" else "_score"
        for axis, xs in (("hp", hp), ("cost", cost)):
            tag = suffix + ("" if axis == "hp" else "_cost")
            ok = [i for i, x in enumerate(xs) if not math.isnan(x)]
            xs_ok, q_ok = [xs[i] for i in ok], [q[i] for i in ok]
            out[f"apgr{tag}"] = M.apgr(xs_ok, q_ok, weak[quality], strong[quality])
            for level in CPT_LEVELS:
                out[f"cpt{level}{tag}"] = M.cpt(xs_ok, q_ok, weak[quality], strong[quality], level)
        out["front" + suffix] = [names[i] for i in M.pareto_front(hp, q)]
    return out


def _at_budget(points: dict, strong: dict, budget: float) -> Optional[dict]:
    """The most successful operating point whose HP ratio is at most ``budget``."""
    ok = [(n, p) for n, p in points.items() if p["hp_ratio"] <= budget + 1e-12]
    if not ok:
        return None
    name, p = max(ok, key=lambda kv: (kv[1]["success_mean"], -kv[1]["hp_ratio"]))
    share = p["success_mean"] / strong["success"] if strong["success"] > 0 else float("nan")
    return {"budget": budget, "point": name, "hp_ratio": p["hp_ratio"], "success": p["success_mean"],
            "success_ci": p["success_ci"], "share_of_hp_only": share}


def _vs_random(points: dict, methods: dict, weak: dict, strong: dict) -> dict:
    """Per operating point: random routing's success at the same HP ratio (linear interpolation
    between random's points, closed by LP-only at 0 and HP-only at 1, for the mean and for each
    CI bound) and whether the two 95% CIs are disjoint with this method above."""
    lp, hp = methods[WEAK], methods[STRONG]
    anchors = [next(iter(lp.values())), *methods[RANDOM].values(), next(iter(hp.values()))]
    anchors.sort(key=lambda p: p["hp_ratio"])
    x = [p["hp_ratio"] for p in anchors]
    out = {}
    for name, p in points.items():
        at = lambda v: float(np.interp(p["hp_ratio"], x, v))  # noqa: E731
        r_mean = at([a["success_mean"] for a in anchors])
        r_lo, r_hi = at([a["success_ci"][0] for a in anchors]), at([a["success_ci"][1] for a in anchors])
        out[name] = {"hp_ratio": p["hp_ratio"], "success": p["success_mean"], "success_ci": p["success_ci"],
                     "random_success": r_mean, "random_ci": [r_lo, r_hi],
                     "beats_random": bool(p["success_ci"][0] > r_hi)}
    return out


def _arm_summary(by_seed: dict, n_boot: int, boot_seed: int) -> dict:
    """One causal arm. Seeds hold different numbers of episodes here (the kept tasks differ), so
    ``success`` is the pooled mean, the one its CI is about; ``success_mean`` is over seeds."""
    agg = M.aggregate_seeds(by_seed, n_boot=n_boot, boot_seed=boot_seed)
    eps = [e for s in sorted(by_seed) for e in by_seed[s]]
    forced = [len(e.extra.get("forced_lp_steps", [])) for e in eps]
    return {"success": float(M.per_episode_arrays(eps)["won"].mean()),
            "success_mean": agg["success_rate_mean"], "success_std": agg["success_rate_std"],
            "success_ci": agg["success_ci"], "score_mean": agg["mean_score_mean"],
            "hp_ratio": agg["hp_ratio_mean"], "episodes": agg["episodes"],
            "seeds": agg["seeds"], "forced_lp_per_episode": float(np.mean(forced)) if forced else 0.0}


def _by_task(by_seed: dict) -> dict:
    """{(seed, task_index): won} over an arm's episodes."""
    return {(int(s), int(e.task_index)): bool(e.won) for s, eps in by_seed.items() for e in eps}


def _causal(causal: Optional[dict], n_boot: int, boot_seed: int) -> Optional[dict]:
    """Each arm's success, plus ``reference_same_tasks`` (the HP reference restricted to the tasks
    the arms replayed: the reference over all tasks is not comparable, flagged tasks differ) and
    the paired difference unflagged - flagged over (seed, task) pairs present in both arms."""
    if causal is None:
        return None
    arms = dict(causal["arms"])
    out: dict = {"params": causal["params"], "arms": {}}
    if "reference" in arms and "flagged" in arms:
        kept = set(_by_task(arms["flagged"]))
        same = {s: [e for e in eps if (int(s), int(e.task_index)) in kept] for s, eps in arms["reference"].items()}
        same = {s: eps for s, eps in same.items() if eps}
        if same:
            arms["reference_same_tasks"] = same
    for arm, by_seed in arms.items():
        out["arms"][arm] = _arm_summary(by_seed, n_boot, boot_seed)
    if "flagged" in arms and "unflagged" in arms:
        fl, un = _by_task(arms["flagged"]), _by_task(arms["unflagged"])
        pairs = sorted(set(fl) & set(un))
        diffs = np.array([float(un[k]) - float(fl[k]) for k in pairs])
        lo, hi = (M.bootstrap_ci(diffs, n_boot, boot_seed, clusters=[t for _, t in pairs]) if pairs
                  else (float("nan"), float("nan")))
        out["unflagged_minus_flagged"] = {"success_diff": float(diffs.mean()) if pairs else float("nan"),
                                          "ci": [lo, hi], "pairs": len(pairs), "kl_predicts_harm": bool(lo > 0)}
    return out


def _kl_summary(values: list) -> Optional[dict]:
    from dmr_rl.algos.kl_labels import kl_summary

    return kl_summary(values) if values else None


def summarise(run_dir, n_boot: int = 2000, boot_seed: int = 0) -> dict:
    """All numbers of a run from the files in ``run_dir`` (see :mod:`dmr_rl.report.layout`)."""
    loaded = layout.load_eval(run_dir)
    methods = {m: {p: _point_summary(e, n_boot, boot_seed) for p, e in pts.items()} for m, pts in loaded.items()}
    weak, strong = _reference(methods, WEAK), _reference(methods, STRONG)
    if weak and strong:
        for pts in methods.values():
            for p in pts.values():
                p["cost_norm"] = M.normalised_cost(p["cost"], weak["cost"], strong["cost"])
    tradeoff = {}
    if weak and strong:
        for m, pts in methods.items():
            if m not in (WEAK, STRONG):
                tradeoff[m] = _tradeoff(pts, weak, strong)
                tradeoff[m]["at_hp_budget"] = _at_budget(pts, strong, HP_BUDGET)
                if m != RANDOM and RANDOM in methods:
                    tradeoff[m]["vs_random"] = _vs_random(pts, methods, weak, strong)
    kl_dirs = [layout.point_dir(run_dir, "kl_oracle", p) for p in loaded.get("kl_oracle", {})]
    return {
        "run_dir": str(run_dir),
        "reference": {"weak": weak, "strong": strong},
        "methods": methods,
        "tradeoff": tradeoff,
        "causal": _causal(layout.load_causal(run_dir), n_boot, boot_seed),
        "kl": _kl_summary(layout.load_kl_values(run_dir, kl_dirs)),
        "bootstrap": {"resamples": n_boot, "seed": boot_seed, "level": 0.95},
    }


# ---------------------------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------------------------
def _f(x, fmt="{:.3f}") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return fmt.format(x)


def _ci(ci) -> str:
    return f"[{_f(ci[0])}, {_f(ci[1])}]"


def _bytes(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x / 1e9:.2f} GB" if x >= 1e8 else f"{x / 1e6:.2f} MB"


def markdown(results: dict, plots: Optional[list] = None) -> str:
    lines = [f"# DMR evaluation report: `{results['run_dir']}`", "",
             "All numbers are computed from the episode shards in this run directory. Success and "
             "score: mean +- std over seeds, 95% bootstrap CI resampling tasks (each task with all its "
             "episodes over the seeds: a task replayed by every seed is one piece of evidence, not "
             "several). HP ratio: share of steps acted by the high-precision model. Cost: modelled "
             "weight bytes read per episode; cost (norm.): 0 = LP-only, 1 = HP-only.", "",
             "## Methods and operating points", "",
             "| method | point | success | 95% CI | score | HP ratio | cost/episode | cost (norm.) | steps | seeds | episodes | tasks |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for m, pts in results["methods"].items():
        for name, p in sorted(pts.items(), key=lambda kv: kv[1]["hp_ratio"]):
            mark = " *" if p.get("default") else ""
            lines.append(
                f"| {m} | {name}{mark} | {_f(p['success_mean'])} +- {_f(p['success_std'])} | {_ci(p['success_ci'])} "
                f"| {_f(p['score_mean'])} | {_f(p['hp_ratio'])} | {_bytes(p['cost'])} | {_f(p.get('cost_norm'))} "
                f"| {_f(p['mean_length'], '{:.1f}')} | {len(p['seeds'])} | {p['episodes']} | {p.get('tasks', '-')} |")
    lines += ["", "`*` marks a router's default threshold.", "",
              "### Cost detail", "",
              "Tokens per episode (prompt + generated, both tiers); mean measured seconds of a step acted "
              "by each tier (batched serving: a step's latency is the forward it rode in).", "",
              "| method | point | tokens/episode | HP step latency | LP step latency |", "|---|---|---|---|---|"]
    for m, pts in results["methods"].items():
        for name, p in sorted(pts.items(), key=lambda kv: kv[1]["hp_ratio"]):
            lines.append(f"| {m} | {name} | {_f(p['tokens_per_episode'], '{:.0f}')} "
                         f"| {_f(p['latency_hp_s'] and 1e3 * p['latency_hp_s'], '{:.1f} ms')} "
                         f"| {_f(p['latency_lp_s'] and 1e3 * p['latency_lp_s'], '{:.1f} ms')} |")
    if results["tradeoff"]:
        lines += ["", "## Trade-off (RouteLLM metrics adapted to episodes)", "",
                  "x = HP ratio of steps (or normalised cost); quality = success rate; weak = LP-only, "
                  "strong = HP-only; curve = Pareto front of the operating points, linearly "
                  "interpolated. CPT(p%): the x where p% of the LP->HP success gap is recovered.", "",
                  "| method | APGR | CPT(50%) | CPT(80%) | APGR (cost) | CPT(50%) (cost) | CPT(80%) (cost) | APGR (score) |",
                  "|---|---|---|---|---|---|---|---|"]
        for m, t in results["tradeoff"].items():
            lines.append(f"| {m} | {_f(t['apgr'])} | {_f(t['cpt50'])} | {_f(t['cpt80'])} | {_f(t['apgr_cost'])} "
                         f"| {_f(t['cpt50_cost'])} | {_f(t['cpt80_cost'])} | {_f(t['apgr_score'])} |")
        lines += ["", f"### Against random routing, and the {int(100 * HP_BUDGET)}% HP budget", "",
                  "Random at the same HP ratio: interpolated between the random-ratio points (closed by "
                  "LP-only and HP-only), mean and CI bounds alike. *beats random*: the 95% CIs are disjoint.", "",
                  f"| method | best point at HP ratio <= {HP_BUDGET:.2f} | its success | share of HP-only | "
                  "points beating random | of |", "|---|---|---|---|---|---|"]
        for m, t in results["tradeoff"].items():
            b, vr = t.get("at_hp_budget"), t.get("vs_random") or {}
            best = (f"{b['point']} (HP {_f(b['hp_ratio'])}) | {_f(b['success'])} {_ci(b['success_ci'])} | "
                    f"{_f(100 * b['share_of_hp_only'], '{:.1f}%')}") if b else "- | - | -"
            wins = sum(v["beats_random"] for v in vr.values())
            lines.append(f"| {m} | {best} | {wins if vr else '-'} | {len(vr) if vr else '-'} |")
    else:
        lines += ["", "Trade-off metrics need both `hp_only` and `lp_only` runs; at least one is missing."]
    c = results.get("causal")
    if c:
        lines += ["", "## Causal check: does per-step KL predict what matters?", "",
                  "Each episode is replayed with HP everywhere except a forced set of steps run on LP: "
                  "the steps the router flags (highest P(HP)) versus the same number of unflagged steps. "
                  "`reference_same_tasks` is the all-HP reference on the tasks the arms replayed; the "
                  "difference below is paired by (seed, task).", "",
                  "| arm | success (pooled) | 95% CI | per-seed mean +- std | HP ratio | forced LP steps/episode | "
                  "episodes |", "|---|---|---|---|---|---|---|"]
        for arm, a in c["arms"].items():
            lines.append(f"| {arm} | {_f(a['success'])} | {_ci(a['success_ci'])} | {_f(a['success_mean'])} +- "
                         f"{_f(a['success_std'])} "
                         f"| {_f(a['hp_ratio'])} | {_f(a['forced_lp_per_episode'], '{:.2f}')} | {a['episodes']} |")
        d = c.get("unflagged_minus_flagged")
        if d:
            verdict = ("forcing LP on flagged steps hurts more than on unflagged ones (CI excludes 0)"
                       if d["kl_predicts_harm"] else "no significant difference (CI includes 0 or is negative)")
            lines += ["", f"Success(unflagged) - success(flagged) = {_f(d['success_diff'])} over {d['pairs']} "
                          f"paired episodes, 95% CI {_ci(d['ci'])}: {verdict}."]
    k = results.get("kl")
    if k:
        lines += ["", "## Per-step KL(HP || LP)", "",
                  f"{k['steps']} steps: mean {_f(k['mean'])}, p50 {_f(k['p50'])}, p90 {_f(k['p90'])}, "
                  f"p99 {_f(k['p99'])}; the top 5% of steps hold {_f(100 * k['top5_share'], '{:.1f}')}% of the total KL."]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}](plots/{p})" for p in plots]
    return "\n".join(lines) + "\n"
