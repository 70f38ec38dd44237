"""Does the stage-1 router improve with more training tasks? A learning curve on a run's labelled steps.

The default run's router learns from 16 HP episodes on 20 training tasks and ranks new tasks'
flips (the steps where the tiers' greedy actions differ) with AUROC ~0.66 out of fold
(``router_inputs.py``). This script asks whether that is a data limit: on a run collected over
many training tasks (``dmr collect`` + ``dmr label``; labelled rows carry ``kl`` and ``flip``), it
holds out a fixed set of whole tasks, trains the stage-1 router exactly as ``dmr train sft`` does
(``router_inputs.train_and_score``: same network, recipe, RLlib Learner) on the steps of the first
N other tasks, for each N in ``--sizes`` and ``--repeats`` draws of those N tasks, and scores the
held-out steps. Labels follow the run's rule (``label.mode``/``label.rho`` fitted on the training
steps' KL only). Printed per N: held-out AUROC against the KL labels and against the flips, each
with a task-clustered 95% CI (pooled over repeats: the mean of the repeats' scores), and the share
of steps a threshold must send to HP to catch 80% of the flips. Written to
``<run_dir>/analysis/router_task_curve.json``.

    python experiments/router_task_curve.py runs/many --sizes 10 20 40 80 --repeats 2
    python experiments/router_task_curve.py runs/many --sizes 120 --set router.d_model=128   # a recipe at one size
    python experiments/router_task_curve.py runs/many --sizes 120 --labels flip             # trained on the flips
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import router_inputs as ri  # noqa: E402


def task_keys(rows: list) -> np.ndarray:
    """[N] the task of each row (its index in the split)."""
    return np.array([int(r["task_index"]) for r in rows])


def relabel(rows: list, train: np.ndarray, label_cfg, rule: str = "kl") -> list:
    """Copies of ``rows`` labelled by the run's rule with the KL cut fitted on the ``train`` rows only
    (``rule="flip"``: the flips themselves), as ``router_inputs.fold_labels`` labels its folds."""
    scores = {"kl": np.array([r["kl"] for r in rows]), "flip": np.array([int(r.get("flip", 0)) for r in rows])}
    labels = ri.fold_labels(rule, scores, train, label_cfg)
    return [dict(r, label=int(y), target=float(y)) for r, y in zip(rows, labels)]


def held_out_split(tasks: np.ndarray, test_share: float, seed: int, sizes: list) -> tuple:
    """(test [N] bool over the steps, pool of task keys): ``test_share`` of the tasks (at least 2), in a
    seeded order, held out; training draws come from the rest, which must hold ``max(sizes)`` tasks."""
    keys = np.array(sorted(set(tasks.tolist())))
    order = np.random.default_rng(seed).permutation(keys)
    n_test = max(2, int(round(test_share * len(keys))))
    pool = order[n_test:]
    if max(sizes) > len(pool):
        raise ValueError(f"--sizes up to {max(sizes)} training tasks, but only {len(pool)} are left after holding "
                         f"out {n_test} of {len(keys)}")
    return np.isin(tasks, order[:n_test]), pool


def train_draw(tasks: np.ndarray, pool: np.ndarray, n: int, seed: int, draw: int = 0) -> np.ndarray:
    """[N] bool: the steps of ``n`` tasks drawn from ``pool`` (draw number ``draw`` of size ``n``)."""
    return np.isin(tasks, np.random.default_rng([seed, n, draw]).choice(pool, size=n, replace=False))


def curve(cfg, rows: list, sizes: list, repeats: int, test_share: float, seed: int, rule: str = "kl") -> dict:
    """{N: {"auroc_label", "auroc_flip" (each with a CI), "hp_share_80", "train_steps"}} for the
    held-out tasks, the scores of each N averaged over ``repeats`` draws of its training tasks."""
    tasks = task_keys(rows)
    test, pool = held_out_split(tasks, test_share, seed, sizes)
    n_test = len(set(tasks[test].tolist()))
    flips = np.array([int(r["flip"]) for r in rows])
    out = {}
    for n in sizes:
        preds, labels, t0, n_steps = [], None, time.perf_counter(), []
        for r in range(repeats):
            train = train_draw(tasks, pool, n, seed, r)
            lab = relabel(rows, train, cfg.label, rule)
            labels = np.array([x["label"] for x in lab])[test]  # the test labels' cut moves a little per draw
            with tempfile.TemporaryDirectory() as tmp:
                preds.append(ri.train_and_score(cfg, "tokens", [x for x, m in zip(lab, train) if m],
                                                [x for x, m in zip(lab, test) if m], Path(tmp)))
            n_steps.append(int(train.sum()))
        p = np.mean(preds, axis=0)
        out[n] = {"train_tasks": n, "train_steps": float(np.mean(n_steps)),
                  "auroc_label": ri.auroc_with_ci(p, labels, tasks[test], seed=seed),
                  "auroc_flip": ri.auroc_with_ci(p, flips[test], tasks[test], seed=seed),
                  "hp_share_80": ri.hp_share_to_catch(p, flips[test]), "seconds": time.perf_counter() - t0}
        print(f"  N={n}: {time.perf_counter() - t0:.0f} s", flush=True)
    return {"test_tasks": int(n_test), "test_steps": int(test.sum()), "test_flip_rate": float(flips[test].mean()),
            "pool_tasks": int(len(pool)), "repeats": repeats, "curve": out}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", help="a run directory with labels/steps.jsonl (rows with 'flip') and config.yaml")
    p.add_argument("--sizes", type=int, nargs="+", default=[10, 20, 40, 80], help="training tasks per point")
    p.add_argument("--repeats", type=int, default=2, help="draws of the training tasks per size")
    p.add_argument("--test-share", type=float, default=0.25, help="share of tasks held out (fixed for all sizes)")
    p.add_argument("--epochs", type=int, default=0, help="stage-1 epochs (0: the run's sft.epochs)")
    p.add_argument("--labels", choices=("kl", "flip"), default="kl", help="train on the run's KL rule or on the flips")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override the run's config (router.d_model=128, sft.lr=1e-3, label.rho=0.4, ...)")
    p.add_argument("--out", default="", help="result file (default <run_dir>/analysis/router_task_curve.json)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    from dmr_rl.config import load_config
    from dmr_rl.pipeline.label import labels_path
    from dmr_rl.pipeline.train_sft import read_labelled_steps

    run_dir = Path(a.run_dir)
    cfg = load_config(str(run_dir / "config.yaml"), a.set)
    if a.epochs:
        cfg.sft.epochs = a.epochs
    rows = read_labelled_steps(labels_path(run_dir))
    if any("flip" not in r for r in rows):
        raise SystemExit(f"{labels_path(run_dir)}: rows without 'flip' (labelled before flips were kept); "
                         "run `dmr label` again on this run")
    res = dict(run_dir=str(run_dir), steps=len(rows), tasks=len(set(task_keys(rows).tolist())),
               epochs=cfg.sft.epochs, labels=a.labels, overrides=a.set,
               **curve(cfg, rows, a.sizes, a.repeats, a.test_share, a.seed, a.labels))
    out = Path(a.out) if a.out else run_dir / "analysis" / "router_task_curve.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print(f"\n{res['steps']} labelled steps on {res['tasks']} tasks; held out {res['test_tasks']} tasks "
          f"({res['test_steps']} steps, flips {100 * res['test_flip_rate']:.1f}%); {a.repeats} draws per size")
    print(f"{'train tasks':>11} {'steps':>7} {'AUROC vs labels [95% CI]':>28} {'AUROC vs flips [95% CI]':>28} "
          f"{'HP share for 80% of flips':>26}")
    for n, r in res["curve"].items():
        lab, fl = r["auroc_label"], r["auroc_flip"]
        print(f"{n:>11} {r['train_steps']:>7.0f} {lab['auroc']:>8.3f} [{lab['ci'][0]:.3f}, {lab['ci'][1]:.3f}]"
              f"{'':>4}{fl['auroc']:>8.3f} [{fl['ci'][0]:.3f}, {fl['ci'][1]:.3f}]{'':>4}{r['hp_share_80']:>22.3f}")
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
