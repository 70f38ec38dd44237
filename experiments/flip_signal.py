"""Where does the flip signal live? Out-of-fold rankings of the flips on a run's collected episodes.

A flip is a step where the tiers' greedy actions differ (the steps routing can change). On the HP
episodes ``dmr run`` collects with both tiers scored (``collect.record_kl``, ``router.features:
lp_hidden``), every step holds LP's layer-k state, LP's max action probability and the flip. This
script fits the default's router kind, an L2 logistic probe on the standardised LP state
(``lp_layer_probes.fit_logistic``), out of fold: whole tasks to ``--folds`` folds, ``--seeds``
fold draws. Printed, for the probe trained on the KL labels (as stage 1 trains), on the flips
themselves, and for LP's own confidence (1 - max prob) and the KL: AUROC against the flips (seed
0's with a task-clustered CI, and the mean over draws); the share of the flips on the top 40% of
steps (task-weighted, as calibration counts); and, at the probe's bytes (``--lp-bytes-share``: LP's
weight bytes / HP's), the flip recall of the probe with an LP-confidence floor for each escalation
share (``dmr_rl.pipeline.escalation.choose_escalation``, the rule the evaluation calibrates).
Training data only: nothing here reads a validation or test split. Written to
``<run_dir>/analysis/flip_signal.json``.

    python experiments/flip_signal.py runs/default --lp-bytes-share 0.38

``--more-runs`` adds other runs' collected steps (other games: runs of another ``env.generate_seed``)
to every fold's training set, one run at a time, and prints the KL probe's held-out AUROC against
this run's flips per number of training tasks (this run's held-out folds stay the test).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import router_inputs as ri  # noqa: E402
from lp_layer_probes import fit_logistic  # noqa: E402


def collected_steps(run_dir: Path) -> dict:
    """[N] arrays over the collected steps: ``X`` [N, H] LP state, ``label`` (KL label), ``flip``,
    ``lp_max``, ``kl``, ``task``; a SystemExit names what the run lacks."""
    from dmr_rl.pipeline.label import labels_path
    from dmr_rl.rollout.records import TrajectoryStore

    episodes = TrajectoryStore.read(run_dir / "trajectories" / "collect")
    if not labels_path(run_dir).is_file():
        raise SystemExit(f"{labels_path(run_dir)}: no labelled steps (run `dmr label` first)")
    label = {(r["episode_id"], r["step"]): r["label"]
             for r in map(json.loads, labels_path(run_dir).read_text().splitlines())}
    steps = [(e, s) for e in episodes for s in e.steps]
    if not steps or any("lp_hidden" not in s.extra or "tiers_agree" not in s.extra for _, s in steps):
        raise SystemExit(f"{run_dir}: collected steps need LP's state and both tiers' actions "
                         "(collect.record_kl with router.features lp_hidden)")
    return {"X": np.array([s.extra["lp_hidden"] for _, s in steps], dtype=np.float32),
            "label": np.array([label[(e.episode_id, s.step)] for e, s in steps], dtype=float),
            "flip": np.array([not s.extra["tiers_agree"] for _, s in steps], dtype=int),
            "lp_max": np.array([s.extra["lp_max_prob"] for _, s in steps], dtype=float),
            "kl": np.array([s.kl for _, s in steps], dtype=float),
            "task": np.array([e.task_index for e, _ in steps], dtype=np.int64)}


def out_of_fold(X: np.ndarray, y: np.ndarray, tasks: np.ndarray, folds: int, seed: int, l2: float,
                more: tuple = ()) -> np.ndarray:
    """[N] held-out logits of the probe, each fold's tasks scored by a probe fitted on the others
    (and on ``more``: (X [M, H], y [M]) pairs of other games' steps, added to every fold's fit)."""
    fold = ri.task_folds(tasks, folds, seed)
    out = np.zeros(len(y))
    for f in range(folds):
        tr, te = fold != f, fold == f
        Xf, yf = np.vstack([X[tr], *(m[0] for m in more)]), np.concatenate([y[tr], *(m[1] for m in more)])
        m, s = Xf.mean(0), Xf.std(0) + 1e-6
        w, b = fit_logistic((Xf - m) / s, yf, l2)
        out[te] = ((X[te] - m) / s) @ w + b
    return out


def main(argv=None) -> dict:
    from dmr_rl.algos.router_losses import auroc
    from dmr_rl.pipeline.calibrate import task_index, weighted_threshold
    from dmr_rl.pipeline.escalation import choose_escalation

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--lp-bytes-share", type=float, required=True, help="LP's weight bytes / HP's (prices escalations)")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seeds", type=int, default=3, help="fold draws averaged")
    ap.add_argument("--l2", type=float, default=1e-2)
    ap.add_argument("--share", type=float, default=0.4, help="HP share of steps the coverage is read at")
    ap.add_argument("--more-runs", type=Path, nargs="*", default=[],
                    help="other runs (other games) whose collected steps join the KL probe's training folds, one "
                         "run more at a time: the probe's learning curve in training tasks")
    args = ap.parse_args(argv)
    d = collected_steps(args.run_dir)
    flip, tasks = d["flip"], d["task"]
    inverse, counts = task_index(tasks)
    weights = 1.0 / counts[inverse] / len(counts)

    def covered(score: np.ndarray) -> float:  # share of the flips on the top `share` of steps, task-weighted
        top = score >= weighted_threshold(score, weights, args.share)
        return float(flip[top].sum() / flip.sum())

    scores = {name: [out_of_fold(d["X"], y, tasks, args.folds, seed, args.l2) for seed in range(args.seeds)]
              for name, y in (("probe_kl_labels", d["label"]), ("probe_flip_labels", flip.astype(float)))}
    scores["lp_confidence"] = [1.0 - d["lp_max"]]
    scores["kl"] = [d["kl"]]
    out: dict = {"run_dir": str(args.run_dir), "steps": int(len(flip)), "flips": int(flip.sum()),
                 "tasks": int(len(counts)), "folds": args.folds, "seeds": args.seeds, "l2": args.l2, "rankings": {}}
    for name, per_seed in scores.items():
        out["rankings"][name] = {**ri.auroc_with_ci(per_seed[0], flip, tasks),
                                 "auroc_mean": float(np.mean([auroc(s, flip) for s in per_seed])),
                                 f"flips_on_top_{args.share:g}": float(np.mean([covered(s) for s in per_seed]))}
    if args.more_runs:
        more = [collected_steps(r) for r in args.more_runs]
        curve = []
        for k in range(len(more) + 1):
            fit_on = tuple((m["X"], m["label"]) for m in more[:k])
            per_seed = scores["probe_kl_labels"] if not k else [  # no run added: the KL probe above
                out_of_fold(d["X"], d["label"], tasks, args.folds, seed, args.l2, fit_on) for seed in range(args.seeds)]
            curve.append({"train_tasks": round(len(counts) * (1 - 1 / args.folds)) + sum(
                              len(set(m["task"].tolist())) for m in more[:k]),
                          "runs_added": [str(r) for r in args.more_runs[:k]],
                          "auroc_mean": float(np.mean([auroc(s, flip) for s in per_seed]))})
        out["probe_kl_labels_by_training_tasks"] = curve
    out["floor_at_the_probes_bytes"] = {
        "lp_bytes_share": args.lp_bytes_share,
        "flip_recall_by_escalation_share": {
            k: float(np.mean([choose_escalation(s, d["lp_max"], flip.astype(bool), tasks, args.share,
                                                [0.05, 0.1, 0.15, 0.2], args.lp_bytes_share)["candidates"][k]
                              for s in scores["probe_kl_labels"]]))
            for k in ("0", "0.05", "0.1", "0.15", "0.2")}}
    (args.run_dir / "analysis").mkdir(exist_ok=True)
    (args.run_dir / "analysis" / "flip_signal.json").write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
