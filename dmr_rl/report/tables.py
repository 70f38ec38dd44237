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
from dmr_rl.report.tradeoff import routellm_tradeoff

WEAK, STRONG, RANDOM = "lp_only", "hp_only", "random"
CPT_LEVELS = (50, 80)
MATCH_TOL = 0.02  # a baseline point is "matched" when its HP ratio is within this of the router point's
COST_TOL = 0.05  # ... or, compared on cost, when its normalised cost is within this
NEAREST = ("random", "first_k", "cascade")  # compared at the point nearest the router's HP ratio
SINGLE = (WEAK, STRONG)  # compared at their one point


def is_router(params: dict) -> bool:
    """A router point (a learned router's, or a calibrated baseline's such as ``cascade_calibrated``):
    ``point.json`` params say ``kind: router`` (pipeline/evaluate.py); runs written before that field
    carry the router ``checkpoint`` instead."""
    kind = params.get("kind")
    return kind == "router" or (kind is None and "checkpoint" in params)


def _point_summary(entry: dict, n_boot: int, boot_seed: int) -> dict:
    agg = M.aggregate_seeds(entry["by_seed"], n_boot=n_boot, boot_seed=boot_seed)
    params = entry["params"]
    return {
        "params": params, "default": entry["default"], "router": is_router(params),
        "sampled": bool(params.get("sampled", False)), "seeds": agg["seeds"],
        "episodes": agg["episodes"], "tasks": agg["tasks"],
        "success_mean": agg["success"], "success_std": agg["success_rate_std"], "success_ci": agg["success_ci"],
        "score_mean": agg["score"], "score_std": agg["mean_score_std"], "score_ci": agg["score_ci"],
        "hp_ratio": agg["hp_ratio"], "hp_ratio_std": agg["hp_ratio_std"], "hp_ratio_ci": agg["hp_ratio_ci"],
        "hp_acted": agg["hp_acted"],
        "cost": agg["cost_per_episode_mean"], "cost_std": agg["cost_per_episode_std"],
        "mean_length": agg["mean_length_mean"], "tokens_per_episode": agg["tokens_per_episode_mean"],
        "latency_hp_s": agg["latency_hp_s_mean"], "latency_lp_s": agg["latency_lp_s_mean"],
        "per_seed": agg["per_seed"],
    }


def check_task_sets(loaded: dict) -> list:
    """The sorted task indices every (method, point, seed) played; DataError naming the first
    one that misses tasks another played (methods on different tasks are not compared)."""
    from environments.errors import DataError

    seen = {(m, p, s): {int(e.task_index) for e in eps}
            for m, pts in loaded.items() for p, entry in pts.items() for s, eps in entry["by_seed"].items()}
    union = set().union(*seen.values()) if seen else set()
    for (m, p, s), tasks in sorted(seen.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2])):
        missing = sorted(union - tasks)
        if missing:
            other = next(k for k, v in seen.items() if missing[0] in v)
            shown = ", ".join(map(str, missing[:8])) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
            raise DataError(f"eval/{m}/{p}/seed_{s} lacks task(s) {shown} that {other[0]}/{other[1]} played "
                            f"(seed {other[2]}): methods on different tasks are not compared; finish the "
                            f"evaluation (`dmr eval` resumes) or remove the incomplete point")
    return sorted(union)


def _reference(methods: dict, name: str) -> Optional[dict]:
    points = methods.get(name)
    if not points:
        return None
    key, p = next(iter(points.items()))  # baselines without a knob have one point
    return {"method": name, "point": key, "success": p["success_mean"], "score": p["score_mean"],
            "cost": p["cost"], "hp_ratio": p["hp_ratio"]}


def _nearest(points: dict, x: float, target: str = "") -> str:
    """The baseline point to compare with a router point at HP ratio ``x``: among the points the
    evaluation matched to that router point (``matched_to`` in their params holds ``target`` =
    "method/point"), else among all, the one nearest in HP ratio."""
    pool = [n for n, p in points.items() if target and target in (p["params"].get("matched_to") or [])] or list(points)
    return min(pool, key=lambda n: (abs(points[n]["hp_ratio"] - x), n))


