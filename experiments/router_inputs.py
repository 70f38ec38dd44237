"""Which router inputs predict the steps where precision matters? An offline study on a run's steps.

Issue 13 item 4 asks, where the learned router does not beat random routing, to measure where it
falls short, including the router inputs tried. This script answers that on the steps a run
already recorded (stage-1 collection, and GRPO's rollouts with ``--with-grpo``), without new
episodes:

1. **Score** every recorded step with both tiers in this process (the prompt the agent saw, every
   admissible action): KL(HP || LP) over the actions, the *flip* (the tiers' greedy actions
   differ: at temperature 0 exactly the steps where routing to HP can change what happens), LP's
   own confidence (top-1 minus top-2 probability, entropy) and the LP model's last hidden state
   of the prompt. Cached in ``<run_dir>/analysis/router_inputs_steps.npz``.
2. **Predict** flips, cross-validated by task (``--folds`` groups of whole tasks; each fold
   trains on the others' steps and is scored on its own, so no task is on both sides), with
   a. the stage-1 router exactly as ``dmr train sft`` builds it (same network, recipe and RLlib
      Learner; ``--epochs`` overrides sft.epochs), on its default token features and on
      ``lp_hidden`` (tokens + LP hidden state), each trained on the run's label rule (top
      ``label.rho`` KL) and on the flips themselves (``label.kl_space=greedy_flip``);
   b. the LP tier's confidence alone (no training): 1 - (p1 - p2), and the entropy;
   c. the KL itself (needs both tiers at every step: the ceiling a one-tier router can approach).
3. **Report** out-of-fold AUROC against flips with a task-clustered bootstrap CI, the share of
   steps a router must send to HP to catch 80% of flips, and a learning curve (each router
   trained on half of its fold's training tasks) that says whether more labelled steps would
   help. Written to ``<run_dir>/analysis/router_inputs.json`` and printed as a table.

Run (idle machine; scoring ~1.5 s per step on 2 cores: both tiers and the LP hidden pass, once per
run directory, then ~9 minutes of cross-validation):

    python experiments/router_inputs.py runs/default --with-grpo
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def recorded_episodes(run_dir: Path, with_grpo: bool) -> list:
    """(source, EpisodeRecord) of every episode with steps: stage-1 collection, then GRPO's."""
    from dmr_rl.pipeline.collect import collect_dir
    from dmr_rl.rollout.records import TrajectoryStore

    sources = [("collect", collect_dir(run_dir))]
    if with_grpo:
        sources.append(("grpo", run_dir / "trajectories" / "grpo"))
    out = []
    for name, d in sources:
        if not Path(d).is_dir():
            raise FileNotFoundError(f"{d}: no recorded episodes (run the pipeline on {run_dir} first)")
        out += [(name, e) for e in TrajectoryStore.read(d) if e.steps]
    if not out:
        raise ValueError(f"{run_dir}: the recorded trajectories hold no steps")
    return out


def lp_confidence(logits: np.ndarray) -> tuple[float, float]:
    """(1 - (p1 - p2), entropy) of the softmax of [C] action logits; high = LP unsure."""
    from dmr_rl.models.acting import softmax

    p = softmax(logits)
    top = np.sort(p)[::-1]
    margin = top[0] - (top[1] if len(top) > 1 else 0.0)
    return float(1.0 - margin), float(-(p * np.log(np.clip(p, 1e-30, None))).sum())


