"""``dmr collect``, ``dmr label``, ``dmr train sft``, ``dmr train grpo``: the router's two stages.

Each reads one typed config (``--config experiments/*.yaml``, ``--set section.field=value``) and
calls one driver in ``dmr_rl.pipeline``. Default locations under ``run_dir``:
``trajectories/collect/`` -> ``labels/steps.jsonl`` -> ``router_sft/`` -> ``router_grpo/``,
TensorBoard under ``tb/``.
"""
from __future__ import annotations

import json
from pathlib import Path


def register(sub, groups) -> None:
    from dmr_rl.cli import add_config_args

    c = sub.add_parser("collect", help="collect trajectories with the HP agent (or lp / mixed: collect.policy)")
    add_config_args(c)
    c.add_argument("--local", action="store_true", help="in-process tiers and workers (no Ray actors)")
    c.add_argument("--record-kl", action="store_true",
                   help="also run the other tier at every step and record the true per-step KL "
                        "(collect.record_kl=true; dmr label then labels from it)")
    c.add_argument("--no-progress", action="store_true")
    c.set_defaults(func=_collect)

    lab = sub.add_parser("label", help="per-step KL(HP||LP) on the collected steps, then budget/threshold labels")
    add_config_args(lab)
    lab.add_argument("--trajectories", default=None, help="directory of shards (default <run_dir>/trajectories/collect)")
    lab.add_argument("--out", default=None, help="labelled-steps file (default <run_dir>/labels/steps.jsonl)")
    lab.add_argument("--ray", action="store_true", help="serve the tiers through Ray model servers")
    lab.add_argument("--batch-size", type=int, default=16, help="steps per backend call")
    lab.add_argument("--rescore", action="store_true",
                     help="score every step with both tiers even where collection recorded the KL")
    lab.add_argument("--no-progress", action="store_true")
    lab.set_defaults(func=_label)

    train = groups["train"]
    s = train.add_parser("sft", help="stage 1: train the router with BCE on the labelled steps")
    add_config_args(s)
    s.add_argument("--labels", default=None, help="labelled-steps file or dir (default <run_dir>/labels/steps.jsonl)")
    s.add_argument("--out", default=None, help="router output dir (default <run_dir>/router_sft)")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=_train_sft)

    g = train.add_parser("grpo", help="stage 2: GRPO on the router with Ray rollout workers")
    add_config_args(g)
    g.add_argument("--init", default=None, help="stage-1 router dir (default <run_dir>/router_sft if present)")
    g.add_argument("--out", default=None, help="output dir (default <run_dir>/router_grpo)")
    g.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    g.add_argument("--local", action="store_true", help="in-process tiers and workers (no Ray actors)")
    g.add_argument("--no-progress", action="store_true")
    g.set_defaults(func=_train_grpo)


def _cfg(args):
    from dmr_rl.cli import stage_config

    return stage_config(args)


def _collect(args) -> int:
    from dmr_rl.config import save_config
    from dmr_rl.pipeline import collect

    cfg = _cfg(args)
    save_config(cfg, Path(cfg.run_dir) / "trajectories" / "config.yaml")
    collect.print_summary(collect.run(cfg, local=args.local, record_kl=True if args.record_kl else None,
                                      progress=not args.no_progress))
    return 0


def _label(args) -> int:
    from dmr_rl.pipeline import label

    cfg = _cfg(args)
    label.print_stats(label.run(cfg, traj_dir=args.trajectories, out_path=args.out, local=not args.ray,
                                progress=not args.no_progress, batch_size=args.batch_size,
                                rescore=args.rescore))
    return 0


def _train_sft(args) -> int:
    from dmr_rl.config import save_config
    from dmr_rl.pipeline import train_sft
    from dmr_rl.pipeline.label import labels_path

    cfg = _cfg(args)
    run_dir = Path(cfg.run_dir)
    out = Path(args.out or run_dir / "router_sft")
    labels = args.labels or labels_path(run_dir)
    if not Path(labels).exists():
        raise FileNotFoundError(f"no labelled steps at {labels}: run `dmr label` first")
    save_config(cfg, out / "train_config.yaml")
    metrics = train_sft.fit(cfg, labels, out, log_dir=str(run_dir / "tb" / "sft"), progress=not args.no_progress)
    print(f"train sft: router -> {out}")
    print(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, (list, dict))}, indent=1, default=str))
    print("held-out steps: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.get("holdout", {}).items()
                                         if isinstance(v, float)))
    return 0


def _train_grpo(args) -> int:
    from dmr_rl.pipeline import train_grpo

    cfg = _cfg(args)
    result = train_grpo.run(cfg, init=args.init, out_dir=args.out, resume=args.resume, local=args.local,
                            progress=not args.no_progress)
    last = result["history"][-1] if result["history"] else {}
    print(f"train grpo: {result['iteration']} iterations, router -> {result['router_dir']}")
    print("  last iteration: " + ", ".join(f"{k} {v:.3f}" for k, v in last.items() if isinstance(v, float)))
    print("  time: " + ", ".join(f"{k} {v:.1f}s" for k, v in result["time"].items()))
    return 0
