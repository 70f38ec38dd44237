"""``dmr eval`` (routers and baselines, Pareto sweeps, causal check), ``dmr report RUN_DIR``,
and (added by the main job) ``dmr run``."""
from __future__ import annotations


def register(sub, groups) -> None:
    from dmr_rl.cli import add_config_args

    e = sub.add_parser("eval", help="evaluate a router and the baselines over the eval split (every seed, Pareto sweeps)")
    add_config_args(e)
    e.add_argument("--router-ckpt", nargs="*", default=[], metavar="[NAME=]DIR",
                   help="router checkpoint dir(s), one per NAME (e.g. sft=DIR grpo=DIR); thresholds are calibrated "
                        "on eval.calib_split to hit eval.target_hp_ratios")
    e.add_argument("--methods", nargs="*", default=None,
                   help="restrict to these methods (baseline names, router NAMEs, <name>_calibrated for "
                        "eval.calibrated_baselines); default: all")
    e.add_argument("--causal", action="store_true",
                   help="also run the causal check (needs one --router-ckpt; eval.causal_episodes, eval.causal_flag_share)")
    e.add_argument("--report", action="store_true", help="write the report afterwards (dmr report)")
    e.add_argument("--no-progress", action="store_true")
    e.set_defaults(func=_eval)

    r = sub.add_parser("report", help="report.md, results.json, plots and TensorBoard from a run directory")
    r.add_argument("run_dir", help="the run directory (holds eval/ and optionally causal/, labels*)")
    r.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples for the 95%% CIs")
    r.add_argument("--no-tensorboard", action="store_true")
    r.add_argument("--skip-corrupt", action="store_true",
                   help="skip corrupt record lines (a torn last line is always skipped) instead of stopping; the "
                        "report's header states how many per method, and paired comparisons leave their tasks out")
    r.set_defaults(func=_report)

    # ---- `dmr run` (the main job) is registered below this line by its own function ---------
    _register_run(sub)


def _register_run(sub) -> None:
    from dmr_rl.cli import add_config_args

    r = sub.add_parser("run", help="the main job: games, agent, quantize, collect, label, stage 1, stage 2, "
                                   "evaluation against every baseline, report (default: experiments/default.yaml)")
    add_config_args(r, omitted="YAML preset (experiments/*.yaml); experiments/default.yaml when omitted")
    r.add_argument("--fresh", action="store_true",
                   help="start over in a new directory (run_dir-2, ...) instead of continuing run_dir")
    r.add_argument("--train-agent", action="store_true",
                   help="train the agent now instead of loading the committed one")
    r.add_argument("--no-progress", action="store_true")
    r.set_defaults(func=_run)


def _run(args) -> int:
    from dmr_rl.config import load_config
    from dmr_rl.pipeline import run as main_job

    cfg = load_config(args.config or main_job.default_preset(), args.overrides)
    report = main_job.run(cfg, fresh=args.fresh, train_agent=args.train_agent, progress=not args.no_progress)
    print(f"report: {report}")
    print(f"results: {report.parent / 'results.json'}   plots: {report.parent / 'plots'}")
    return 0


def _eval(args) -> int:
    from dmr_rl.cli import stage_config
    from dmr_rl.config import save_config
    from dmr_rl.pipeline import evaluate
    from dmr_rl.pipeline.eval_points import parse_router_ckpts

    cfg = stage_config(args)
    save_config(cfg, f"{cfg.run_dir}/eval/config.yaml")
    ckpts = parse_router_ckpts(args.router_ckpt)
    dirs = list(ckpts.values())
    if args.causal and len(dirs) != 1:
        raise FileNotFoundError("--causal needs exactly one --router-ckpt")
    group, clients = evaluate.start_group(cfg)  # one set of actors for the sweep and the causal check
    try:
        path = evaluate.run(cfg, ckpts, methods=args.methods, group=group, clients=clients,
                            progress=not args.no_progress)
        print(f"results: {path}")
        if args.causal:
            from dmr_rl.pipeline import causal

            cpath = causal.run(cfg, dirs[0], group=group, progress=not args.no_progress)
            print(f"causal check: {cpath}")
    finally:
        evaluate.stop_group(group, clients)
    if args.report:
        from dmr_rl.report import write

        print(f"report: {write(cfg.run_dir, n_boot=cfg.eval.bootstrap)}")
    return 0


def _report(args) -> int:
    from dmr_rl.report import layout, write

    with layout.skipping_corrupt(args.skip_corrupt):
        path = write(args.run_dir, n_boot=args.bootstrap, tensorboard=not args.no_tensorboard)
    print(f"report: {path}")
    print(f"results: {path.parent / 'results.json'}   plots: {path.parent / 'plots'}")
    return 0
