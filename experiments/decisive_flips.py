"""Which flips decide an episode: every HP-won collected episode replayed with LP forced at one flip.

    python experiments/decisive_flips.py RUN_DIR [--config experiments/default.yaml] [--max-episodes N] [--json]

A flip is a step where the tiers' greedy actions differ (the collected HP episodes in
``RUN_DIR/trajectories/collect`` were scored by both tiers at every step). On a deterministic
environment with a greedy agent, replaying an episode with HP everywhere but one flip step, LP
there (``causal.ForcedLPRouter``), shows whether that one LP action costs the task: the flip is
*decisive* when the replay loses. Replays run in rounds, each round forcing the next flip of every
episode (one forced step per replay). The script prints how many flips are decisive, by step
bucket and task type, and how well what stage 1 learns from ranks the decisive flips among all
flips (AUROC): the KL over the actions, the top-``rho`` KL label, and the GRPO router's P(HP) on
the step (from the LP layer state recorded in ``RUN_DIR/labels/steps.jsonl``); and, among all
labelled steps, whether a ridge probe on that LP state finds the decisive flips when trained on the
KL labels or on the decisive flips themselves (out of fold, by task). Rounds already played under
``RUN_DIR/decisive/`` are read, not played again.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import router_inputs as ri  # noqa: E402  (task_folds: whole tasks to a fold)
from divergence import BUCKETS  # noqa: E402  (the step buckets divergence.py reports flips by)


def flip_rounds(episodes, max_episodes: int = 0) -> tuple[list, dict]:
    """Rounds of forced flips: round j holds the j-th flip of every won episode, as
    {task_index: (task text, step)}. Episodes whose task text an earlier one had are skipped
    (ForcedLPRouter keys on the text). Returns (rounds, counts)."""
    rounds: list = []
    seen, counts = set(), {"episodes": len(episodes), "won": 0, "with_flips": 0, "duplicate_task": 0}
    for ep in episodes:
        if not ep.won:
            continue
        counts["won"] += 1
        if ep.task in seen:
            counts["duplicate_task"] += 1
            continue
        seen.add(ep.task)
        flips = [s.step for s in ep.steps if s.extra.get("tiers_agree") is False]
        if not flips:
            continue
        counts["with_flips"] += 1
        if max_episodes and counts["with_flips"] > max_episodes:
            break
        for j, step in enumerate(flips):
            if j == len(rounds):
                rounds.append({})
            rounds[j][int(ep.task_index)] = (ep.task, int(step))
    return rounds, counts


def summarise(flips: list) -> dict:
    """flips: dicts with ``decisive`` (bool), ``step``, ``task_type`` and scores ``kl``, ``label``,
    ``p_hp`` (nan where unknown). Decisive counts overall, by step bucket and task type, and the
    AUROC of each score for decisive among all flips."""
    from dmr_rl.algos.router_losses import auroc

    y = np.array([f["decisive"] for f in flips], dtype=bool)
    out = {"flips": len(flips), "decisive": int(y.sum()), "decisive_share": float(y.mean()) if flips else None}
    out["by_bucket"] = {name: {"flips": n, "decisive": d} for name, lo, hi in BUCKETS
                        for n, d in [(sum(lo <= f["step"] < hi for f in flips),
                                      sum(lo <= f["step"] < hi and f["decisive"] for f in flips))]}
    types = sorted({f["task_type"] for f in flips})
    out["by_task_type"] = {t: {"flips": sum(f["task_type"] == t for f in flips),
                               "decisive": sum(f["task_type"] == t and f["decisive"] for f in flips)} for t in types}
    out["auroc_decisive_among_flips"] = {}
    for key in ("kl", "label", "p_hp"):
        s = np.array([f[key] for f in flips], dtype=float)
        ok = np.isfinite(s)
        out["auroc_decisive_among_flips"][key] = auroc(s[ok], y[ok]) if ok.any() else float("nan")
    return out


def cv_probe_scores(x: np.ndarray, y: np.ndarray, groups: np.ndarray, folds: int = 5, alpha: float = 100.0) -> np.ndarray:
    """Out-of-fold scores of a ridge probe (standardised features, closed form) trained to predict
    ``y``: [N] scores for x [N, D], y [N] {0,1}, groups [N] (whole groups, e.g. tasks, per fold)."""
    x, y, groups = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64), np.asarray(groups)
    fold = ri.task_folds(groups, folds, seed=0)
    out = np.zeros(len(y))
    for f in range(folds):
        tr, te = fold != f, fold == f
        if not te.any():
            continue
        mu, sd = x[tr].mean(0), x[tr].std(0) + 1e-6
        a, b = (x[tr] - mu) / sd, (x[te] - mu) / sd
        w = np.linalg.solve(a.T @ a + alpha * np.eye(a.shape[1]), a.T @ (y[tr] - y[tr].mean()))
        out[te] = b @ w
    return out


def probe_comparison(rows: list, decisive: set) -> dict:
    """AUROC for decisive flips among all labelled steps: the same ridge probe on the recorded LP
    state trained (out of fold, by task) on the KL labels and on the decisive flips, and the KL.
    rows: labelled steps (``episode_id``, ``step``, ``label``, ``kl``, ``lp_hidden``, ``task_index``);
    decisive: {(episode id, step)}."""
    from dmr_rl.algos.router_losses import auroc

    x = np.array([r["lp_hidden"] for r in rows], dtype=np.float64)
    y = np.array([(r["episode_id"], r["step"]) in decisive for r in rows], dtype=float)
    groups = np.array([r["task_index"] for r in rows])
    kl_label = np.array([r["label"] for r in rows], dtype=float)
    return {"steps": len(rows), "decisive": int(y.sum()),
            "probe_on_kl_labels": auroc(cv_probe_scores(x, kl_label, groups), y),
            "probe_on_decisive": auroc(cv_probe_scores(x, y, groups), y),
            "kl": auroc(np.array([r["kl"] for r in rows], dtype=float), y)}


def _router_scores(run_dir: Path, rows: list) -> dict:
    """{(episode id, step): (the GRPO router's P(HP), KL, label)} on the labelled steps ``rows`` (from
    their recorded LP state)."""
    from dmr_rl.router.transformer import TransformerRouter
    from dmr_rl.step import StepContext

    router = TransformerRouter.load(run_dir / "router_grpo" / "router", num_threads=1)
    ctxs = [StepContext(task=r["task"], obs=r["obs"], history=[tuple(h) for h in r["history"]],
                        admissible=r["admissible"], step=r["step"], task_type=r.get("task_type", "")) for r in rows]
    hidden = [np.asarray(r["lp_hidden"], dtype=np.float32) for r in rows] if router.needs_lp_hidden else None
    z = np.concatenate([router.logits(ctxs[i:i + 256], None if hidden is None else hidden[i:i + 256])
                        for i in range(0, len(rows), 256)])
    p = 1.0 / (1.0 + np.exp(-z))
    return {(r["episode_id"], r["step"]): (float(pi), float(r["kl"]), float(r["label"])) for r, pi in zip(rows, p)}


def replay(run_dir: Path, config: str, max_episodes: int = 0, progress: bool = True) -> dict:
    """Play (or, where ``RUN_DIR/decisive/round<j>`` holds a round's replays already, read) every
    round; return the summary, the probe comparison and the per-flip rows."""
    from dmr_rl.config import load_config
    from dmr_rl.pipeline.causal import ForcedLPRouter
    from dmr_rl.rollout.records import TrajectoryStore
    from dmr_rl.serving import launcher

    cfg = load_config(config, [f"run_dir={run_dir}"])  # the preset the run was made with, at run_dir
    collected = sorted(TrajectoryStore.read(run_dir / "trajectories" / "collect"), key=lambda e: e.task_index)
    rounds, counts = flip_rounds(collected, max_episodes)
    by_task = {e.task_index: e for e in collected}
    rows = [json.loads(line) for line in (run_dir / "labels" / "steps.jsonl").read_text().splitlines() if line]
    scores = _router_scores(run_dir, rows)
    group = clients = None
    flips = []
    try:
        for j, forced in enumerate(rounds):
            out = run_dir / "decisive" / f"round{j}"
            eps = TrajectoryStore.read(out) if out.is_dir() else []
            if len(eps) != len(forced):
                if group is None:
                    launcher.ray_init(cfg.ray, cfg.run_dir)
                    clients = launcher.create_tier_clients(cfg, ("hp", "lp"))
                    group = launcher.create_rollout_group(cfg, clients, run_dir / "decisive" / "_worker_shards",
                                                          split=cfg.env.train_split)
                group.set_router(ForcedLPRouter({text: [step] for text, step in forced.values()}))
                eps = group.run_episodes(sorted(forced), "router", seed=0, return_episodes=True,
                                         rng_key=(int(cfg.seed), "decisive", f"round{j}"))["episode_records"]
                if out.exists():
                    shutil.rmtree(out)  # a partial earlier attempt
                TrajectoryStore(out, "driver").append(eps)
            for ep in eps:
                step = forced[ep.task_index][1]
                ref = by_task[ep.task_index]
                p_hp, kl, label = scores.get((ref.episode_id, step), (np.nan, np.nan, np.nan))
                flips.append({"task": ep.task_index, "episode_id": ref.episode_id, "task_type": ep.task_type,
                              "step": step, "decisive": not ep.won, "kl": kl, "label": label, "p_hp": p_hp})
            if progress:
                print(f"round {j}: {len(eps)} replays, {sum(not e.won for e in eps)} lost", flush=True)
    finally:
        if group is not None:
            launcher.shutdown_all(group, clients)
    decisive = {(f["episode_id"], f["step"]) for f in flips if f["decisive"]}
    return {"run_dir": str(run_dir), **counts, **summarise(flips),
            "among_all_steps": probe_comparison(rows, decisive), "per_flip": flips}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--config", default="experiments/default.yaml", help="the preset the run was made with")
    ap.add_argument("--max-episodes", type=int, default=0, help="only the first N won episodes with flips (0: all)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of lines")
    args = ap.parse_args(argv)
    out = replay(args.run_dir.resolve(), args.config, args.max_episodes, progress=not args.json)
    if args.json:
        print(json.dumps(out))
        return out
    print(f"{out['flips']} flips in {out['with_flips']} won HP episodes: {out['decisive']} decisive "
          f"({out['decisive_share']:.3f})")
    for name, r in out["by_bucket"].items():
        print(f"  {name}: {r['decisive']} of {r['flips']}")
    for name, r in out["by_task_type"].items():
        print(f"  {name}: {r['decisive']} of {r['flips']}")
    print("AUROC, decisive among flips: " + ", ".join(f"{k} {v:.3f}" for k, v in out["auroc_decisive_among_flips"].items()))
    a = out["among_all_steps"]
    print(f"AUROC, decisive flips among all {a['steps']} labelled steps: ridge probe on the LP state trained on the "
          f"KL labels {a['probe_on_kl_labels']:.3f}, on the decisive flips {a['probe_on_decisive']:.3f} (out of "
          f"fold, by task); the KL {a['kl']:.3f}")
    return out


if __name__ == "__main__":
    main()
