"""PNG plots of a run (matplotlib, Agg backend): Pareto curves, KL distribution, HP use.

Each function takes already-summarised numbers (or episodes) and a path, writes one PNG and
returns its file name, or None when there is nothing to draw.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Optional

import numpy as np

from dmr_rl.report import metrics as M

MARKERS = {"hp_only": "*", "lp_only": "X"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def pareto(results: dict, path, axis: str = "hp") -> Optional[str]:
    """Success vs HP ratio (axis='hp') or vs normalised cost (axis='cost'); 95% CIs as error bars,
    each method's measured points joined in HP-ratio order (no envelope), HP-only and LP-only as
    large markers."""
    plt = _plt()
    key = "hp_ratio" if axis == "hp" else "cost_norm"
    fig, ax = plt.subplots(figsize=(7, 4.8))
    drawn = False
    for i, (m, pts) in enumerate(results["methods"].items()):
        items = [p for p in pts.values() if p.get(key) is not None and not np.isnan(p.get(key, np.nan))]
        if not items:
            continue
        items.sort(key=lambda p: p[key])
        x = np.array([p[key] for p in items])
        y = np.array([p["success_mean"] for p in items])
        err = np.array([[y[j] - p["success_ci"][0], p["success_ci"][1] - y[j]] for j, p in enumerate(items)]).T
        color = f"C{i % 10}"
        if m in MARKERS:
            ax.errorbar(x, y, yerr=err, fmt=MARKERS[m], ms=13, color=color, label=m, capsize=3, zorder=3)
            ax.axhline(y[0], color=color, ls=":", lw=1, alpha=0.7)
            continue
        ax.errorbar(x, y, yerr=err, fmt="o", ms=5, color=color, alpha=0.55, capsize=2)
        ax.plot(x, y, "-o", color=color, label=m, ms=5)
        drawn = True
    if not drawn and not ax.lines:
        plt.close(fig)
        return None
    ax.set_xlabel("HP ratio (share of steps on the high-precision model)" if axis == "hp"
                  else "normalised cost (0 = LP-only, 1 = HP-only weight bytes)")
    ax.set_ylabel("success rate")
    ax.set_title("Success vs " + ("HP ratio" if axis == "hp" else "cost") + " (95% bootstrap CIs)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path).name


def kl_hist(values, path) -> Optional[str]:
    """Histogram of per-step KL(HP || LP) on a log x-axis, with the top-5% cut marked."""
    if not values:
        return None
    plt = _plt()
    kl = np.asarray(values, dtype=float)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    pos = kl[kl > 0]
    floor = pos.min() if pos.size else 1e-6
    bins = np.logspace(np.log10(floor), np.log10(max(kl.max(), floor * 10)), 40)
    ax.hist(np.clip(kl, floor, None), bins=bins, color="C0", alpha=0.8)
    ax.set_xscale("log")
    cut = np.quantile(kl, 0.95)
    ax.axvline(cut, color="C3", ls="--", label=f"95th percentile = {cut:.3g}")
    ax.set_xlabel("per-step KL(HP || LP) (nats, log scale)")
    ax.set_ylabel("steps")
    ax.set_title(f"Per-step KL over {kl.size} steps (mean {kl.mean():.3g})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path).name


def hp_by_step(series: dict, path) -> Optional[str]:
    """HP share at each step index. ``series``: {label: [EpisodeRecord]}."""
    if not series:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, (label, eps) in enumerate(series.items()):
        hp, n = defaultdict(int), defaultdict(int)
        for ep in eps:
            for s in ep.steps:
                hp[s.step] += s.tier == M.HP
                n[s.step] += 1
        steps = sorted(k for k in n if n[k] >= 3)  # skip indices reached by fewer than 3 episodes
        if not steps:
            continue
        ax.plot(steps, [hp[k] / n[k] for k in steps], "-o", ms=3, color=f"C{i % 10}", label=label)
    ax.set_xlabel("step index in the episode")
    ax.set_ylabel("share of steps routed to HP")
    ax.set_ylim(-0.03, 1.03)
    ax.set_title("HP use by step index (indices reached by >= 3 episodes)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path).name


def hp_by_task_type(series: dict, path) -> Optional[str]:
    """Grouped bars: HP share of steps per task type. ``series``: {label: [EpisodeRecord]}."""
    if not series:
        return None
    plt = _plt()
    types = sorted({ep.task_type for eps in series.values() for ep in eps})
    if not types:
        return None
    fig, ax = plt.subplots(figsize=(max(7, 1.3 * len(types)), 4.6))
    width = 0.8 / len(series)
    for i, (label, eps) in enumerate(series.items()):
        vals = []
        for t in types:
            steps = [s for ep in eps if ep.task_type == t for s in ep.steps]
            vals.append(sum(s.tier == M.HP for s in steps) / len(steps) if steps else 0.0)
        ax.bar(np.arange(len(types)) + i * width - 0.4 + width / 2, vals, width, label=label, color=f"C{i % 10}")
    ax.set_xticks(np.arange(len(types)))
    ax.set_xticklabels([t.replace("_", " ") for t in types], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("share of steps routed to HP")
    ax.set_ylim(0, 1.05)
    ax.set_title("HP use by task type")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path).name