def _comparisons(methods: dict, tables: dict, n_boot: int, boot_seed: int) -> list:
    """Every router point against every baseline: random, first-k and cascade at their point
    matched to it by the evaluation, else nearest in HP ratio (``matched``: within MATCH_TOL),
    LP-only and HP-only at their one point. A point that pays both tiers on some steps (a
    calibrated cascade: LP at every step, HP on top) costs more than its HP ratio says, so it is
    also compared with the random point nearest in normalised cost (``matched_on: cost``;
    ``matched``: within COST_TOL) when that is another point."""
    out = []
    for m, pts in methods.items():
        for p, rp in sorted(pts.items(), key=lambda kv: kv[1]["hp_ratio"]):
            if not rp["router"]:
                continue
            for b in (*NEAREST, *SINGLE):
                bpts = methods.get(b)
                if not bpts:
                    continue
                bp = _nearest(bpts, rp["hp_ratio"], f"{m}/{p}") if b in NEAREST else next(iter(bpts))
                out.append(_compared(m, p, b, bp, "hp_ratio", MATCH_TOL, methods, tables, n_boot, boot_seed))
                both_tiers = abs(rp["hp_acted"] - rp["hp_ratio"]) > MATCH_TOL
                if b == RANDOM and both_tiers and "cost_norm" in rp:
                    bc = min(bpts, key=lambda n: (abs(bpts[n].get("cost_norm", math.inf) - rp["cost_norm"]), n))
                    if bc != bp:
                        out.append(_compared(m, p, b, bc, "cost_norm", COST_TOL, methods, tables, n_boot, boot_seed))
    return out


def _compared(m: str, p: str, b: str, bp: str, on: str, tol: float, methods: dict, tables: dict,
              n_boot: int, boot_seed: int) -> dict:
    """One comparison row: router point (m, p) against baseline point (b, bp), paired; ``matched``
    when their ``on`` values (hp_ratio or cost_norm) are within ``tol``."""
    rp, bq = methods[m][p], methods[b][bp]
    row = {"method": m, "point": p, "vs": b, "vs_point": bp, "hp_ratio": rp["hp_ratio"],
           "vs_hp_ratio": bq["hp_ratio"], "matched_on": "hp_ratio" if on == "hp_ratio" else "cost"}
    if on != "hp_ratio":
        row["cost_norm"], row["vs_cost_norm"] = rp[on], bq[on]
    row["matched"] = bool(abs(rp[on] - bq[on]) <= tol + 1e-12)
    if b == STRONG:  # how much of HP-only's success the router keeps, with its task-bootstrap CI
        kept = M.share_of(tables[(m, p)], tables[(b, bp)], n_boot, boot_seed)
        row["share_of_vs"], row["share_of_vs_ci"] = kept["share"], kept["share_ci"]
        row["hp_acted"] = rp.get("hp_acted", math.nan)
    return {**row, **M.paired_comparison(tables[(m, p)], tables[(b, bp)], n_boot, boot_seed)}


def _tradeoff(pts: dict, per_task: dict, m: str, weak: tuple, strong: tuple, n_boot: int, boot_seed: int) -> dict:
    """RouteLLM's APGR / CPT of one method over its measured points (a router's sampled policy is
    not a threshold point and stays out), for success and score."""
    names = sorted((n for n, p in pts.items() if not p["sampled"]), key=lambda n: pts[n]["hp_ratio"])
    out: dict = {"points": names}
    if not names:
        return out
    curve = [per_task[(m, n)] for n in names]
    for quality, suffix in (("won", ""), ("score", "_score")):
        t = routellm_tradeoff(curve, per_task[weak], per_task[strong], n_boot, boot_seed, quality=quality,
                                levels=CPT_LEVELS)
        for k, v in t.items():
            if k != "points":
                out[k + suffix] = v
    return out


