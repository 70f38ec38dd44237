"""``dmr report RUN_DIR``: report.md, results.json, PNG plots and TensorBoard scalars.

Everything is computed from the files under RUN_DIR (see :mod:`dmr_rl.report.layout`).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from dmr_rl.report import layout, plots, tables


def _representative(points: dict) -> str:
    """The point a method is shown by in per-step plots: its default, else the median HP ratio."""
    for name, entry in points.items():
        if entry["default"]:
            return name
    names = sorted(points, key=lambda n: sum(e.hp_ratio for s in points[n]["by_seed"].values() for e in s))
    return names[len(names) // 2]


def _usage_series(loaded: dict) -> dict:
    """{"method (point)": episodes of that point, all seeds} for routing methods (not HP/LP-only)."""
    series = {}
    for m, pts in loaded.items():
        if m in (tables.WEAK, tables.STRONG):
            continue
        p = _representative(pts)
        series[f"{m} ({p})"] = [e for s in sorted(pts[p]["by_seed"]) for e in pts[p]["by_seed"][s]]
    return series


def _tensorboard(results: dict, directory: Path) -> bool:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return False
    w = SummaryWriter(str(directory))
    for m, pts in results["methods"].items():
        for p in pts.values():
            step = int(round(1000 * p["hp_ratio"]))  # x = HP ratio in per mille
            w.add_scalar(f"pareto/{m}/success_vs_hp_permille", p["success_mean"], step)
            w.add_scalar(f"pareto/{m}/score_vs_hp_permille", p["score_mean"], step)
    for m, t in results["tradeoff"].items():
        for k in ("apgr", "cpt50", "cpt80", "apgr_score"):
            if t.get(k) is not None and math.isfinite(t[k]):
                w.add_scalar(f"tradeoff/{m}/{k}", t[k], 0)
    c = results.get("causal")
    if c:
        for row, r in c.get("rows", {}).items():
            for arm in ("flagged", "unflagged"):
                if r[arm]["success"] is not None:
                    w.add_scalar(f"causal/{row}/{arm}/success", r[arm]["success"], 0)
    w.close()
    return True


def write(run_dir, n_boot: int = 2000, boot_seed: int = 0, tensorboard: bool = True) -> Path:
    """Write ``<run_dir>/report/{report.md, results.json, plots/*.png, tb/}``; return report.md's path."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory not found: {run_dir}")
    results = tables.summarise(run_dir, n_boot=n_boot, boot_seed=boot_seed)
    out = layout.report_dir(run_dir)
    pdir = out / "plots"
    pdir.mkdir(parents=True, exist_ok=True)
    loaded = layout.load_eval(run_dir)
    series = _usage_series(loaded)
    kl_dirs = [layout.point_dir(run_dir, "kl_oracle", p) for p in loaded.get("kl_oracle", {})]
    made = [
        plots.pareto(results, pdir / "pareto_hp_ratio.png", axis="hp"),
        plots.pareto(results, pdir / "pareto_cost.png", axis="cost") if results["reference"]["weak"]
        and results["reference"]["strong"] else None,
        plots.kl_hist(layout.load_kl_values(run_dir, kl_dirs), pdir / "kl_distribution.png"),
        plots.hp_by_step(series, pdir / "hp_by_step.png"),
        plots.hp_by_task_type(series, pdir / "hp_by_task_type.png"),
    ]
    made = [m for m in made if m]
    results["plots"] = made
    results["tensorboard"] = str(out / "tb") if tensorboard and _tensorboard(results, out / "tb") else None
    (out / "results.json").write_text(json.dumps(layout.json_safe(results), indent=1))
    note = layout.skip_note(run_dir, results)  # dmr report --skip-corrupt: what was skipped, in the header
    text = tables.markdown(results, made)
    if note:
        title, _, rest = text.partition("\n")
        text = f"{title}\n\n{note}\n{rest}"
        (out / "results.json").write_text(json.dumps(layout.json_safe(results), indent=1))
    report = out / "report.md"
    report.write_text(text)
    return report
