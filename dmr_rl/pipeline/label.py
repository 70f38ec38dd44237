"""``dmr label``: per-step KL(HP || LP) on the collected steps, then precision-sensitivity labels.

For every recorded step, both tiers are run on the prompt the agent saw (``StepRecord.prompt``):

- ``label.kl_space=actions``: KL between the two tiers' distributions over the admissible
  actions (score mode; ``dmr_rl.models.kl.action_kl``);
- ``label.kl_space=tokens``: teacher-forced on the action taken, the mean over its tokens of the
  next-token KL (``dmr_rl.models.kl.token_kl_batch``).

Labels come from :func:`dmr_rl.algos.kl_labels.label_steps`: ``label.mode=budget`` marks the top
``label.rho`` share of steps by KL (a step with KL 0 is never marked); ``threshold`` marks
KL >= ``label.kl_threshold``. Every row also carries the soft target of
:func:`dmr_rl.algos.kl_labels.soft_targets` (0.5 at the cut, on a log-KL scale), used when
``sft.soft_targets`` is on.

Output: ``<run_dir>/labels/steps.jsonl`` in the labelled-steps format of
:mod:`dmr_rl.pipeline.train_sft` (``step_row``), and ``<run_dir>/labels/label_stats.json``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np

from dmr_rl.algos.kl_labels import kl_summary, label_steps
from environments.errors import DataError


def labels_path(run_dir) -> Path:
    return Path(run_dir) / "labels" / "steps.jsonl"


def step_kls(clients: dict, steps: list, space: str, batch_size: int = 16, progress=None) -> np.ndarray:
    """[N] KL(HP || LP) for (StepRecord) ``steps``, both tiers batched ``batch_size`` steps a call."""
    from dmr_rl.models.kl import action_kl_batch, token_kl_batch

    out = np.zeros(len(steps))
    for start in range(0, len(steps), batch_size):
        chunk = steps[start:start + batch_size]
        prompts = [s.prompt for s in chunk]
        if space == "actions":
            adm = [list(s.admissible) for s in chunk]
            out[start:start + len(chunk)] = action_kl_batch(clients["hp"].score_actions(prompts, adm),
                                                            clients["lp"].score_actions(prompts, adm))
        elif space == "tokens":
            acts = [s.action for s in chunk]
            out[start:start + len(chunk)] = token_kl_batch(clients["hp"].token_distributions(prompts, acts),
                                                           clients["lp"].token_distributions(prompts, acts))[0]
        else:
            raise ValueError(f"unknown KL space {space!r}; known: actions, tokens")
        if progress:
            progress(len(chunk))
    return out


def run(cfg, traj_dir: Optional[str] = None, out_path: Optional[str] = None, local: bool = True,
        progress: bool = True, backend_specs: Optional[dict] = None, batch_size: int = 16,
        torch_threads: Optional[int] = 1) -> dict:
    """Label the steps of the trajectories in ``traj_dir`` (default: the collect directory).

    ``local``: tiers in this process (default; one batched pass) or Ray model servers.
    ``torch_threads``: intra-op threads for in-process tiers (1 is fastest on a shared 2-core box)."""
    from tqdm import tqdm

    from dmr_rl.pipeline.collect import collect_dir
    from dmr_rl.pipeline.timing import Timers
    from dmr_rl.pipeline.train_sft import step_row, write_labelled_steps
    from dmr_rl.rollout.records import TrajectoryStore
    from dmr_rl.serving import launcher
    from dmr_rl.serving.clients import torch_threads_set

    timers = Timers()
    lc = cfg.label
    src = Path(traj_dir) if traj_dir else collect_dir(cfg.run_dir)
    with timers("load"):
        episodes = [e for e in TrajectoryStore.read(src) if e.steps]
    if not episodes:
        raise DataError("no episode with steps to label (run `dmr collect` first)", path=str(src))
    index = [(e, t) for e in episodes for t in range(e.length)]
    steps = [e.steps[t] for e, t in index]
    missing = [i for i, s in enumerate(steps) if not s.prompt]
    if missing:
        raise DataError(f"{len(missing)} recorded steps have no prompt (field 'prompt'); first: "
                        f"episode {index[missing[0]][0].episode_id} step {index[missing[0]][1]}", path=str(src))
    clients = None
    try:
        with timers("start"):
            if not local:
                launcher.ray_init(cfg.ray, cfg.run_dir)
            clients = launcher.create_tier_clients(cfg, ("hp", "lp"), local=local, backend_specs=backend_specs)
        with timers("kl"), torch_threads_set(torch_threads if local else None), \
                tqdm(total=len(steps), desc=f"label (KL over {lc.kl_space})", unit="step",
                     disable=not progress, dynamic_ncols=True) as bar:
            kls = step_kls(clients, steps, lc.kl_space, batch_size, bar.update)
    finally:
        if clients and not local:
            launcher.shutdown_all(None, clients)
    with timers("write"):
        labels, targets, thr = label_steps(kls, lc.mode, lc.rho, lc.kl_threshold, soft=True)
        rows = [step_row(e, i, float(k), int(y), target=float(t), lp_hidden=e.steps[i].extra.get("lp_hidden"))
                for (e, i), k, y, t in zip(index, kls, labels, targets)]
        path = write_labelled_steps(out_path or labels_path(cfg.run_dir), rows)
    stats = {"labelled_steps": str(path), "trajectories": str(src), "episodes": len(episodes),
             "steps": len(steps), "positives": int(labels.sum()), "positive_rate": float(labels.mean()),
             "mode": lc.mode, "rho": lc.rho, "threshold": thr, "kl_space": lc.kl_space,
             "kl": kl_summary(kls), "timers_s": timers.as_dict()}
    (path.parent / "label_stats.json").write_text(json.dumps(stats, indent=1))
    timers.write_tensorboard(Path(cfg.run_dir) / "tb" / "label")
    return stats


def print_stats(s: dict) -> None:
    k = s["kl"]
    print(f"label: {s['steps']} steps of {s['episodes']} episodes -> {s['labelled_steps']}")
    print(f"  KL(HP||LP) over {s['kl_space']}: mean {k['mean']:.4f}  p50 {k['p50']:.4f}  p90 {k['p90']:.4f}  "
          f"p99 {k['p99']:.4f}  max {k['max']:.4f}  top-5% share {k['top5_share']:.3f}")
    print(f"  {s['mode']} labels: {s['positives']} positive ({100 * s['positive_rate']:.1f}%), "
          f"threshold {s['threshold']:.4g}   time: " + ", ".join(f"{n} {v:.1f}s" for n, v in s["timers_s"].items()))
