"""Pool independent runs of one procedure: each run's router point against the random point its
evaluation matched to it, paired by task, every run's tasks kept as their own clusters.

    python experiments/pool_runs.py RUN_DIR [RUN_DIR ...] [--method grpo] [--vs METHOD/POINT]

Prints each run's own comparison with random (from its eval/results.json) and the pooled one
(:func:`dmr_rl.report.metrics.paired_comparison`: task-clustered bootstrap CI, exact McNemar p,
detectable difference), against random, or with ``--vs METHOD/POINT`` against that point of every run
(e.g. a variant of the router against the router itself), and the pooled share of HP-only's success
the router keeps (:func:`dmr_rl.report.metrics.share_of`, with its task-bootstrap CI; only when every
run played HP-only). Runs must be independent (different games): a task in two runs would be counted
as two clusters.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> dict:
    from dmr_rl.report import layout
    from dmr_rl.report import metrics as M

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--method", default="grpo", help="the router method compared (default grpo)")
    ap.add_argument("--vs", default="", metavar="METHOD/POINT",
                    help="pair against this point of every run instead of the random point matched to the router "
                         "(e.g. grpo/r0.40 for a variant of the router against the router itself)")
    ap.add_argument("--n-boot", type=int, default=4000)
    args = ap.parse_args(argv)
    if args.vs and args.vs.count("/") != 1:
        raise SystemExit(f"--vs {args.vs!r}: expected METHOD/POINT, e.g. grpo/r0.40")
    pooled = {"router": {}, "baseline": {}, "hp_only": {}}
    without_hp = []  # runs whose evaluation did not play HP-only: no pooled share of it then
    for k, run in enumerate(args.runs):
        path = layout.eval_dir(run) / "results.json"
        if not path.exists():
            raise SystemExit(f"{path}: no evaluation results (run `dmr eval` there first)")
        comps = [c for c in json.loads(path.read_text())["comparisons"]
                 if c["method"] == args.method and c["vs"] == "random" and c["matched_on"] == "hp_ratio"]
        if not comps:
            raise SystemExit(f"{path}: no comparison of {args.method!r} with random routing")
        c = comps[0]
        print(f"{run}: {c['method']} {c['point']} {c['success']:.3f} at {c['hp_ratio']:.3f} vs random "
              f"{c['vs_success']:.3f} at {c['vs_hp_ratio']:.3f}: {c['diff_mean']:+.3f} "
              f"[{c['diff_ci'][0]:+.3f}, {c['diff_ci'][1]:+.3f}], p={c['mcnemar_p']:.2g}")
        base = tuple(args.vs.split("/")) if args.vs else ("random", c["vs_point"])
        if not layout.point_dir(run, *base).is_dir():
            raise SystemExit(f"{run}: no evaluation point {'/'.join(base)}")
        sides = [("router", (c["method"], c["point"])), ("baseline", base)]
        if layout.point_dir(run, "hp_only", "default").is_dir():
            sides.append(("hp_only", ("hp_only", "default")))
        else:
            without_hp.append(str(run))
        for side, (m, p) in sides:
            for seed, eps in layout.read_seeds(layout.point_dir(run, m, p)).items():
                for e in eps:
                    e.task_index = int(e.task_index) + 100_000 * k  # tasks of different runs stay apart
                pooled[side].setdefault(seed, []).extend(eps)
    router = M.point_table(pooled["router"])
    c = M.paired_comparison(router, M.point_table(pooled["baseline"]), args.n_boot, 0)
    out = {"vs": args.vs or "random", **{k: c[k] for k in ("n_tasks", "success", "vs_success", "diff_mean",
                                                           "diff_ci", "mcnemar_p", "diff_mde")}}
    if without_hp:
        print(f"no pooled share of HP-only: {', '.join(without_hp)} did not play hp_only")
    else:
        kept = M.share_of(router, M.point_table(pooled["hp_only"]), args.n_boot, 0)
        out["share_of_hp_only"], out["share_of_hp_only_ci"] = kept["share"], kept["share_ci"]
    print("pooled:", json.dumps(out))
    return out


if __name__ == "__main__":
    main()
