"""Which LP layer's hidden state predicts the flips, and how cheaply? Linear probes on a run's steps.

The token router plateaus (AUROC ~0.79 against flips on runs/many's held-out tasks at 120
training tasks, ``router_task_curve.py``) and LP's own confidence needs LP's whole pass plus its
candidates. A pretrained backbone is already at hand: the LP model. This script reads, for every
labelled step of a run, the LP model's hidden state at the prompt's last token after decoder layer
k (``prompt_hidden(layer=k)``: the pass stops there, so layer k costs k / n_layers of an LP prompt
pass; 0 = the last layer after the final norm) and LP's confidence over the admissible actions,
then fits L2-regularised logistic probes (the penalty chosen by 4-fold cross-validation over
whole training tasks) on N training tasks and scores the same held-out tasks as
``router_task_curve.py`` (its split: ``--test-share`` of the tasks, ``--seed``). Printed per N and
layer: held-out AUROC against the flips with a task-clustered 95% CI and the HP share a threshold
needs to catch 80% of the flips. Vectors cached in ``<run_dir>/analysis/lp_layers.npz``; results
in ``<run_dir>/analysis/lp_layer_probes.json``.

    python experiments/lp_layer_probes.py runs/many --layers 4 8 0 --sizes 20 40 120
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import router_inputs as ri  # noqa: E402
import router_task_curve as rtc  # noqa: E402


def lp_step_features(cfg, rows: list, prompts: dict, layers: list, batch_size: int = 16) -> dict:
    """{"h<k>": [N, H] per layer, "unsure": [N]} for labelled-steps ``rows`` from their recorded prompts."""
    from tqdm import tqdm

    from dmr_rl.models.acting import action_logits
    from dmr_rl.pipeline.label import acting_rule
    from dmr_rl.serving import launcher
    from dmr_rl.serving.clients import torch_threads_set

    length_normalised, temperature = acting_rule(cfg)
    lp = launcher.create_tier_clients(cfg, ("lp",), local=True)["lp"]
    cols = {f"h{k}": [] for k in layers}
    cols["unsure"] = []
    with torch_threads_set(2), tqdm(total=len(rows), desc="LP layers + confidence", unit="step") as bar:
        for i in range(0, len(rows), batch_size):
            chunk = rows[i:i + batch_size]
            ps = [prompts[(r["episode_id"], int(r["step"]))] for r in chunk]
            for k in layers:
                cols[f"h{k}"] += [np.asarray(v, np.float32) for v in lp.prompt_hidden(ps, k)]
            for q in lp.score_actions(ps, [list(r["admissible"]) for r in chunk]):
                cols["unsure"].append(ri.lp_confidence(action_logits(q, length_normalised) / temperature)[0])
            bar.update(len(chunk))
    return {k: np.asarray(v) for k, v in cols.items()}


def fit_logistic(X: np.ndarray, y: np.ndarray, l2: float) -> tuple:
    """(w [D], b) minimising mean BCE + l2 * |w|^2 on standardised ``X`` [N, D] (L-BFGS)."""
    import torch

    Xt, yt = torch.tensor(X, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
    w = torch.zeros(X.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=300, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(Xt @ w + b, yt) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().numpy(), float(b.detach()[0])


def probe_scores(X, y, tasks, train, test, l2s=(1e-4, 1e-3, 1e-2, 1e-1), folds: int = 4, seed: int = 1) -> tuple:
    """Held-out logits of a probe trained on ``train`` rows, its L2 chosen by cross-validation over
    whole training tasks (AUROC against ``y``); returns (scores on ``test`` rows, chosen l2)."""
    from dmr_rl.algos.router_losses import auroc

    def fit_score(tr, te, l2):
        m, s = X[tr].mean(0), X[tr].std(0) + 1e-6
        w, b = fit_logistic((X[tr] - m) / s, y[tr], l2)
        return ((X[te] - m) / s) @ w + b

    keys = np.random.default_rng(seed).permutation(sorted(set(tasks[train].tolist())))
    fold_of = {t: i % folds for i, t in enumerate(keys)}
    fold = np.array([fold_of.get(t, -1) for t in tasks])
    best = max(l2s, key=lambda l2: auroc(np.concatenate([fit_score(train & (fold != f), train & (fold == f), l2)
                                                          for f in range(folds)]),
                                         np.concatenate([y[train & (fold == f)] for f in range(folds)])))
    return fit_score(train, test, best), best


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir")
    p.add_argument("--layers", type=int, nargs="+", default=[4, 8, 0], help="LP layers (0: the last)")
    p.add_argument("--sizes", type=int, nargs="+", default=[20, 40, 120], help="training tasks per point")
    p.add_argument("--test-share", type=float, default=0.25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    a = p.parse_args(argv)
    from attach_lp_hidden import recorded_prompts

    from dmr_rl.config import load_config
    from dmr_rl.pipeline.label import labels_path
    from dmr_rl.pipeline.train_sft import read_labelled_steps

    run_dir = Path(a.run_dir)
    cfg = load_config(str(run_dir / "config.yaml"), a.set)
    rows = read_labelled_steps(labels_path(run_dir))
    key = np.array([f"{r['episode_id']}:{r['step']}" for r in rows])
    cache = run_dir / "analysis" / "lp_layers.npz"
    feats = None
    if cache.is_file():
        with np.load(cache) as z:
            if z["key"].shape == key.shape and (z["key"] == key).all() and all(f"h{k}" in z for k in a.layers):
                feats = {k: z[k] for k in z.files if k != "key"}
    if feats is None:
        t0 = time.perf_counter()
        feats = lp_step_features(cfg, rows, recorded_prompts(run_dir), a.layers)
        print(f"LP features of {len(rows)} steps in {time.perf_counter() - t0:.0f} s")
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, key=key, **feats)
    tasks, flips = rtc.task_keys(rows), np.array([int(r["flip"]) for r in rows])
    test, pool = rtc.held_out_split(tasks, a.test_share, a.seed, a.sizes)  # router_task_curve's split
    n_test = len(set(tasks[test].tolist()))
    res = {"run_dir": str(run_dir), "test_tasks": int(n_test), "test_steps": int(test.sum()), "points": []}

    def add(name, n, layer, s, l2=None):
        r = ri.auroc_with_ci(s, flips[test], tasks[test], seed=a.seed)
        res["points"].append({"predictor": name, "train_tasks": n, "layer": layer, "l2": l2, "auroc": r["auroc"],
                              "ci": r["ci"], "hp_share_80": ri.hp_share_to_catch(s, flips[test])})

    add("LP confidence 1 - (p1 - p2), no training", 0, None, feats["unsure"][test])
    for n in a.sizes:
        train = rtc.train_draw(tasks, pool, n, a.seed)
        for k in a.layers:
            s, l2 = probe_scores(feats[f"h{k}"], flips, tasks, train, test)
            add(f"probe on LP layer {k or 'last'}", n, k, s, l2)
    out = run_dir / "analysis" / "lp_layer_probes.json"
    out.write_text(json.dumps(res, indent=1))
    print(f"\nheld out {n_test} tasks ({res['test_steps']} steps); AUROC against flips [95% CI, task-clustered]")
    print(f"{'predictor':>42} {'train tasks':>11} {'AUROC [95% CI]':>24} {'HP share for 80% of flips':>26}")
    for q in res["points"]:
        print(f"{q['predictor']:>42} {q['train_tasks']:>11} {q['auroc']:>8.3f} [{q['ci'][0]:.3f}, {q['ci'][1]:.3f}]"
              f"{q['hp_share_80']:>26.3f}")
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
