"""Add the LP model's hidden state at one layer to a run's labelled steps, for an ``lp_hidden`` router.

A run labelled with ``router.features=tokens`` has no ``lp_hidden`` field in its rows, and
collecting again with ``router.features=lp_hidden`` re-plays every episode. The prompts the agent
saw are in the run's recorded trajectories, so this script runs the LP tier's prompt pass (up to
``--layer``; 0 = the last layer, after the final norm) on each labelled step's recorded prompt, in
this process, and writes the rows again with ``lp_hidden`` (nothing else changes). Then:

    python experiments/attach_lp_hidden.py runs/many --layer 8 --out runs/many/labels_lp8/steps.jsonl
    dmr train sft --config experiments/many_tasks.yaml --labels runs/many/labels_lp8/steps.jsonl \
        --set router.features=lp_hidden --set router.hidden_layer=8 --set router.n_layers=0 \
        --out runs/many/router_probe8

Measured on runs/many's 2682 steps (2 cores, bf16 LP): ~4 minutes at layer 8.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def recorded_prompts(run_dir: Path) -> dict:
    """{(episode_id, step index): prompt} of the run's stage-1 collection."""
    from dmr_rl.pipeline.collect import collect_dir
    from dmr_rl.rollout.records import TrajectoryStore

    d = collect_dir(run_dir)
    if not Path(d).is_dir():
        raise FileNotFoundError(f"{d}: no recorded episodes (run dmr collect on {run_dir} first)")
    return {(e.episode_id, i): s.prompt for e in TrajectoryStore.read(d) for i, s in enumerate(e.steps)}


def attach(cfg, rows: list, prompts: dict, layer: int, batch_size: int = 16, threads: int = 2) -> list:
    """Copies of ``rows`` with ``lp_hidden``: the LP tier's hidden state of each row's recorded prompt."""
    import numpy as np
    from tqdm import tqdm

    from dmr_rl.serving import launcher
    from dmr_rl.serving.clients import torch_threads_set

    keys = [(r["episode_id"], int(r["step"])) for r in rows]
    missing = [k for k in keys if k not in prompts]
    if missing:
        raise KeyError(f"{len(missing)} labelled steps have no recorded prompt, e.g. {missing[0]} (labels and "
                       "trajectories of different runs?)")
    lp = launcher.create_tier_clients(cfg, ("lp",), local=True)["lp"]
    out = []
    with torch_threads_set(threads), tqdm(total=len(rows), desc=f"LP hidden, layer {layer}", unit="step") as bar:
        for i in range(0, len(rows), batch_size):
            chunk = rows[i:i + batch_size]
            vecs = lp.prompt_hidden([prompts[k] for k in keys[i:i + batch_size]], layer)
            out += [dict(r, lp_hidden=[round(float(x), 5) for x in np.asarray(v).reshape(-1)])
                    for r, v in zip(chunk, vecs)]
            bar.update(len(chunk))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", help="a run directory with labels/steps.jsonl, trajectories/collect and config.yaml")
    p.add_argument("--layer", type=int, default=0, help="LP decoder layer to read (0: the last, after the final norm)")
    p.add_argument("--labels", default="", help="labelled-steps file (default <run_dir>/labels/steps.jsonl)")
    p.add_argument("--out", required=True, help="where to write the rows with lp_hidden")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override the run's config (e.g. lp.model_path=...)")
    a = p.parse_args(argv)
    from dmr_rl.config import load_config
    from dmr_rl.pipeline.label import labels_path
    from dmr_rl.pipeline.train_sft import read_labelled_steps, write_labelled_steps

    run_dir = Path(a.run_dir)
    cfg = load_config(str(run_dir / "config.yaml"), a.set)
    rows = read_labelled_steps(a.labels or labels_path(run_dir))
    t0 = time.perf_counter()
    rows = attach(cfg, rows, recorded_prompts(run_dir), a.layer)
    write_labelled_steps(a.out, rows)
    print(f"{len(rows)} rows with lp_hidden (layer {a.layer}, size {len(rows[0]['lp_hidden'])}) in "
          f"{time.perf_counter() - t0:.0f} s -> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