def _lambda_sweep(methods: dict) -> Optional[dict]:
    """GRPO routers trained with different lambda (``hp_cost`` in their point params), each as its
    sampled policy (what GRPO trains; a calibrated threshold point holds its HP ratio by design):
    per router, lambda, HP ratio and success with CIs, and whether the HP ratio falls as lambda
    rises (over distinct lambdas; routers sharing a lambda averaged). None unless two or more
    distinct lambdas were evaluated."""
    rows = []
    for m, pts in methods.items():
        for p, v in pts.items():
            lam = v["params"].get("hp_cost")
            if v["sampled"] and lam is not None:
                rows.append({"hp_cost": float(lam), "method": m, "point": p, "hp_ratio": v["hp_ratio"],
                             "hp_ratio_ci": v["hp_ratio_ci"], "success": v["success_mean"],
                             "success_ci": v["success_ci"]})
    lams = sorted({r["hp_cost"] for r in rows})
    if len(lams) < 2:
        return None
    rows.sort(key=lambda r: (r["hp_cost"], r["method"]))
    hp = [np.mean([r["hp_ratio"] for r in rows if r["hp_cost"] == lam]) for lam in lams]
    return {"rows": rows, "sampled_hp_falls_with_lambda": bool(all(b < a for a, b in zip(hp, hp[1:])))}


def _causal(causal: Optional[dict], n_boot: int, boot_seed: int) -> Optional[dict]:
    """The causal check's numbers (:mod:`dmr_rl.report.causal_stats`), None when it was not run."""
    if causal is None:
        return None
    from dmr_rl.report.causal_stats import causal_summary

    return causal_summary(causal, n_boot, boot_seed)


def _kl_summary(values: list) -> Optional[dict]:
    from dmr_rl.algos.kl_labels import kl_summary

    return kl_summary(values) if values else None


def summarise(run_dir, n_boot: int = 2000, boot_seed: int = 0) -> dict:
    """All numbers of a run from the files in ``run_dir`` (see :mod:`dmr_rl.report.layout`).

    ``comparisons`` (paired, router points vs baselines) come first; DataError when methods
    played different tasks."""
    loaded = layout.load_eval(run_dir)
    tasks = check_task_sets(loaded)
    methods = {m: {p: _point_summary(e, n_boot, boot_seed) for p, e in pts.items()} for m, pts in loaded.items()}
    tables = {(m, p): M.point_table(e["by_seed"]) for m, pts in loaded.items() for p, e in pts.items()}
    weak, strong = _reference(methods, WEAK), _reference(methods, STRONG)
    if weak and strong:
        for pts in methods.values():
            for p in pts.values():
                p["cost_norm"] = M.normalised_cost(p["cost"], weak["cost"], strong["cost"])
    tradeoff = {}
    if weak and strong:
        per_task = {k: M.per_task(t) for k, t in tables.items()}
        ref = ((WEAK, weak["point"]), (STRONG, strong["point"]))
        for m, pts in methods.items():
            if m not in (WEAK, STRONG) and any(not p["sampled"] for p in pts.values()):
                tradeoff[m] = _tradeoff(pts, per_task, m, *ref, n_boot, boot_seed)
    kl_dirs = [layout.point_dir(run_dir, "kl_oracle", p) for p in loaded.get("kl_oracle", {})]
    return {
        "run_dir": str(run_dir),
        "comparisons": _comparisons(methods, tables, n_boot, boot_seed),
        "tasks": len(tasks),
        "reference": {"weak": weak, "strong": strong},
        "methods": methods,
        "tradeoff": tradeoff,
        "lambda_sweep": _lambda_sweep(methods),
        "causal": _causal(layout.load_causal(run_dir), n_boot, boot_seed),
        "kl": _kl_summary(layout.load_kl_values(run_dir, kl_dirs)),
        "bootstrap": {"resamples": n_boot, "seed": boot_seed, "level": 0.95, "clusters": "tasks"},
        "tiers": layout.load_tiers(run_dir),
    }