def score_steps(cfg, steps: list, batch_size: int = 16) -> dict:
    """Per step: kl, flip, lp_unsure, lp_entropy [N] and lp_hidden [N, H], both tiers in process."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    from dmr_rl.models.acting import action_logits
    from dmr_rl.pipeline.label import action_kl_and_flip, acting_rule
    from dmr_rl.serving import launcher
    from dmr_rl.serving.clients import torch_threads_set

    length_normalised, temperature = acting_rule(cfg)
    clients = launcher.create_tier_clients(cfg, ("hp", "lp"), local=True)
    cols = {k: [] for k in ("kl", "flip", "lp_unsure", "lp_entropy", "lp_hidden")}
    with torch_threads_set(1), ThreadPoolExecutor(max_workers=2) as pool, \
            tqdm(total=len(steps), desc="score both tiers", unit="step") as bar:
        for start in range(0, len(steps), batch_size):
            chunk = steps[start:start + batch_size]
            prompts, cands = [s.prompt for s in chunk], [list(s.admissible) for s in chunk]
            hp = pool.submit(clients["hp"].score_actions, prompts, cands)
            lp = clients["lp"].score_actions(prompts, cands)
            cols["lp_hidden"] += [np.asarray(v, np.float32).reshape(-1) for v in clients["lp"].prompt_hidden(prompts)]
            for h, q in zip(hp.result(), lp):
                kl, flip = action_kl_and_flip(h, q, length_normalised, temperature)
                unsure, ent = lp_confidence(action_logits(q, length_normalised) / temperature)
                for k, v in (("kl", kl), ("flip", flip), ("lp_unsure", unsure), ("lp_entropy", ent)):
                    cols[k].append(v)
            bar.update(len(chunk))
    return {k: np.asarray(v) for k, v in cols.items()}


def load_or_score(cfg, run_dir: Path, with_grpo: bool) -> tuple[list, dict]:
    """The recorded (source, episode, t) index and its per-step scores (cached by step count)."""
    episodes = recorded_episodes(run_dir, with_grpo)
    index = [(src, e, t) for src, e in episodes for t in range(e.length)]
    cache = run_dir / "analysis" / "router_inputs_steps.npz"
    key = np.array([f"{e.episode_id}:{t}" for _, e, t in index])
    if cache.is_file():
        with np.load(cache) as z:
            if z["key"].shape == key.shape and (z["key"] == key).all():
                return index, {k: z[k] for k in z.files if k != "key"}
    t0 = time.perf_counter()
    scores = score_steps(cfg, [e.steps[t] for _, e, t in index])
    print(f"scored {len(index)} steps in {time.perf_counter() - t0:.0f} s")
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, key=key, **scores)
    return index, scores


# ---------------------------------------------------------------------------------------------
# Cross-validated prediction of flips
# ---------------------------------------------------------------------------------------------
def task_folds(tasks: np.ndarray, k: int, seed: int) -> np.ndarray:
    """[N] fold id in 0..k-1 of each step: whole tasks to a fold, tasks dealt in a random order."""
    keys = sorted(set(tasks.tolist()))
    if len(keys) < k:
        raise ValueError(f"{len(keys)} tasks cannot fill {k} folds")
    order = np.random.default_rng(seed).permutation(len(keys))
    fold_of = {keys[j]: i % k for i, j in enumerate(order)}
    return np.array([fold_of[t] for t in tasks.tolist()])


def auroc_with_ci(scores, flips, tasks, n_boot: int = 2000, seed: int = 0) -> dict:
    """AUROC of ``scores`` [N] against ``flips`` [N] and its task-clustered percentile bootstrap
    CI (whole tasks resampled with replacement; resamples with one class absent are skipped)."""
    from dmr_rl.algos.router_losses import auroc
    from dmr_rl.report.metrics import resample_weights

    s, y, t = np.asarray(scores, float), np.asarray(flips, int), np.asarray(tasks)
    keys = sorted(set(t.tolist()))
    members = [np.flatnonzero(t == k) for k in keys]
    boots = []
    for w in resample_weights(len(keys), n_boot, seed):
        idx = np.concatenate([np.tile(members[c], int(n)) for c, n in enumerate(w) if n])
        a = auroc(s[idx], y[idx])
        if np.isfinite(a):
            boots.append(a)
    lo, hi = np.quantile(boots, [0.025, 0.975]) if boots else (np.nan, np.nan)
    return {"auroc": auroc(s, y), "ci": [float(lo), float(hi)], "resamples": len(boots)}


def hp_share_to_catch(scores, flips, recall: float = 0.8) -> float:
    """The smallest share of steps, taken in order of decreasing score, holding ``recall`` of the
    flips: the HP share a threshold on this score needs to put that many flips on HP."""
    y = np.asarray(flips, int)[np.argsort(-np.asarray(scores, float), kind="stable")]
    need = recall * y.sum()
    return float((np.searchsorted(np.cumsum(y), need) + 1) / len(y)) if y.sum() else float("nan")


def fold_rows(index: list, scores: dict, labels: np.ndarray, mask: np.ndarray) -> list:
    """Labelled-steps rows (``train_sft.step_row``) of the masked steps with the given labels."""
    from dmr_rl.pipeline.train_sft import step_row

    return [step_row(e, t, float(scores["kl"][i]), int(labels[i]), lp_hidden=scores["lp_hidden"][i])
            for i, (_, e, t) in enumerate(index) if mask[i]]


def train_and_score(cfg, features: str, train_rows: list, test_rows: list, work: Path) -> np.ndarray:
    """Train the stage-1 router (``train_sft.fit``, no holdout) on ``train_rows`` with router
    features ``features`` and return its P(HP) on ``test_rows``."""
    from dmr_rl.pipeline.train_sft import fit, row_features, write_labelled_steps
    from dmr_rl.router.transformer import TransformerRouter

    c = copy.deepcopy(cfg)
    c.router.features, c.sft.holdout = features, 0.0
    path = write_labelled_steps(work / "train.jsonl", train_rows)
    fit(c, path, work / "router", progress=False)
    router = TransformerRouter.load(work / "router")
    return 1.0 / (1.0 + np.exp(-router.logits_from_features(row_features(router.features, test_rows))))


def fold_labels(rule: str, scores: dict, train: np.ndarray, label_cfg) -> np.ndarray:
    """[N] labels under ``rule`` ('kl': the run's label rule fitted on the training steps' KL;
    'flip': the greedy flips). Test-fold labels are never used for training."""
    from dmr_rl.algos.kl_labels import label_steps

    if rule == "flip":
        return scores["flip"].astype(int)
    _, _, cut = label_steps(scores["kl"][train], label_cfg.mode, label_cfg.rho, label_cfg.kl_threshold)
    return ((scores["kl"] >= cut) & (scores["kl"] > 0)).astype(int)


def cross_validate(cfg, index: list, scores: dict, folds: np.ndarray, epochs: int, seed: int) -> dict:
    """Out-of-fold P(HP) [N] per learned variant (features x label rule x training share)."""
    c = copy.deepcopy(cfg)
    c.sft.epochs = epochs
    tasks = np.array([e.task_index for _, e, _ in index])
    out = {}
    for features in ("tokens", "lp_hidden"):
        for rule in ("kl", "flip"):
            for share in (1.0, 0.5):
                name = f"router[{features}] on {rule} labels" + ("" if share == 1.0 else ", half the tasks")
                pred, t0 = np.full(len(index), np.nan), time.perf_counter()
                for f in range(folds.max() + 1):
                    test, train = folds == f, folds != f
                    if share < 1.0:  # half of the training tasks, the same half for every variant
                        keep = sorted(set(tasks[train].tolist()))
                        rng = np.random.default_rng(seed + f)
                        keep = set(rng.choice(keep, size=max(1, int(len(keep) * share)), replace=False).tolist())
                        train = train & np.isin(tasks, list(keep))
                    labels = fold_labels(rule, scores, train, cfg.label)
                    with tempfile.TemporaryDirectory() as tmp:
                        pred[test] = train_and_score(c, features, fold_rows(index, scores, labels, train),
                                                     fold_rows(index, scores, labels, test), Path(tmp))
                out[name] = pred
                print(f"  {name}: {time.perf_counter() - t0:.0f} s", flush=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", help="a run directory with recorded trajectories and config.yaml")
    p.add_argument("--with-grpo", action="store_true", help="also use GRPO's recorded rollouts")
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds (whole tasks)")
    p.add_argument("--epochs", type=int, default=0, help="stage-1 epochs (0: the run's sft.epochs)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    from dmr_rl.config import load_config

    run_dir = Path(a.run_dir)
    cfg = load_config(str(run_dir / "config.yaml"))
    index, scores = load_or_score(cfg, run_dir, a.with_grpo)
    tasks = np.array([e.task_index for _, e, _ in index])
    flips = scores["flip"].astype(int)
    folds = task_folds(tasks, a.folds, a.seed)
    predictors = {"LP unsure: 1 - (p1 - p2)": scores["lp_unsure"], "LP entropy": scores["lp_entropy"]}
    predictors.update(cross_validate(cfg, index, scores, folds, a.epochs or cfg.sft.epochs, a.seed))
    predictors["KL(HP||LP) (needs both tiers)"] = scores["kl"]
    rows = {}
    for name, s in predictors.items():
        rows[name] = dict(auroc_with_ci(s, flips, tasks, seed=a.seed), hp_share_80=hp_share_to_catch(s, flips))
    result = {"run_dir": str(run_dir), "steps": len(index), "tasks": len(set(tasks.tolist())),
              "episodes": len({e.episode_id for _, e, _ in index}), "flips": int(flips.sum()),
              "flip_rate": float(flips.mean()), "folds": a.folds, "epochs": a.epochs or cfg.sft.epochs,
              "sources": sorted({src for src, _, _ in index}), "predictors": rows}
    out = run_dir / "analysis" / "router_inputs.json"
    out.write_text(json.dumps(result, indent=1))
    print(f"\n{result['steps']} steps of {result['episodes']} episodes on {result['tasks']} tasks "
          f"({', '.join(result['sources'])}); greedy flips {result['flips']} ({100 * result['flip_rate']:.1f}%); "
          f"{a.folds}-fold cross-validation by task")
    print(f"{'predictor of flips':<48} {'AUROC':>6} {'95% CI (tasks)':>16} {'HP share for 80% of flips':>26}")
    for name, r in rows.items():
        print(f"{name:<48} {r['auroc']:6.3f}   [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}] {r['hp_share_80']:26.3f}")
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
