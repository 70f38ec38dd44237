"""Stage 1: train the router on KL-labelled steps (BCE through an RLlib LearnerGroup).

Labelled-steps file (written by ``dmr label``, read here): JSON Lines, one object per step, in a
single ``.jsonl`` file or a directory of ``*.jsonl`` shards. Fields:

==============  ========  ===========================================================
episode_id      str       the EpisodeRecord's id
step            int       step index within the episode (the router's step feature)
task            str       the task text (StepContext.task)
obs             str       the observation at this step (StepContext.obs)
history         list      [[action, observation], ...] before this step, oldest first
kl              float     KL(P_HP || P_LP) at this step (nats; >= 0)
label           int       1 = precision-sensitive (route HP), 0 = not
-- optional --
target          float     soft target in [0, 1] (used when sft.soft_targets; default: label)
admissible      list      admissible actions (kept for reference, not a router feature)
task_type       str       task family type
task_index      int       the task's index in its split (train/holdout split is by task: this, else ``task``)
tier            int       who acted while collecting (1 HP, 0 LP)
flip            int       1 where the tiers' greedy actions differ (held-out AUROC against it: auroc_flip)
lp_hidden       list      the LP model's last hidden state (needed when router.features=lp_hidden)
==============  ========  ===========================================================

:func:`step_row` builds one such object from an EpisodeRecord step; :func:`write_labelled_steps`
and :func:`read_labelled_steps` write and read (and validate) the file.

:func:`fit` splits by task (:func:`split_by_task`), weighs the positive class
(``sft.pos_weight``, by default negatives / positives of the training labels), trains for ``sft.epochs`` (each epoch one pass in minibatches of
``sft.batch_size``), evaluates on the held-out episodes (precision / recall at
``router.threshold`` and at the label rate, AUROC), logs TensorBoard scalars (sft/loss,
sft/auroc, sft/precision, sft/recall, time/...) and saves the router (``router.pt`` +
``router.json``) and ``sft_metrics.json`` to the output directory.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import numpy as np

from environments.errors import DataError

REQUIRED = {"episode_id": str, "step": int, "task": str, "obs": str, "history": list,
            "kl": (int, float), "label": int}


def step_row(episode, t: int, kl: float, label: int, target: Optional[float] = None,
             lp_hidden=None, flip: Optional[int] = None) -> dict:
    """The labelled-steps object for step ``t`` of an ``EpisodeRecord`` (``flip``: 1 where the tiers'
    greedy actions differ, kept so a router can be scored against the steps where routing changes
    the action)."""
    steps = episode.steps
    s = steps[t]
    row = {"episode_id": episode.episode_id, "step": int(s.step), "task": episode.task, "obs": s.obs,
           "history": [[steps[i].action, steps[i + 1].obs] for i in range(t)],
           "kl": float(kl), "label": int(label), "admissible": list(s.admissible),
           "task_type": episode.task_type, "task_index": int(episode.task_index), "tier": int(s.tier)}
    if target is not None:
        row["target"] = float(target)
    if flip is not None:
        row["flip"] = int(flip)
    if lp_hidden is not None:
        row["lp_hidden"] = [float(x) for x in np.asarray(lp_hidden).reshape(-1)]
    return row


def write_labelled_steps(path, rows) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return p


def _check_row(row, where: str) -> dict:
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object per line, got {type(row).__name__}")
    for name, tp in REQUIRED.items():
        if name not in row:
            raise DataError(f"{where}: missing field {name!r}")
        if not isinstance(row[name], tp) or isinstance(row[name], bool) and name != "label":
            raise DataError(f"{where}: field {name!r} has type {type(row[name]).__name__}")
    if row["label"] not in (0, 1):
        raise DataError(f"{where}: field 'label' must be 0 or 1, got {row['label']!r}")
    if not math.isfinite(row["kl"]) or row["kl"] < -1e-9:
        raise DataError(f"{where}: field 'kl' must be a finite value >= 0, got {row['kl']!r}")
    if "target" in row and not (isinstance(row["target"], (int, float)) and 0.0 <= row["target"] <= 1.0):
        raise DataError(f"{where}: field 'target' must be a number in [0, 1], got {row['target']!r}")
    return row


def read_labelled_steps(path) -> list:
    """All rows of a labelled-steps file or directory of shards, validated (DataError names the
    file, line and field)."""
    p = Path(path)
    if p.is_dir():
        files = sorted(p.glob("*.jsonl"))
        if not files:
            raise DataError(f"no *.jsonl labelled-steps files in {p}")
    elif p.is_file():
        files = [p]
    else:
        raise FileNotFoundError(f"labelled-steps file not found: {p}")
    rows = []
    for f in files:
        with open(f, encoding="utf-8") as fh:
            for i, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{f}:{i}: not valid JSON ({e.msg})") from None
                rows.append(_check_row(row, f"{f}:{i}"))
    if not rows:
        raise DataError(f"labelled-steps file(s) at {p} hold no steps")
    return rows


def _task_key(row: dict):
    """The task a labelled step belongs to: its ``task_index``, else its task text."""
    return ("index", int(row["task_index"])) if isinstance(row.get("task_index"), int) else ("text", row["task"])


def split_by_task(rows: list, holdout: float, seed: int = 0):
    """(train rows, holdout rows): whole TASKS go to one side (every episode and step of a held-out
    task), so a task replayed by several collected episodes, identical under a greedy agent on a
    deterministic environment, never sits on both sides; at least one task each when there are
    two or more tasks and ``holdout`` > 0."""
    tasks = sorted(set(_task_key(r) for r in rows), key=repr)
    rng = np.random.default_rng(seed)
    order = [tasks[i] for i in rng.permutation(len(tasks))]
    n_hold = int(round(holdout * len(order)))
    if holdout > 0 and len(order) >= 2:
        n_hold = min(max(n_hold, 1), len(order) - 1)
    held = set(order[:n_hold])
    return ([r for r in rows if _task_key(r) not in held], [r for r in rows if _task_key(r) in held])


def balance_pos_weight(targets, setting: float) -> float:
    """The BCE's positive-class weight: ``setting`` when > 0; 0 (auto): negatives / positives of
    ``targets`` [N] (targets >= 0.5 count as positive), 1.0 when either class is absent."""
    if setting > 0:
        return float(setting)
    y = np.asarray(targets, dtype=np.float64) >= 0.5
    pos, neg = int(y.sum()), int((~y).sum())
    return float(neg / pos) if pos and neg else 1.0


def annotate_router(directory, **facts) -> None:
    """Add training facts (``stage``, GRPO's ``hp_cost``...) to a saved router's ``router.json``,
    where evaluation reads them (the router itself ignores extra keys)."""
    path = Path(directory) / "router.json"
    meta = json.loads(path.read_text())
    meta.update(facts)
    path.write_text(json.dumps(meta, indent=1))


def row_features(extractor, rows: list) -> dict:
    """Router features of labelled-steps rows (``lp_hidden`` from the rows when the extractor reads it)."""
    from dmr_rl.step import StepContext
    from dmr_rl.router.features import features_in_chunks

    ctxs = [StepContext(task=r["task"], obs=r["obs"], history=[tuple(h) for h in r["history"]],
                        admissible=r.get("admissible", []), step=r["step"],
                        task_type=r.get("task_type", "")) for r in rows]
    hidden = [r["lp_hidden"] for r in rows] if getattr(extractor, "name", "") == "lp_hidden" else None
    return features_in_chunks(extractor, ctxs, lp_hidden=hidden)


def holdout_metrics(scores, labels, threshold: float) -> dict:
    """Metrics at ``threshold`` plus precision/recall at the label rate (top pos-rate share)."""
    from dmr_rl.algos.router_losses import classification_metrics

    m = classification_metrics(scores, labels, threshold=threshold)
    y = np.asarray(labels) >= 0.5
    k = int(y.sum())
    if 0 < k < len(y):
        top = np.zeros(len(y), dtype=bool)
        top[np.argsort(-np.asarray(scores), kind="stable")[:k]] = True
        m["precision_at_rate"] = m["recall_at_rate"] = float((top & y).sum() / k)
    return m


def fit(cfg, labelled_path, out_dir, *, log_dir: Optional[str] = None, learner_group=None,
        progress: bool = True, torch_threads: Optional[int] = 1, eval_every: int = 0) -> dict:
    """Train the stage-1 router. cfg: ``DMRConfig`` (uses cfg.router, cfg.sft, cfg.seed).

    learner_group: reuse one built by ``build_learner_group(..., "sft")`` (its weights are
    re-initialised from cfg.seed here). torch_threads: torch intra-op threads while training
    (1 is fastest on a shared 2-core box; None leaves torch's setting). eval_every: evaluate on
    the holdout every N epochs (0: ten times over the run). Returns a metrics dict.
    """
    import torch
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    from dmr_rl.algos.router_losses import auroc
    from dmr_rl.learners.router_learners import (build_learner_group, check_learner_group, make_batch,
                                                  reset_learner_group, router_weights, update_metrics)
    from dmr_rl.pipeline.timing import Timers
    from dmr_rl.router.transformer import TransformerRouter, net_config

    timers = Timers()
    sft = cfg.sft
    prev_threads = torch.get_num_threads()
    if torch_threads:
        torch.set_num_threads(torch_threads)
    try:
        with timers("load"):
            rows = read_labelled_steps(labelled_path)
            train_rows, hold_rows = split_by_task(rows, sft.holdout, seed=cfg.seed)
            if not train_rows:
                raise DataError(f"{labelled_path}: no training steps after the holdout split")
            overrides = {}
            if cfg.router.features == "lp_hidden":
                if "lp_hidden" not in rows[0]:
                    raise DataError(f"{labelled_path}: router.features=lp_hidden needs an 'lp_hidden' field per "
                                    "step; collect and label again with router.features=lp_hidden "
                                    "(collection then records the LP hidden state of every step)")
                overrides["hidden_dim"] = len(rows[0]["lp_hidden"])
            ncfg = net_config(cfg.router, **overrides)
            router = TransformerRouter(ncfg, threshold=cfg.router.threshold, seed=cfg.seed)
            train_x, hold_x = row_features(router.features, train_rows), None
            if "hidden" in train_x:
                router.net.set_hidden_stats(train_x["hidden"])
            if hold_rows:
                hold_x = row_features(router.features, hold_rows)
            if sft.soft_targets:
                targets = np.array([r.get("target", r["label"]) for r in train_rows], dtype=np.float32)
            else:
                targets = np.array([r["label"] for r in train_rows], dtype=np.float32)
            columns = dict(train_x, targets=targets, weights=np.ones(len(targets), np.float32))
            batch = make_batch(columns)
            pos_weight = balance_pos_weight(targets, sft.pos_weight)
        with timers("build_learners"):
            # (a LearnerGroup's truth value is its remote-learner count: test against None)
            if learner_group is not None:
                check_learner_group(learner_group, "sft", sft.lr, pos_weight=pos_weight)
                lg = learner_group
            else:
                lg = build_learner_group(ncfg, "sft", num_learners=sft.num_learners, lr=sft.lr,
                                         seed=cfg.seed, pos_weight=pos_weight)
            reset_learner_group(lg, router.get_weights())  # same start whether built or reused
        writer = SummaryWriter(log_dir) if log_dir else None
        every = eval_every or max(1, sft.epochs // 10)
        mb = min(sft.batch_size, len(targets))
        history, train_m, hold_m = [], {}, {}
        bar = tqdm(range(sft.epochs), desc="train sft", disable=not progress, leave=False)
        for epoch in bar:
            with timers("update"):
                train_m = update_metrics(lg.update(batch=batch, num_epochs=1, minibatch_size=mb,
                                                   shuffle_batch_per_epoch=True))
            if writer:
                writer.add_scalar("sft/loss", train_m.get("bce", float("nan")), epoch)
            if hold_x is not None and ((epoch + 1) % every == 0 or epoch + 1 == sft.epochs):
                with timers("eval"):
                    router.set_weights(router_weights(lg))
                    scores = 1.0 / (1.0 + np.exp(-router.logits_from_features(hold_x)))
                    hold_m = holdout_metrics(scores, [r["label"] for r in hold_rows], router.threshold)
                    if all("flip" in r for r in hold_rows):
                        hold_m["auroc_flip"] = auroc(scores, [r["flip"] for r in hold_rows])
                history.append({"epoch": epoch + 1, "loss": train_m.get("bce"), **hold_m})
                if writer:
                    for k in ("auroc", "precision", "recall"):
                        writer.add_scalar(f"sft/{k}", hold_m[k], epoch)
            bar.set_postfix(loss=f"{train_m.get('bce', float('nan')):.3f}",
                            auroc=f"{hold_m.get('auroc', float('nan')):.3f}")
        with timers("save"):
            router.set_weights(router_weights(lg))
            out = Path(out_dir)
            router.save(out)
            annotate_router(out, stage="sft")
        timers.log(writer, sft.epochs)
        result = {"holdout": hold_m, "train": train_m, "history": history,
                  "n_train_steps": len(train_rows), "n_holdout_steps": len(hold_rows),
                  "n_train_episodes": len({r["episode_id"] for r in train_rows}),
                  "n_holdout_episodes": len({r["episode_id"] for r in hold_rows}),
                  "n_train_tasks": len({_task_key(r) for r in train_rows}),
                  "n_holdout_tasks": len({_task_key(r) for r in hold_rows}), "pos_weight": pos_weight,
                  "label_rate": float(np.mean([r["label"] for r in rows])),
                  "epochs": sft.epochs, "router_dir": str(out), "time": timers.as_dict()}
        (out / "sft_metrics.json").write_text(json.dumps(result, indent=1, default=float))
        if writer:
            writer.close()
        return result
    finally:
        if torch_threads:
            torch.set_num_threads(prev_threads)
