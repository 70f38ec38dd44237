"""``dmr collect``: play episodes of the train split and keep whole trajectories.

Who acts is ``collect.policy``: ``hp`` (default; the stage-1 labels are KL(HP || LP) on the
states the HP agent visits), ``lp``, or ``mixed`` (a random tier per step). ``record_kl=True``
also runs the other tier at every step and records the true per-step KL (paying both).

Trajectories go to ``<run_dir>/trajectories/collect/worker-<i>.jsonl`` (one durable shard per
rollout worker; an earlier collection there is moved to ``collect.old/``), and a summary to
``<run_dir>/trajectories/collect_summary.json``.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Optional

import numpy as np

TIERS_FOR = {"hp": ("hp",), "lp": ("lp",), "mixed": ("hp", "lp")}


def collect_dir(run_dir) -> Path:
    return Path(run_dir) / "trajectories" / "collect"


def task_order(num_tasks: int, episodes: int, seed: int) -> list:
    """``episodes`` task indices: shuffled passes over the split (each task once per pass)."""
    if num_tasks <= 0:
        raise ValueError("the collection split has no tasks")
    rng = np.random.default_rng(int(seed))
    passes = -(-episodes // num_tasks)
    return [int(t) for t in np.concatenate([rng.permutation(num_tasks) for _ in range(passes)])[:episodes]]


def _fresh_dir(out: Path) -> None:
    if out.is_dir() and any(out.glob("*.jsonl")):
        old = out.parent / (out.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        out.rename(old)
        print(f"collect: the previous collection was moved to {old}")
    out.mkdir(parents=True, exist_ok=True)


def run(cfg, local: bool = False, record_kl: Optional[bool] = None, progress: bool = True,
        backend_specs: Optional[dict] = None, torch_threads: Optional[int] = 1) -> dict:
    """Collect ``cfg.collect.episodes`` episodes; returns the summary (also written to disk).

    ``record_kl`` (None: ``cfg.collect.record_kl``): both tiers at every step, the KL and the
    greedy agreement recorded per step (what ``dmr label`` would otherwise score again).
    ``local``: in-process tiers and workers instead of Ray actors (``torch_threads`` intra-op
    threads for them; Ray actors use one each). ``backend_specs``: per tier a zero-argument
    Backend factory replacing the configured one (tests)."""
    from tqdm import tqdm

    from dmr_rl.pipeline.timing import Timers
    from dmr_rl.rollout.records import TrajectoryStore
    from dmr_rl.serving import launcher
    from dmr_rl.serving.clients import torch_threads_set

    timers = Timers()
    c = cfg.collect
    record_kl = c.record_kl if record_kl is None else bool(record_kl)
    out = collect_dir(cfg.run_dir)
    record_hidden = cfg.router.features == "lp_hidden"  # stage 1 of an lp_hidden router reads them
    tiers = ("hp", "lp") if record_kl or record_hidden else TIERS_FOR[c.policy]
    group = clients = None
    try:
        with timers("start"):
            if not local:
                launcher.ray_init(cfg.ray, cfg.run_dir)
            _fresh_dir(out)
            clients = launcher.create_tier_clients(cfg, tiers, local=local, backend_specs=backend_specs)
            group = launcher.create_rollout_group(cfg, clients, out, local=local, record_kl=record_kl,
                                                  record_hidden=record_hidden, hidden_layer=cfg.router.hidden_layer)
            num_tasks = group.num_tasks()
        tasks = task_order(num_tasks, c.episodes, c.seed)
        with timers("rollout"), torch_threads_set(torch_threads if local else None), \
                tqdm(total=len(tasks), desc=f"collect ({c.policy})", unit="ep", disable=not progress,
                     dynamic_ncols=True) as bar:
            summary = group.run_episodes(tasks, method=c.policy, seed=c.seed, sample=False,
                                         chunk=c.num_workers * c.envs_per_worker, progress=bar.update)
        with timers("cost"):
            summary["tier_cost"] = {t: _cost(cl) for t, cl in clients.items()}
    finally:
        launcher.shutdown_all(group, clients)
    episodes = TrajectoryStore.read(out)
    kls = np.array([s.kl for e in episodes for s in e.steps if s.kl is not None], dtype=np.float64)
    summary.update(policy=c.policy, trajectories=str(out), stored_episodes=len(episodes),
                   num_tasks=num_tasks, split=cfg.env.train_split, record_kl=record_kl, timers_s=timers.as_dict())
    if kls.size:
        from dmr_rl.algos.kl_labels import kl_summary

        summary["kl"] = kl_summary(kls)
    timers.write_tensorboard(Path(cfg.run_dir) / "tb" / "collect")
    path = out.parent / "collect_summary.json"
    path.write_text(json.dumps(summary, indent=1, default=float))
    summary["summary_path"] = str(path)
    return summary


def _cost(client) -> dict:
    snap = client.cost()
    return {k: snap.get(k) for k in ("calls", "prompt_tokens", "generated_tokens", "weight_bytes_read",
                                     "wall_time_s", "batches", "rows")}


def print_summary(s: dict) -> None:
    print(f"collect: {s['stored_episodes']} episodes ({s['steps']} steps) by policy={s['policy']} "
          f"on {s['split']} ({s['num_tasks']} tasks) -> {s['trajectories']}")
    print(f"  success {s['success_rate']:.3f}   mean score {s['mean_score']:.3f}   mean steps "
          f"{s['mean_steps']:.1f}   HP share {s['hp_ratio']:.3f}   "
          f"{1000 * s['timers_s'].get('rollout', 0) / max(1, s['steps']):.0f} ms/step")
    if "kl" in s:
        k = s["kl"]
        print(f"  KL(HP||LP) mean {k['mean']:.4f}  p50 {k['p50']:.4f}  p90 {k['p90']:.4f}  "
              f"p99 {k['p99']:.4f}  top-5% share {k['top5_share']:.3f}")
    print(f"  summary: {s['summary_path']}   time: " + ", ".join(f"{k} {v:.1f}s" for k, v in s["timers_s"].items()))
