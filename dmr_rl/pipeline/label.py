"""``dmr label``: per-step KL(HP || LP) on the collected steps, then precision-sensitivity labels.

For every recorded step, both tiers are run on the prompt the agent saw (``StepRecord.prompt``):

- ``label.kl_space=actions``: KL between the two tiers' distributions over the admissible
  actions (score mode), the distributions the agent acts from: action logits length-normalised
  when the agent's ``agent_config.json`` says so (as the rollout KL does), divided by the
  acting temperature when ``agent.temperature`` > 0; at temperature 0 (greedy acting) the KL is
  taken at temperature 1 (the greedy limit of a KL is 0 or infinite: ``greedy_flip`` is that
  limit);
- ``label.kl_space=greedy_flip``: a step is positive exactly where the two tiers' greedy
  (argmax) actions differ, the acting rule at temperature 0 (``label.mode`` / ``rho`` unused;
  the rows' ``kl`` still holds the actions KL, for the report's KL summary);
- ``label.kl_space=tokens``: teacher-forced on the action taken, the mean over its tokens of the
  next-token KL (``dmr_rl.models.kl.token_kl_batch``; temperature 1).

Labels come from :func:`dmr_rl.algos.kl_labels.label_steps`: ``label.mode=budget`` marks the top
``label.rho`` share of steps by KL (a step with KL 0 is never marked); ``threshold`` marks
KL >= ``label.kl_threshold``. Every row also carries the soft target of
:func:`dmr_rl.algos.kl_labels.soft_targets` (0.5 at the cut, on a log-KL scale), used when
``sft.soft_targets`` is on (greedy_flip: the flip itself).

When collection ran both tiers at every step (``collect.record_kl``), the KL over the actions and
the greedy flip it recorded are used instead of scoring again (greedy score-mode acting, where they
are the same quantities; ``label_stats.json``'s ``kl_source`` says which; ``--rescore`` scores).

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


SPACES = ("actions", "greedy_flip", "tokens")


def action_kl_and_flip(hp_scores, lp_scores, length_normalised: bool = False,
                       temperature: float = 1.0) -> tuple[float, int]:
    """One step's (KL(HP || LP) over the admissible actions at ``temperature``, 1 if the tiers'
    argmax actions differ else 0) from two ActionScores of the same candidates."""
    from dmr_rl.algos.kl_labels import kl_categorical
    from dmr_rl.models.acting import action_logits

    a, b = action_logits(hp_scores, length_normalised), action_logits(lp_scores, length_normalised)
    if a.shape != b.shape:
        raise ValueError(f"HP scored {a.shape[0]} actions, LP {b.shape[0]}: same candidates needed")
    if a.size == 0:
        return 0.0, 0
    return float(kl_categorical(a / temperature, b / temperature)), int(np.argmax(a) != np.argmax(b))


def step_scores(clients: dict, steps: list, space: str, batch_size: int = 16, progress=None,
                length_normalised: bool = False, temperature: float = 1.0) -> dict:
    """{"kl": [N] KL(HP || LP), "flip": [N] 1 where the tiers' greedy actions differ (action
    spaces only)} for (StepRecord) ``steps``, both tiers batched ``batch_size`` steps a call.

    The two tiers' calls on a batch run at the same time (one thread each: served tiers wait on
    their own model servers, in-process ones release the GIL inside torch), so labelling takes
    the slower tier's time, not the sum."""
    from concurrent.futures import ThreadPoolExecutor

    from dmr_rl.models.kl import token_kl_batch

    if space not in SPACES:
        raise ValueError(f"unknown KL space {space!r}; known: {', '.join(SPACES)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    kl, flip = np.zeros(len(steps)), np.zeros(len(steps), dtype=np.int64)
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="label") as pool:
        for start in range(0, len(steps), batch_size):
            chunk = steps[start:start + batch_size]
            prompts = [s.prompt for s in chunk]
            if space == "tokens":
                acts = [s.action for s in chunk]
                hp, lp = _both(pool, clients, "token_distributions", prompts, acts)
                kl[start:start + len(chunk)] = token_kl_batch(hp, lp)[0]
            else:
                hp, lp = _both(pool, clients, "score_actions", prompts, [list(s.admissible) for s in chunk])
                for i, (h, q) in enumerate(zip(hp, lp)):
                    kl[start + i], flip[start + i] = action_kl_and_flip(h, q, length_normalised, temperature)
            if progress:
                progress(len(chunk))
    return {"kl": kl, "flip": flip}


