"""``dmr eval``: routers and baselines over the evaluation split, every seed, with Pareto sweeps.

One *operating point* is one router setting (a method and a knob value); each is run for every
seed in ``eval.seeds`` over the same task sample (paired comparison across methods):

* a learned router (one or more checkpoints: a stage-1 router, GRPO routers trained with
  different lambda) at every threshold in ``eval.thresholds``;
* each baseline in ``eval.baselines`` at each knob value of its sweep (``BASELINE_SWEEPS``,
  overridden by ``eval.baseline_sweeps``): random HP ratio, first-k k, cascade LP-confidence
  threshold, KL-oracle threshold; HP-only and LP-only once.

Episodes go to ``<run_dir>/eval/<method>/<point>/seed_<s>/`` (see :mod:`dmr_rl.report.layout`),
written on the driver as each (point, seed) finishes; a point whose seed directory already holds
all its episodes is skipped, so an interrupted evaluation resumes. The rollout workers also keep
their own durable shards in ``<run_dir>/eval/_worker_shards/``. At the end ``results.json``
(the report's numbers) is written to ``<run_dir>/eval/``.

Task sample: for seed s, ``eval.episodes`` task indices drawn by ``numpy.random.default_rng(s)``
from the split (without replacement while the split is large enough).
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from dmr_rl.report import layout

BASELINE_SWEEPS = {  # baseline -> (router kwarg, values, point-name format)
    "hp_only": (None, [None], "default"),
    "lp_only": (None, [None], "default"),
    "random": ("hp_ratio", [0.1, 0.25, 0.4, 0.6, 0.8], "ratio{:.2f}"),
    "first_k": ("k", [1, 2, 4, 8], "k{}"),
    "cascade": ("max_prob_threshold", [0.3, 0.5, 0.7, 0.9], "p{:.2f}"),
    "kl_oracle": ("kl_threshold", [0.02, 0.1, 0.3, 1.0], "kl{:g}"),
}
ROUTER_METHOD = "router"


@dataclass
class OperatingPoint:
    method: str  # the name in results ("router", "hp_only", "random", ...)
    point: str  # the knob setting ("t0.50", "ratio0.25", "default")
    spec: object  # what RolloutWorker.set_router takes: {"name", "kwargs"} or a Router instance
    params: dict = field(default_factory=dict)
    default: bool = False


def parse_router_ckpts(items) -> dict:
    """``["DIR", "NAME=DIR", ...]`` -> {method name: [dirs]}; a bare DIR goes to "router"."""
    out: dict = {}
    for item in items or []:
        name, _, path = item.rpartition("=") if "=" in item else ("", "", item)
        name = name or ROUTER_METHOD
        if not (Path(path) / "router.json").is_file():
            raise FileNotFoundError(f"--router-ckpt {item!r}: no router checkpoint (router.json) in {path}")
        out.setdefault(name, []).append(str(path))
    return out


def plan(cfg, router_ckpts: Optional[dict] = None, methods: Optional[list] = None) -> list:
    """The operating points to run, in order: baselines first (they anchor the curves), then routers."""
    wanted = list(methods) if methods else list(cfg.eval.baselines) + list(router_ckpts or {})
    points = []
    for name in wanted:
        if name in (router_ckpts or {}):
            continue
        if name not in BASELINE_SWEEPS:
            raise ValueError(f"unknown method {name!r}: not a baseline {sorted(BASELINE_SWEEPS)} "
                             f"and no --router-ckpt was given under that name")
        knob, values, fmt = BASELINE_SWEEPS[name]
        if name in cfg.eval.baseline_sweeps:
            values = list(cfg.eval.baseline_sweeps[name])
        for v in values:
            kwargs = {} if knob is None else {knob: v}
            points.append(OperatingPoint(name, fmt.format(v) if knob else fmt, {"name": name, "kwargs": kwargs},
                                         dict(kwargs)))
    for name, dirs in (router_ckpts or {}).items():
        if methods and name not in methods:
            continue
        labels = ckpt_labels(dirs)
        for d, label in zip(dirs, labels):
            meta = _ckpt_meta(d)
            prefix = f"{label}_" if len(dirs) > 1 else ""
            for t in cfg.eval.thresholds:
                params = {"checkpoint": str(d), "threshold": float(t), **meta}
                spec = {"name": "transformer", "kwargs": {"path": str(d), "threshold": float(t), "num_threads": 1}}
                points.append(OperatingPoint(name, f"{prefix}t{float(t):.2f}", spec, params,
                                             default=abs(float(t) - cfg.router.threshold) < 1e-9 and len(dirs) == 1))
    return points


def _ckpt_meta(directory) -> dict:
    """Training facts recorded beside a router checkpoint (GRPO's lambda and budget): keys of
    ``grpo.json`` / ``grpo_config.json`` / ``train_config.json``, or ``grpo.*`` of a run config
    ``config.yaml``, in the checkpoint directory or its parent."""
    out: dict = {}
    for base in (Path(directory), Path(directory).parent):
        for name in ("grpo.json", "grpo_config.json", "train_config.json", "config.yaml"):
            p = base / name
            if not p.is_file() or out:
                continue
            try:
                if name.endswith(".yaml"):
                    import yaml

                    d = (yaml.safe_load(p.read_text()) or {}).get("grpo", {})
                else:
                    d = json.loads(p.read_text())
            except Exception:  # an unreadable side file only loses the annotation
                continue
            if isinstance(d, dict):
                out.update({k: d[k] for k in ("hp_cost", "hp_budget", "stage", "iteration") if k in d})
    return out


def ckpt_labels(dirs: list) -> list:
    """Short distinct labels for checkpoint dirs: the shortest path suffix that tells them apart
    (``.../grpo_l0.3/router`` and ``.../grpo_l0.5/router`` -> ``grpo_l0.3-router``, ``grpo_l0.5-router``)."""
    parts = [Path(d).resolve().parts for d in dirs]
    for k in range(1, max(len(p) for p in parts) + 1):
        labels = ["-".join(p[-k:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [f"ckpt{i}" for i in range(len(dirs))]


def task_sample(num_tasks: int, episodes: int, seed: int) -> list:
    """``episodes`` task indices of a split of ``num_tasks`` for one seed (repeats only if needed)."""
    if num_tasks <= 0:
        raise ValueError("the evaluation split has no tasks")
    rng = np.random.default_rng(int(seed))
    if episodes <= num_tasks:
        return [int(t) for t in rng.choice(num_tasks, size=episodes, replace=False)]
    reps = -(-episodes // num_tasks)
    return [int(t) for t in np.concatenate([rng.permutation(num_tasks) for _ in range(reps)])[:episodes]]


def start_group(cfg, shard_dir=None):
    """Ray (local or ``ray.address``), both tiers' model servers and ``collect.num_workers``
    rollout workers on the evaluation split. Returns (group, clients); stop with :func:`stop_group`."""
    from dmr_rl.serving import launcher

    launcher.ray_init(cfg.ray, cfg.run_dir)
    clients = launcher.create_tier_clients(cfg, ("hp", "lp"))
    try:
        group = launcher.create_rollout_group(cfg, clients, shard_dir or layout.eval_dir(cfg.run_dir) / "_worker_shards",
                                              split=cfg.env.eval_split)
    except BaseException:
        launcher.shutdown_all(None, clients)
        raise
    return group, clients


def stop_group(group, clients) -> None:
    from dmr_rl.serving import launcher

    launcher.shutdown_all(group, clients)


def num_tasks_of(group) -> int:
    w = group.workers[0]
    if group.local:
        return int(w.ready()["num_tasks"])
    import ray

    return int(ray.get(w.ready.remote())["num_tasks"])


def run_point(group, point: OperatingPoint, tasks: list, seed: int, out_dir: Path) -> list:
    """Run one operating point for one seed over ``tasks``; write its episodes; return them."""
    from dmr_rl.rollout.records import TrajectoryStore

    group.set_router(point.spec)
    summary = group.run_episodes(tasks, "router", seed=seed, sample=False, return_episodes=True)
    episodes = summary["episode_records"]
    for ep in episodes:
        ep.method = point.method
        ep.extra["point"] = point.point
    if out_dir.exists():
        shutil.rmtree(out_dir)  # a partial earlier attempt
    TrajectoryStore(out_dir, "driver").append(episodes)
    return episodes


def _complete(out_dir: Path, n: int) -> bool:
    if not out_dir.is_dir():
        return False
    from dmr_rl.rollout.records import TrajectoryStore

    return len(TrajectoryStore.read(out_dir)) >= n


def run(cfg, router_ckpt=None, methods: Optional[list] = None, group=None, progress: bool = True) -> Path:
    """Evaluate and return the path of ``<run_dir>/eval/results.json``.

    ``router_ckpt``: a checkpoint directory, a list of them, or {method name: [dirs]} (several
    dirs under one name = one Pareto curve over their lambdas). ``methods``: restrict to these
    names (baselines and/or router names). ``group``: an existing RolloutGroup (tests, or the
    main job reusing its workers); otherwise Ray, the model servers and
    ``collect.num_workers`` rollout workers are started here and shut down at the end.
    """
    from tqdm import tqdm

    from dmr_rl.pipeline.timing import Timers
    from dmr_rl.report import tables

    if isinstance(router_ckpt, (str, Path)):
        router_ckpt = {ROUTER_METHOD: [str(router_ckpt)]}
    elif isinstance(router_ckpt, (list, tuple)):
        router_ckpt = parse_router_ckpts(router_ckpt)
    points = plan(cfg, router_ckpt or {}, methods)
    if not points:
        raise ValueError("nothing to evaluate: no baselines and no router checkpoint")
    run_dir = Path(cfg.run_dir)
    timers, own = Timers(), group is None
    clients = None
    if own:
        with timers("start"):
            group, clients = start_group(cfg)
    try:
        n_tasks = num_tasks_of(group)
        seeds = [int(s) for s in cfg.eval.seeds]
        samples = {s: task_sample(n_tasks, cfg.eval.episodes, s) for s in seeds}
        bar = tqdm(total=len(points) * len(seeds) * cfg.eval.episodes, desc="eval", unit="ep",
                   disable=not progress, dynamic_ncols=True)
        for p in points:
            layout.write_point_meta(run_dir, p.method, p.point, p.params, default=p.default)
            for s in seeds:
                out_dir = layout.seed_dir(layout.point_dir(run_dir, p.method, p.point), s)
                bar.set_postfix_str(f"{p.method}/{p.point} seed {s}")
                if not _complete(out_dir, len(samples[s])):
                    with timers(f"eval/{p.method}"):
                        run_point(group, p, samples[s], s, out_dir)
                bar.update(len(samples[s]))
        bar.close()
        with timers("summarise"):
            results = tables.summarise(run_dir, n_boot=cfg.eval.bootstrap, boot_seed=int(cfg.seed))
    finally:
        if own:
            stop_group(group, clients)
    results["timers_s"] = timers.as_dict()
    results["split"], results["episodes_per_seed"] = cfg.env.eval_split, cfg.eval.episodes
    from dmr_rl.report.writer import _json_safe

    path = layout.eval_dir(run_dir) / "results.json"
    path.write_text(json.dumps(_json_safe(results), indent=1))
    if progress:
        print(f"eval: {len(points)} operating points x {len(seeds)} seeds; {timers.summary()}; results in {path}")
    return path
