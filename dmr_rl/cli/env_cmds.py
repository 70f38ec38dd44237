"""``dmr games`` (offline data generators) and ``dmr env eval|play`` (run policies, play by hand)."""
from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager, nullcontext, redirect_stdout


def register(sub, groups) -> None:
    g = sub.add_parser("games", help="generate offline games/data in the real on-disk format")
    gsub = g.add_subparsers(dest="family", metavar="ENV")
    gsub.required = True
    ga = gsub.add_parser("alfworld", help="ALFWorld-format games (game.tw-pddl + traj_data.json)")
    ga.add_argument("--out", required=True, help="data root to write (json_2.1.1/<split>/... below it)")
    ga.add_argument("--n", type=int, default=60, help="number of games over all splits")
    ga.add_argument("--seed", type=int, default=0)
    ga.set_defaults(func=_games_alfworld)
    gw = gsub.add_parser("webshop", help="a synthetic catalog in WebShop's real file format")
    gw.add_argument("--out", required=True)
    gw.add_argument("--products", type=int, default=1000)
    gw.add_argument("--instructions", type=int, default=200)
    gw.add_argument("--seed", type=int, default=0)
    gw.set_defaults(func=_games_webshop)

    e = sub.add_parser("env", help="run a policy over episodes (eval) or play one task (play)")
    esub = e.add_subparsers(dest="env_command", metavar="WHAT")
    esub.required = True
    ev = esub.add_parser("eval", help="success rate, mean score and steps of a policy")
    _common(ev)
    ev.add_argument("--policy", default="expert",
                    help="expert | random | agent (agent: the LM agent, see --tier and --model)")
    ev.add_argument("--episodes", type=int, default=20)
    ev.add_argument("--seed", type=int, default=0, help="seed of the random policy / agent sampling")
    ev.add_argument("--tier", default="hp", help="with --policy agent: hp (full precision) or lp (the agent's "
                    "low-bit copy named in its training.json, made once if missing)")
    ev.add_argument("--model", default="", help="with --policy agent: a trained agent's directory "
                    "(default: the committed agent of --env)")
    ev.set_defaults(func=_eval)
    pl = esub.add_parser("play", help="play one task: given actions, or typed at the prompt")
    _common(pl)
    pl.add_argument("--task-index", type=int, default=0)
    pl.add_argument("--actions", nargs="*", default=None, help="commands to play in order")
    pl.set_defaults(func=_play)


def _common(p) -> None:
    p.add_argument("--env", required=True, help="alfworld | webshop")
    p.add_argument("--data", required=True, help="data root")
    p.add_argument("--split", default="valid_unseen")
    p.add_argument("--max-steps", type=int, default=0, help="episode cap (0: the family's default)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def _games_alfworld(args) -> int:
    from environments.alfworld.generator import generate

    summary = generate(args.out, n=args.n, seed=args.seed)
    print(json.dumps(summary, indent=1))
    return 0


def _games_webshop(args) -> int:
    from environments.webshop.generator import generate

    summary = generate(args.out, n_products=args.products, n_instructions=args.instructions, seed=args.seed)
    print(json.dumps(summary, indent=1))
    return 0


def _make(args):
    from environments import make_env

    return make_env(args.env, args.data, args.split, max_steps=args.max_steps or None)


def _policy(args, env):
    from environments.policies import POLICIES

    if args.policy == "agent":
        from dmr_rl.models.agent import agent_policy_from_args

        return agent_policy_from_args(args, env)
    if args.policy not in POLICIES:
        raise ValueError(f"unknown policy {args.policy!r}; known: {sorted(POLICIES) + ['agent']}")
    return POLICIES[args.policy]() if args.policy == "expert" else POLICIES[args.policy](seed=args.seed)


@contextmanager
def stdout_to_stderr():
    """Inside, whatever writes to stdout (prints, C libraries, loggers that hold the stdout stream:
    llmcompressor's import warns on stdout) lands on stderr, so a ``--json`` command's stdout is
    its JSON alone."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _eval(args) -> int:
    from environments.runner import evaluate_policy

    with stdout_to_stderr() if args.json else nullcontext():
        env = _make(args)
        summary = evaluate_policy(env, _policy(args, env), args.episodes)
    summary.update(env=args.env, split=args.split, policy=args.policy)
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"{args.env}/{args.split} policy={args.policy} episodes={summary['episodes']}")
    print(f"  success rate {summary['success_rate']:.3f}   mean score {summary['mean_score']:.3f}"
          f"   mean steps {summary['mean_steps']:.1f}   {1000 * summary['seconds_per_step']:.1f} ms/step")
    for task_type, rate in summary["success_by_task_type"].items():
        print(f"  {task_type:<40s} {rate:.3f}")
    return 0


def _play(args) -> int:
    env = _make(args)
    obs, info = env.reset(options={"task_index": args.task_index})
    initial = obs
    steps = []
    interactive = args.actions is None
    if not args.json:
        print(obs)
    actions = iter(args.actions or [])
    done = False
    while not done:
        if interactive:
            if not args.json:
                print(f"\nadmissible: {', '.join(info['admissible_commands'][:40])}")
            try:
                action = input("> ").strip()
            except EOFError:
                break
            if action in ("quit", "exit"):
                break
        else:
            action = next(actions, None)
            if action is None:
                break
        obs, reward, terminated, truncated, info = env.step(action)
        done = terminated or truncated
        steps.append({"action": action, "observation": obs, "reward": reward, "done": done})
        if not args.json:
            print(f"\n> {action}\n{obs}")
    final = {k: info[k] for k in ("won", "score", "task_type", "task_id", "task", "step")}
    if args.json:
        print(json.dumps({"initial_observation": initial, "steps": steps, "info": final}))
    else:
        print(f"\nwon={final['won']} score={final['score']:.3f} steps={final['step']}", file=sys.stdout)
    return 0
