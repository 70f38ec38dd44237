"""The ``dmr`` command. Thin: parse, build a config, call one driver.

Each concern registers its own subcommands (``register(sub)``) in a module of this package;
handlers import their heavy dependencies lazily so ``dmr --help`` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# (module, function) pairs, in help order. A module's register() adds parsers to ``sub``.
REGISTRARS = [
    "dmr_rl.cli.env_cmds",     # games, env eval, env play
    "dmr_rl.cli.model_cmds",   # models, quantize, train agent
    "dmr_rl.cli.router_cmds",  # collect, label, train sft, train grpo
    "dmr_rl.cli.eval_cmds",    # eval, report, run
    "dmr_rl.cli.config_cmds",  # config
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dmr", description="Dynamic Mixed-Precision Routing for LLM agents.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    train = sub.add_parser("train", help="train the agent LM (agent), the router stage 1 (sft) or stage 2 (grpo)")
    train_sub = train.add_subparsers(dest="train_command", metavar="WHAT")
    train_sub.required = True
    groups = {"train": train_sub}
    for name in REGISTRARS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # a concern not written yet
                continue
            raise
        module.register(sub, groups)
    return parser


STAGE_CONFIG_HELP = ("YAML preset (experiments/*.yaml); omitted: the config.yaml `dmr run` saved in the run "
                     "directory (run_dir, default runs/default) when there is one, else the built-in defaults")


def add_config_args(p: argparse.ArgumentParser, omitted: str = STAGE_CONFIG_HELP) -> None:
    """The two flags every config-driven command shares; ``omitted`` says what --config defaults to."""
    p.add_argument("--config", default=None, help=omitted)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override one config value (repeatable), e.g. --set grpo.iterations=4")


def stage_config(args):
    """The config of a command that works on one stage of a run (collect, label, train sft/grpo, eval):
    ``--config`` when given; else the run directory's own ``config.yaml`` (what ``dmr run`` resolved:
    the agent's model paths, its LP copy, the games), so a stage rerun on ``runs/default`` uses the
    tiers that made it rather than the built-in defaults; else the built-in defaults. ``--set``
    overrides apply on top (``run_dir`` picks the directory). Says on stderr which file it read."""
    from pathlib import Path

    from dmr_rl.config import DMRConfig, apply_overrides, load_config

    if args.config:
        return load_config(args.config, args.overrides)
    # the directory alone: the overrides are validated once, against the config they will apply to
    saved = Path(str(apply_overrides({}, args.overrides).get("run_dir", DMRConfig().run_dir))) / "config.yaml"
    if not saved.is_file():
        return load_config(None, args.overrides)
    print(f"dmr: no --config: using {saved}, the config this run directory was made with", file=sys.stderr)
    return load_config(str(saved), args.overrides)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # every user-facing error ends here with its message, not a traceback
        from dmr_rl.errors import log_traceback, one_line, user_facing

        from dmr_rl.errors import ActorError

        log = log_traceback(e)  # (a run's <run_dir>/logs/dmr.log, when there is one)
        shown = user_facing(e)
        if shown is not None:
            # an actor, Ray or OS failure has a traceback worth keeping; bad input does not
            where = f" (traceback in {log})" if log and (shown is not e or isinstance(e, (ActorError, OSError))) else ""
            print(f"dmr: error: {one_line(shown)}{where}", file=sys.stderr)
            return 2
        raise
    finally:
        from dmr_rl.errors import set_log_file

        set_log_file(None)


if __name__ == "__main__":
    sys.exit(main())