def _both(pool, clients: dict, method: str, *args) -> tuple:
    """(HP's, LP's) answer to ``clients[tier].method(*args)``, the two calls running concurrently."""
    futures = [pool.submit(getattr(clients[t], method), *args) for t in ("hp", "lp")]
    return tuple(f.result() for f in futures)


def step_kls(clients: dict, steps: list, space: str, batch_size: int = 16, progress=None,
             length_normalised: bool = False, temperature: float = 1.0) -> np.ndarray:
    """[N] KL(HP || LP) of :func:`step_scores`."""
    return step_scores(clients, steps, space, batch_size, progress, length_normalised, temperature)["kl"]


def recorded_scores(steps: list) -> Optional[dict]:
    """{"kl": [N], "flip": [N]} as collection recorded them (``collect.record_kl``: both tiers ran
    at every step; the KL over the admissible actions at temperature 1 and whether the greedy
    actions agreed), or None when a step lacks either."""
    if not steps or any(s.kl is None or "tiers_agree" not in s.extra for s in steps):
        return None
    return {"kl": np.array([float(s.kl) for s in steps]),
            "flip": np.array([0 if s.extra["tiers_agree"] else 1 for s in steps], dtype=np.int64)}


def acting_rule(cfg) -> tuple[bool, float]:
    """(length_normalised, KL temperature) the labels follow: the agent's own scoring rule (its
    ``agent_config.json``, as the rollout workers read it) and ``agent.temperature`` when it
    samples, else 1 (see the module docstring)."""
    from dmr_rl.models.agent import read_agent_config, tier_model_dir

    saved = read_agent_config(tier_model_dir(cfg, "hp"))
    t = float(cfg.agent.temperature)
    return bool(saved.get("length_normalised", False)), (t if t > 0 else 1.0)