# ---------------------------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------------------------
def tiers_line(tiers: dict) -> str:
    """``Tiers (as served): HP transformers, float32 on cpu, 2 replicas; LP ...`` from ``eval/tiers.json``."""
    parts = []
    for tier, reps in tiers.items():
        kinds = sorted({f"{r.get('backend', '?')}, {r.get('dtype') or '?'} on {r.get('device') or '?'}" for r in reps})
        parts.append(f"{tier.upper()} {' / '.join(kinds)}, {len(reps)} replica{'s' if len(reps) != 1 else ''}")
    return "Tiers (as served in the evaluation): " + "; ".join(parts) + "."


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


def _signed(x) -> str:
    return _f(x, "{:+.3f}")


def _p(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.3f}" if x >= 0.001 else f"{x:.1e}"


def comparison_sentence(c: dict) -> str:
    """One comparison in words: "router r0.30 0.620 vs random ratio0.30 0.410 at 30% HP: +0.210
    [+0.120, +0.300], McNemar p=0.003"."""
    if c.get("matched_on") == "cost":
        at = (f"at normalised cost {_f(c['cost_norm'])} vs {_f(c['vs_cost_norm'])} "
              f"({'cost-matched' if c['matched'] else 'not matched in cost'})")
    else:
        at = (f"at {100 * c['hp_ratio']:.0f}% HP" if c["matched"] else
              f"at {100 * c['hp_ratio']:.0f}% vs {100 * c['vs_hp_ratio']:.0f}% HP{_unmatched(c)}")
    return (f"{c['method']} {c['point']} {_f(c['success'])} vs {c['vs']} {c['vs_point']} {_f(c['vs_success'])} "
            f"{at}: {_signed(c['diff_mean'])} [{_signed(c['diff_ci'][0])}, {_signed(c['diff_ci'][1])}], "
            f"McNemar p={_p(c['mcnemar_p'])}{_undetected(c)}")


def _match_note(c: dict) -> str:
    """The comparisons table's note beside the HP ratios: the costs of a cost-matched row, or
    "(not matched)" for a nearest-in-HP-ratio baseline beyond MATCH_TOL."""
    if c.get("matched_on") == "cost":
        return f" (cost {_f(c['cost_norm'])} vs {_f(c['vs_cost_norm'])}{'' if c['matched'] else ', not matched'})"
    return _unmatched(c) if c["vs"] in NEAREST and not c["matched"] else ""


def _unmatched(c: dict) -> str:
    """Why a baseline beyond MATCH_TOL is still shown: " (baseline at more HP)" when it routed more
    to HP than the router point (a conservative comparison for the router), else " (not matched)"."""
    return " (baseline at more HP)" if c["vs_hp_ratio"] > c["hp_ratio"] else " (not matched)"


def _undetected(c: dict) -> str:
    """"; no difference shown: this pairing detects (80% power) only |difference| >= 0.200" when
    the difference's CI holds 0 (else "")."""
    lo, hi = c["diff_ci"]
    mde = c.get("diff_mde")
    if mde is None or not (lo <= 0.0 <= hi):
        return ""
    return f"; no difference shown: this pairing detects (80% power) only |difference| >= {_f(mde)}"


def _ci_or_dash(ci) -> str:
    return _ci(ci) if ci else "-"


