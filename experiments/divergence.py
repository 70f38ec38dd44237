"""Where a router's failures start: its lost episodes against HP-only's on the same task, and how
often the tiers' greedy actions differ by step index in the collected training episodes.

    python experiments/divergence.py RUN_DIR [--method grpo] [--point r0.40] [--json]

On a deterministic environment with a greedy agent, HP-only's episode of a task is one fixed
action list. For every task HP-only wins and the router's point loses, the first step where the
router's actions leave HP's is where its failure starts: the script prints that step, the tier
that acted there and the router's P(HP) against the point's threshold. It also counts LP loops
(a step whose prompt an earlier step of the episode already had, LP acting both times) and, in
``RUN_DIR/trajectories`` and its subdirectories (collected with ``collect.record_kl``: both tiers scored at every step),
the share of steps where the tiers' greedy actions differ at step 0, steps 1-4 and steps 5+.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BUCKETS = (("step 0", 0, 1), ("steps 1-4", 1, 5), ("steps 5+", 5, 10**9))


def first_divergence(a: list, b: list) -> int:
    """The first index where action lists ``a`` and ``b`` differ (the shorter length if one is a
    prefix of the other)."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


def lp_loop_step(ep):
    """The first step whose prompt an earlier step had, LP acting at both; None when none."""
    seen: dict = {}
    for s in ep.steps:
        if s.prompt in seen and s.tier == 0 and seen[s.prompt] == 0:
            return s.step
        seen.setdefault(s.prompt, s.tier)
    return None


def flip_rates(episodes) -> dict:
    """Per step bucket: steps where both tiers ran, and the share whose greedy actions differed."""
    out = {}
    for name, lo, hi in BUCKETS:
        agree = [s.extra["tiers_agree"] for ep in episodes for s in ep.steps
                 if lo <= s.step < hi and "tiers_agree" in s.extra]
        out[name] = {"steps": len(agree), "flip_share": (1 - sum(agree) / len(agree)) if agree else None}
    return out


def analyse(run_dir, method: str, point: str) -> dict:
    from dmr_rl.report import layout
    from dmr_rl.rollout.records import TrajectoryStore

    def one_play(m, p):
        d = layout.point_dir(run_dir, m, p)
        seeds = layout.read_seeds(d) if d.is_dir() else {}
        if not seeds:
            raise SystemExit(f"{layout.point_dir(run_dir, m, p)}: no episodes")
        return {ep.task_index: ep for ep in seeds[min(seeds)]}

    hp, routed = one_play("hp_only", "default"), one_play(method, point)
    meta_path = layout.point_dir(run_dir, method, point) / "point.json"
    threshold = layout.read_json(meta_path).get("params", {}).get("threshold") if meta_path.exists() else None
    lost = []
    for t in sorted(set(hp) & set(routed)):
        if hp[t].won and not routed[t].won:
            r = routed[t]
            i = first_divergence([s.action for s in hp[t].steps], [s.action for s in r.steps])
            s = r.steps[min(i, len(r.steps) - 1)]
            lost.append({"task": t, "first_divergence": i, "tier_there": s.tier,
                         "p_hp_there": round(float(s.router_prob), 3), "lp_loop_from": lp_loop_step(r)})
    failures = [routed[t] for t in routed if not routed[t].won]
    root = Path(run_dir) / "trajectories"  # collect writes to trajectories/<stage>/
    collected = [ep for d in sorted([root, *root.glob("*")]) if d.is_dir() for ep in TrajectoryStore.read(d)
                 if any("tiers_agree" in s.extra for s in ep.steps)]  # both tiers scored (GRPO's rollouts: not)
    return {"run_dir": str(run_dir), "method": method, "point": point, "threshold": threshold,
            "tasks": len(set(hp) & set(routed)), "hp_only_won": sum(hp[t].won for t in hp),
            "router_won": sum(routed[t].won for t in routed), "lost_where_hp_won": lost,
            "lost_at_step_0": sum(x["first_divergence"] == 0 for x in lost),
            "failures_with_lp_loop": sum(lp_loop_step(ep) is not None for ep in failures),
            "failures": len(failures), "collected_episodes": len(collected),
            "collected_flip_share": flip_rates(collected)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--method", default="grpo")
    ap.add_argument("--point", default="r0.40")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of lines")
    args = ap.parse_args(argv)
    out = analyse(args.run_dir, args.method, args.point)
    if args.json:
        print(json.dumps(out))
        return out
    print(f"{out['method']} {out['point']}: won {out['router_won']} of {out['tasks']} (HP-only {out['hp_only_won']}); "
          f"threshold {out['threshold']}")
    for x in out["lost_where_hp_won"]:
        print(f"  task {x['task']}: leaves HP's path at step {x['first_divergence']} (tier {x['tier_there']}, "
              f"P(HP) {x['p_hp_there']}); LP loop from step {x['lp_loop_from']}")
    print(f"lost where HP won: {len(out['lost_where_hp_won'])}, {out['lost_at_step_0']} of them at step 0; "
          f"failures with an LP loop: {out['failures_with_lp_loop']} of {out['failures']}")
    for name, r in out["collected_flip_share"].items():
        share = "n/a" if r["flip_share"] is None else f"{r['flip_share']:.3f}"
        print(f"collected ({out['collected_episodes']} episodes), {name}: greedy actions differ on {share} of {r['steps']} steps")
    return out


if __name__ == "__main__":
    main()