def run(cfg, traj_dir: Optional[str] = None, out_path: Optional[str] = None, local: bool = True,
        progress: bool = True, backend_specs: Optional[dict] = None, batch_size: int = 16,
        torch_threads: Optional[int] = 1, rescore: bool = False) -> dict:
    """Label the steps of the trajectories in ``traj_dir`` (default: the collect directory).

    When collection recorded every step's KL and greedy agreement (``collect.record_kl``) and they
    are what this rule needs (score mode, greedy acting: KL at temperature 1, over the actions),
    the labels come from them and no tier is loaded; ``rescore`` scores every step anyway.
    ``local``: tiers in this process (default; one batched pass) or Ray model servers.
    ``torch_threads``: intra-op threads for in-process tiers (1 is fastest on a shared 2-core box)."""
    from dmr_rl.pipeline.collect import collect_dir
    from dmr_rl.pipeline.timing import Timers
    from dmr_rl.pipeline.train_sft import step_row, write_labelled_steps
    from dmr_rl.rollout.records import TrajectoryStore

    timers = Timers()
    lc = cfg.label
    src = Path(traj_dir) if traj_dir else collect_dir(cfg.run_dir)
    with timers("load"):
        episodes = [e for e in TrajectoryStore.read(src) if e.steps]
        length_normalised, temperature = acting_rule(cfg)
    if not episodes:
        raise DataError("no episode with steps to label (run `dmr collect` first)", path=str(src))
    index = [(e, t) for e in episodes for t in range(e.length)]
    steps = [e.steps[t] for e, t in index]
    missing = [i for i, s in enumerate(steps) if not s.prompt]
    if missing:
        raise DataError(f"{len(missing)} recorded steps have no prompt (field 'prompt'); first: "
                        f"episode {index[missing[0]][0].episode_id} step {index[missing[0]][1]}", path=str(src))
    usable = not rescore and lc.kl_space != "tokens" and cfg.agent.action_mode == "score" and cfg.agent.temperature == 0
    scored = recorded_scores(steps) if usable else None
    source = "recorded at collection"
    if scored is None:
        source = "scored"
        scored = _score_both_tiers(cfg, steps, timers, local, progress, backend_specs, batch_size, torch_threads,
                                   length_normalised, temperature)
    kls = scored["kl"]
    with timers("write"):
        if lc.kl_space == "greedy_flip":
            labels, targets, thr = scored["flip"], scored["flip"].astype(np.float64), None
        else:
            labels, targets, thr = label_steps(kls, lc.mode, lc.rho, lc.kl_threshold, soft=True)
        rows = [step_row(e, i, float(k), int(y), target=float(t), lp_hidden=e.steps[i].extra.get("lp_hidden"),
                         flip=int(f))
                for (e, i), k, y, t, f in zip(index, kls, labels, targets, scored["flip"])]
        path = write_labelled_steps(out_path or labels_path(cfg.run_dir), rows)
    stats = {"labelled_steps": str(path), "trajectories": str(src), "episodes": len(episodes),
             "steps": len(steps), "positives": int(labels.sum()), "positive_rate": float(labels.mean()),
             "mode": "greedy_flip" if lc.kl_space == "greedy_flip" else lc.mode, "rho": lc.rho,
             "threshold": thr, "kl_space": lc.kl_space, "length_normalised": length_normalised,
             "kl_temperature": temperature if lc.kl_space != "tokens" else 1.0,
             "greedy_flips": int(scored["flip"].sum()), "kl_source": source,
             "kl": kl_summary(kls), "timers_s": timers.as_dict()}
    (path.parent / "label_stats.json").write_text(json.dumps(stats, indent=1))
    timers.write_tensorboard(Path(cfg.run_dir) / "tb" / "label")
    return stats


def _score_both_tiers(cfg, steps, timers, local, progress, backend_specs, batch_size, torch_threads,
                      length_normalised, temperature) -> dict:
    """:func:`step_scores` of ``steps`` with both tiers started here (in process or as Ray servers)."""
    from tqdm import tqdm

    from dmr_rl.serving import launcher
    from dmr_rl.serving.clients import torch_threads_set

    clients = None
    try:
        with timers("start"):
            if not local:
                launcher.ray_init(cfg.ray, cfg.run_dir)
            clients = launcher.create_tier_clients(cfg, ("hp", "lp"), local=local, backend_specs=backend_specs)
        with timers("kl"), torch_threads_set(torch_threads if local else None), \
                tqdm(total=len(steps), desc=f"label (KL over {cfg.label.kl_space})", unit="step",
                     disable=not progress, dynamic_ncols=True) as bar:
            return step_scores(clients, steps, cfg.label.kl_space, batch_size, bar.update,
                               length_normalised=length_normalised, temperature=temperature)
    finally:
        if clients and not local:
            launcher.shutdown_all(None, clients)


def print_stats(s: dict) -> None:
    k = s["kl"]
    print(f"label: {s['steps']} steps of {s['episodes']} episodes -> {s['labelled_steps']}")
    space = "actions" if s["kl_space"] == "greedy_flip" else s["kl_space"]
    print(f"  KL(HP||LP) over {space} (temperature {s.get('kl_temperature', 1.0):g}, {s.get('kl_source', 'scored')}): "
          f"mean {k['mean']:.4f}  "
          f"p50 {k['p50']:.4f}  p90 {k['p90']:.4f}  p99 {k['p99']:.4f}  max {k['max']:.4f}  "
          f"top-5% share {k['top5_share']:.3f}")
    print(f"  {s['mode']} labels: {s['positives']} positive ({100 * s['positive_rate']:.1f}%), "
          + (f"threshold {s['threshold']:.4g}" if s["threshold"] is not None else "where the greedy actions differ")
          + "   time: " + ", ".join(f"{n} {v:.1f}s" for n, v in s["timers_s"].items()))
