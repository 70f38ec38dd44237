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
the step (from the LP layer state recorded in ``RUN_DIR/labels/steps.jsonl``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BUCKETS = (("step 0", 0, 1), ("steps 1-4", 1, 5), ("steps 5+", 5, 10**9))


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


def _router_scores(run_dir: Path) -> dict:
    """{(episode id, step): the GRPO router's P(HP)} on the labelled steps (their recorded LP state)."""
    from dmr_rl.router.transformer import TransformerRouter
    from dmr_rl.step import StepContext

    rows = [json.loads(line) for line in (run_dir / "labels" / "steps.jsonl").read_text().splitlines() if line]
    router = TransformerRouter.load(run_dir / "router_grpo" / "router", num_threads=1)
    ctxs = [StepContext(task=r["task"], obs=r["obs"], history=[tuple(h) for h in r["history"]],
                        admissible=r["admissible"], step=r["step"], task_type=r.get("task_type", "")) for r in rows]
    hidden = [np.asarray(r["lp_hidden"], dtype=np.float32) for r in rows] if router.needs_lp_hidden else None
    z = np.concatenate([router.logits(ctxs[i:i + 256], None if hidden is None else hidden[i:i + 256])
                        for i in range(0, len(rows), 256)])
    p = 1.0 / (1.0 + np.exp(-z))
    return {(r["episode_id"], r["step"]): (float(pi), float(r["kl"]), float(r["label"])) for r, pi in zip(rows, p)}


def replay(run_dir: Path, config: str, max_episodes: int = 0, progress: bool = True) -> dict:
    from dmr_rl.config import load_config
    from dmr_rl.pipeline.causal import ForcedLPRouter
    from dmr_rl.rollout.records import TrajectoryStore
    from dmr_rl.serving import launcher

    cfg = load_config(config, [f"run_dir={run_dir}"])  # the preset the run was made with, at run_dir
    collected = sorted(TrajectoryStore.read(run_dir / "trajectories" / "collect"), key=lambda e: e.task_index)
    rounds, counts = flip_rounds(collected, max_episodes)
    by_task = {e.task_index: e for e in collected}
    scores = _router_scores(run_dir)
    launcher.ray_init(cfg.ray, cfg.run_dir)
    clients = launcher.create_tier_clients(cfg, ("hp", "lp"))
    group = launcher.create_rollout_group(cfg, clients, run_dir / "decisive" / "_worker_shards",
                                          split=cfg.env.train_split)
    flips = []
    try:
        for j, forced in enumerate(rounds):
            group.set_router(ForcedLPRouter({text: [step] for text, step in forced.values()}))
            eps = group.run_episodes(sorted(forced), "router", seed=0, return_episodes=True,
                                     rng_key=(int(cfg.seed), "decisive", f"round{j}"))["episode_records"]
            TrajectoryStore(run_dir / "decisive" / f"round{j}", "driver").append(eps)
            for ep in eps:
                step = forced[ep.task_index][1]
                ref = by_task[ep.task_index]
                p_hp, kl, label = scores.get((ref.episode_id, step), (np.nan, np.nan, np.nan))
                flips.append({"task": ep.task_index, "task_type": ep.task_type, "step": step,
                              "decisive": not ep.won, "kl": kl, "label": label, "p_hp": p_hp})
            if progress:
                print(f"round {j}: {len(eps)} replays, {sum(not e.won for e in eps)} lost", flush=True)
    finally:
        launcher.shutdown_all(group, clients)
    return {"run_dir": str(run_dir), **counts, **summarise(flips), "per_flip": flips}


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
    return out


if __name__ == "__main__":
    main()