def markdown(results: dict, plots: Optional[list] = None) -> str:
    lines = [f"# DMR evaluation report: `{results['run_dir']}`", "",
             f"All numbers are computed from the episode shards in this run directory ({results.get('tasks', '-')} "
             "tasks, every method on the same tasks). Success and score of a point: per task, the mean over "
             "its episodes (draws and seeds); then the mean over tasks. HP ratio: per task, HP calls / all "
             "tier calls (a step's calls are the tiers it paid: a cascade's LP pass counts as LP use); then "
             "the mean over tasks. 95% CIs: bootstrap resampling tasks, of the same statistic. Cost: modelled "
             "weight bytes read per episode; cost (norm.): 0 = LP-only, 1 = HP-only.", ""]
    if results.get("tiers"):
        lines += [tiers_line(results["tiers"]), ""]
    comps = results.get("comparisons") or []
    lines += ["## Paired comparisons: each router point against the baselines", "",
              "Paired by task (by seed and task where both methods ran several seeds; a method's draws on one "
              "pair averaged first). Difference = router - baseline in success, 95% CI = task-clustered "
              "bootstrap of the pair differences, p = exact McNemar (sign) test on the discordant pairs; "
              "detectable = the smallest true difference this pairing detects with 80% power at the 5% level "
              "(task-clustered SE, floored at the exact test's 6 one-way discordant pairs / pairs). "
              f"Random, first-k and cascade at their point nearest in HP ratio (*matched*: within "
              f"{MATCH_TOL:.2f})." + (
                  f" A point that pays both tiers on some steps (a calibrated cascade) is also compared with "
                  f"the random point nearest in normalised cost (*nearest in cost*; matched within "
                  f"{COST_TOL:.2f}; when random at the same HP ratio reads fewer weight bytes per episode, the "
                  f"evaluation also plays random at its cost-equivalent HP ratio, the one-tier ratio that "
                  f"reads as many weight bytes per step): its HP ratio counts LP's call at every step and "
                  f"understates its cost."
                  if any(c.get("matched_on") == "cost" for c in comps) else ""), ""]
    if comps:
        lines += ["| comparison | HP ratio | success | difference [95% CI] | McNemar p | detectable | tasks (pairs) |",
                  "|---|---|---|---|---|---|---|"]
        for c in comps:
            lines.append(
                f"| {c['method']} {c['point']} vs {c['vs']} {c['vs_point']}"
                f"{' (nearest in cost)' if c.get('matched_on') == 'cost' else ''} "
                f"| {_f(c['hp_ratio'])} vs {_f(c['vs_hp_ratio'])}{_match_note(c)} "
                f"| {_f(c['success'])} vs {_f(c['vs_success'])} "
                f"| {_signed(c['diff_mean'])} [{_signed(c['diff_ci'][0])}, {_signed(c['diff_ci'][1])}] "
                f"| {_p(c['mcnemar_p'])} | {_f(c.get('diff_mde'))} | {c['n_tasks']} ({c['n_pairs']}) |")
        lines += ["", "In words:", ""] + [f"- {comparison_sentence(c)}" for c in comps
                                           if c["vs"] in (RANDOM, "first_k")]
        lines += [f"- {c['method']} {c['point']} keeps {100 * c['share_of_vs']:.1f}% "
                  f"[{100 * c['share_of_vs_ci'][0]:.1f}%, {100 * c['share_of_vs_ci'][1]:.1f}%] of {c['vs']}'s success "
                  f"at HP ratio {_f(c['hp_ratio'])} (acted by HP {_f(c['hp_acted'])})"
                  for c in comps if c["vs"] == STRONG and isinstance(c.get("share_of_vs"), float)
                  and math.isfinite(c["share_of_vs"])]
    else:
        lines.append("No learned router was evaluated: nothing to compare.")
    lines += ["", "## Methods and operating points", "",
              "HP ratio counts the tier calls a step paid; *acted by HP* counts the steps whose action HP "
              "chose (they differ where a step pays both tiers: the cascade's escalations, the oracles).", "",
              "| method | point | success | 95% CI | score | HP ratio | HP 95% CI | acted by HP | cost/episode "
              "| cost (norm.) | steps | seeds | episodes | tasks |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for m, pts in results["methods"].items():
        for name, p in sorted(pts.items(), key=lambda kv: kv[1]["hp_ratio"]):
            mark = " *" if p.get("default") else ""
            lines.append(
                f"| {m} | {name}{mark} | {_f(p['success_mean'])} | {_ci(p['success_ci'])} "
                f"| {_f(p['score_mean'])} | {_f(p['hp_ratio'])} | {_ci(p['hp_ratio_ci'])} | {_f(p.get('hp_acted'))} "
                f"| {_bytes(p['cost'])} "
                f"| {_f(p.get('cost_norm'))} | {_f(p['mean_length'], '{:.1f}')} | {len(p['seeds'])} "
                f"| {p['episodes']} | {p.get('tasks', '-')} |")
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
        lines += ["", "## Trade-off: APGR and CPT (RouteLLM's definitions, measured points only)", "",
                  "Curve = the method's measured points (a router's threshold points, not its sampled "
                  "policy) plus the measured LP-only and HP-only points, quality against HP ratio; "
                  "APGR = (AUC - AUC_LP) / (AUC_HP - AUC_LP) by trapezoids over those points; CPT(p%) = the "
                  "smallest measured HP ratio whose success recovers p% of the LP->HP gap (- when none "
                  "does). 95% CIs resample tasks. Withheld when the HP-LP gap's CI includes 0.", "",
                  "| method | APGR | 95% CI | CPT(50%) | 95% CI | CPT(80%) | 95% CI | APGR (score) |",
                  "|---|---|---|---|---|---|---|---|"]
        for m, t in results["tradeoff"].items():
            if t.get("withheld"):
                lines.append(f"| {m} | withheld: {t['withheld']} | | | | | | {_f(t.get('apgr_score'))} |")
                continue
            lines.append(f"| {m} | {_f(t.get('apgr'))} | {_ci_or_dash(t.get('apgr_ci'))} | {_f(t.get('cpt50'))} "
                         f"| {_ci_or_dash(t.get('cpt50_ci'))} | {_f(t.get('cpt80'))} "
                         f"| {_ci_or_dash(t.get('cpt80_ci'))} "
                         f"| {_f(t.get('apgr_score'))} |")
    else:
        lines += ["", "Trade-off metrics need both `hp_only` and `lp_only` runs; at least one is missing."]
    sweep = results.get("lambda_sweep")
    if sweep:
        falls = sweep["sampled_hp_falls_with_lambda"]
        lines += ["", "## GRPO lambda sweep", "",
                  "GRPO routers trained with different lambda (reward = success - lambda x HP share), each played "
                  "as its sampled policy (what GRPO trains; calibrated threshold points hold their HP ratio by "
                  "design).", "",
                  "| lambda | router (sampled policy) | HP ratio | 95% CI | success | 95% CI |",
                  "|---|---|---|---|---|---|"]
        for r in sweep["rows"]:
            lines.append(f"| {r['hp_cost']:g} | {r['method']} | {_f(r['hp_ratio'])} "
                         f"| {_ci(r['hp_ratio_ci'])} | {_f(r['success'])} | {_ci(r['success_ci'])} |")
        lines += ["", "The sampled policy's HP ratio " + ("falls" if falls else "does NOT fall")
                  + " as lambda rises."]
    c = results.get("causal")
    if c:
        from dmr_rl.report.causal_stats import causal_lines

        lines += ["", "## Causal check: do the flagged steps matter?", "",
                  "Each task is replayed with HP everywhere except a forced set of steps run on LP: the flagged "
                  "steps (highest per-step KL in the labels, or highest router P(HP)) versus as many unflagged "
                  "steps from the same step-index buckets, drawn below the flag threshold. Paired by task.", "",
                  *causal_lines(c)]
    k = results.get("kl")
    if k:
        lines += ["", "## Per-step KL(HP || LP)", "",
                  f"{k['steps']} steps: mean {_f(k['mean'])}, p50 {_f(k['p50'])}, p90 {_f(k['p90'])}, "
                  f"p99 {_f(k['p99'])}; the top 5% of steps hold {_f(100 * k['top5_share'], '{:.1f}')}% of the total KL."]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}](plots/{p})" for p in plots]
    return "\n".join(lines) + "\n"
