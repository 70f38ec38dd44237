"""Pipeline benchmark: routing overhead per step, and rollout throughput against rollout workers.

    python experiments/bench_pipeline.py [--config PRESET.yaml] [--set a.b=v ...]
                                         [--workers 1 2 4] [--episodes 16] [--fake] [--json]
                                         [--sections routing throughput sessions] [--method M]

1. **Routing overhead.** For one worker step (``collect.envs_per_worker`` environments from the
   evaluation split): the LP step (the LP tier scoring every admissible action, in-process), the
   router's decision (the transformer router of ``router.*``, in-process, one thread), and what
   Ray adds per step (the same LP call through a model-server actor minus the in-process call).
   Overhead = (router + Ray) / LP step, in percent.
2. **Throughput.** Rollout workers (Ray actors) sharing one HP and one LP model server: the same
   ``--episodes`` episodes run with 1, 2, 4 ... workers; steps/s and episodes/s side by side.

3. **Sessions** (``--sections sessions``). The same episodes through the same model servers with
   per-episode sessions on (each tier keeps an episode's KV cache between its steps) and off
   (``ActingSpec.sessions``), run alternately ``--session-reps`` times per worker count; steps/s side by
   side, their ratio, and whether both played the same actions.

``--fake`` serves FakeBackend tiers (no model, ``--fake-delay-ms`` per forward) to measure the
framework alone; without it the tiers are those of the config (the project's agent by default).
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _contexts(cfg, n: int):
    from dmr_rl.models.prompting import PromptConfig, build_prompt
    from dmr_rl.rollout.envs import env_spec_from_config
    from dmr_rl.step import StepContext

    env = env_spec_from_config(cfg, cfg.env.eval_split).make()
    ctxs, prompts = [], []
    for i in range(n):
        obs, info = env.reset(options={"task_index": i % env.num_tasks})
        c = StepContext(task=str(info.get("task", "")), obs=obs, admissible=list(info["admissible_commands"]),
                        step=0, task_type=str(info.get("task_type", "")))
        ctxs.append(c)
        prompts.append(build_prompt(c, cfg.agent.history_window, PromptConfig(history_window=cfg.agent.history_window)))
    return ctxs, prompts


def _median_s(fn, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _specs(cfg, args):
    from dmr_rl.serving import launcher

    if not args.fake:
        return {t: launcher.tier_backend_spec(cfg, t) for t in ("hp", "lp")}
    from dmr_rl.serving.fake_backend import FakeBackend

    d = args.fake_delay_ms / 1000.0
    return {"hp": functools.partial(FakeBackend, salt="hp", delay_s=2 * d, weight_bytes=4e8),
            "lp": functools.partial(FakeBackend, salt="lp", delay_s=d, weight_bytes=1e8)}


def _router_kwargs(cfg, hidden_dim: int) -> dict:
    """TransformerRouter keyword arguments for the config's router (sized for lp_hidden inputs)."""
    kw = {"config": cfg.router, "num_threads": 1}
    if cfg.router.features == "lp_hidden":
        kw["hidden_dim"] = int(hidden_dim)
    return kw


def routing_overhead(cfg, specs, reps: int) -> dict:
    from dmr_rl.router.transformer import TransformerRouter
    from dmr_rl.serving import launcher
    from dmr_rl.serving.clients import LocalTierClient

    ctxs, prompts = _contexts(cfg, cfg.collect.envs_per_worker)
    cands = [c.admissible for c in ctxs]
    local = LocalTierClient("lp", specs["lp"])
    lp_s = _median_s(lambda: local.score_actions_costed(prompts, cands), reps)
    layer = cfg.router.hidden_layer  # the LP pass stops after this decoder layer (0: the whole pass)
    hidden = local.prompt_hidden(prompts, layer) if cfg.router.features == "lp_hidden" else None
    hidden_s = _median_s(lambda: local.prompt_hidden_costed(prompts, layer), reps) if hidden is not None else 0.0
    router = TransformerRouter(**_router_kwargs(cfg, len(hidden[0]) if hidden else 0))
    rng = np.random.default_rng(0)
    router_s = _median_s(lambda: router.route(ctxs, rng, **({"lp_hidden": hidden} if hidden else {})), reps)
    remote = launcher.create_model_servers("lp", cfg.lp, specs["lp"])
    try:
        ray_lp_s = _median_s(lambda: remote.score_actions_costed(prompts, cands), reps)
    finally:
        launcher.shutdown_all(None, {"lp": remote})
    ray_s = max(0.0, ray_lp_s - lp_s)
    return {"envs_per_step": len(ctxs), "features": cfg.router.features, "lp_step_ms": 1e3 * lp_s,
            "router_ms": 1e3 * router_s, "lp_hidden_ms": 1e3 * hidden_s, "lp_hidden_layer": layer,
            "hidden_dim": len(hidden[0]) if hidden else 0,
            "ray_ms": 1e3 * ray_s, "lp_step_via_ray_ms": 1e3 * ray_lp_s,
            "router_pct_of_lp_step": 100 * (router_s + hidden_s) / lp_s,
            "overhead_pct_of_lp_step": 100 * (router_s + hidden_s + ray_s) / lp_s}


def throughput(cfg, specs, workers: list, episodes: int, hidden_dim: int = 0) -> list:
    from dmr_rl.pipeline.evaluate import num_tasks_of
    from environments.runner import spread_tasks
    from dmr_rl.serving import launcher

    clients = launcher.create_tier_clients(cfg, ("hp", "lp"), backend_specs=specs)
    rows = []
    try:
        for n in workers:
            with tempfile.TemporaryDirectory() as shards:
                group = launcher.create_rollout_group(cfg, clients, shards, num_workers=n, split=cfg.env.eval_split,
                                                      router={"name": "transformer",
                                                              "kwargs": _router_kwargs(cfg, hidden_dim)})
                try:
                    tasks = spread_tasks(num_tasks_of(group), episodes)
                    t0 = time.perf_counter()
                    s = group.run_episodes(tasks, "router", seed=0)
                    dt = time.perf_counter() - t0
                finally:
                    group.shutdown()
            rows.append({"workers": n, "envs_per_worker": cfg.collect.envs_per_worker, "episodes": s["episodes"],
                         "steps": s["steps"], "seconds": dt, "steps_per_s": s["steps"] / dt,
                         "episodes_per_s": s["episodes"] / dt, "hp_ratio": s["hp_ratio"]})
    finally:
        launcher.shutdown_all(None, clients)
    base = rows[0]["steps_per_s"] if rows else 1.0
    for r in rows:
        r["speedup"] = r["steps_per_s"] / base
    return rows


def sessions_throughput(cfg, specs, workers: list, episodes: int, method: str = "router", reps: int = 1,
                        hidden_dim: int = 0) -> list:
    """Rollout steps/s of the served path with per-episode sessions on vs off: for each worker
    count, ``reps`` rounds of the same ``episodes`` episodes (same rng key) with sessions on, then
    off (order alternating per round), over one set of model servers. Rows: workers, steps,
    on/off steps/s (summed over rounds), ratio on/off, same_actions (every episode's actions equal)."""
    import dataclasses

    from dmr_rl.pipeline.evaluate import num_tasks_of
    from dmr_rl.rollout.group import worker_kwargs_from_config
    from environments.runner import spread_tasks
    from dmr_rl.serving import launcher

    clients = launcher.create_tier_clients(cfg, ("hp", "lp"), backend_specs=specs)
    router = {"name": "transformer", "kwargs": _router_kwargs(cfg, hidden_dim)}
    rows = []
    try:
        for n in workers:
            secs, steps, actions = {True: 0.0, False: 0.0}, {True: 0, False: 0}, {True: [], False: []}
            for r in range(reps):
                for on in ((True, False) if r % 2 == 0 else (False, True)):
                    with tempfile.TemporaryDirectory() as shards:
                        acting = worker_kwargs_from_config(cfg, shards, split=cfg.env.eval_split)["acting"]
                        group = launcher.create_rollout_group(cfg, clients, shards, num_workers=n,
                                                              split=cfg.env.eval_split, router=router,
                                                              acting=dataclasses.replace(acting, sessions=on))
                        try:
                            tasks = spread_tasks(num_tasks_of(group), episodes)
                            t0 = time.perf_counter()
                            s = group.run_episodes(tasks, method, seed=0, return_episodes=True,
                                                   rng_key=(cfg.seed, method, "bench"))
                            secs[on] += time.perf_counter() - t0
                        finally:
                            group.shutdown()
                    steps[on] += s["steps"]
                    actions[on].append(sorted((e.episode_id, [st.action for st in e.steps])
                                              for e in s["episode_records"]))
            rows.append({"workers": n, "envs_per_worker": cfg.collect.envs_per_worker, "method": method,
                         "reps": reps, "steps": steps[True] // reps,
                         "on_steps_per_s": steps[True] / secs[True], "off_steps_per_s": steps[False] / secs[False],
                         "ratio": (steps[True] / secs[True]) / (steps[False] / secs[False]),
                         "same_actions": actions[True] == actions[False]})
    finally:
        launcher.shutdown_all(None, clients)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=None, help="preset (default: experiments/default.yaml, as dmr run)")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--episodes", type=int, default=16)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--fake", action="store_true", help="model-free tiers: the framework's own cost")
    ap.add_argument("--fake-delay-ms", type=float, default=20.0, help="with --fake: LP forward time (HP: twice)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--sections", nargs="+", default=["routing", "throughput"],
                    choices=["routing", "throughput", "sessions"], help="what to measure")
    ap.add_argument("--method", default="router", help="who routes in the sessions section (router, hp, lp, random ...)")
    ap.add_argument("--session-reps", type=int, default=2, help="sessions section: rounds of on and off (alternating order)")
    args = ap.parse_args(argv)

    from dmr_rl.config import load_config
    from dmr_rl.pipeline.run import default_preset
    from dmr_rl.serving import launcher

    cfg = load_config(args.config or default_preset(), args.overrides)
    launcher.ray_init(cfg.ray, cfg.run_dir)
    specs = _specs(cfg, args)
    over = routing_overhead(cfg, specs, args.reps) if "routing" in args.sections else None
    hidden_dim = over["hidden_dim"] if over else 0
    if over is None and cfg.router.features == "lp_hidden":  # the router's input width: one LP prompt pass
        from dmr_rl.serving.clients import LocalTierClient

        hidden_dim = len(LocalTierClient("lp", specs["lp"]).prompt_hidden(["> "])[0])
    rows = throughput(cfg, specs, args.workers, args.episodes, hidden_dim) if "throughput" in args.sections else []
    sess = (sessions_throughput(cfg, specs, args.workers, args.episodes, args.method, args.session_reps,
                                hidden_dim) if "sessions" in args.sections else [])
    out = {"env": cfg.env.name, "fake": args.fake, "routing": over, "throughput": rows, "sessions": sess}
    if args.json:
        print(json.dumps(out))
        return 0
    if sess:
        print(f"served rollout steps/s, per-episode sessions on vs off ({args.episodes} episodes, method {args.method}, "
              f"{'fake tiers' if args.fake else 'config tiers'}):")
        print(f"  {'workers':>7} {'envs/w':>6} {'steps':>6} {'on':>8} {'off':>8} {'on/off':>6} same actions")
        for r in sess:
            print(f"  {r['workers']:>7} {r['envs_per_worker']:>6} {r['steps']:>6} {r['on_steps_per_s']:>8.2f} "
                  f"{r['off_steps_per_s']:>8.2f} {r['ratio']:>6.2f} {r['same_actions']}")
    if over is None:
        return 0
    print(f"routing overhead per step ({over['envs_per_step']} envs, {cfg.env.name}, "
          f"{'fake tiers' if args.fake else 'config tiers'}):")
    upto = f"up to layer {over['lp_hidden_layer']}" if over.get("lp_hidden_layer") else "(all layers)"
    hid = f" + LP prompt pass {upto} {over['lp_hidden_ms']:.2f} ms" if over["features"] == "lp_hidden" else ""
    print(f"  LP step {over['lp_step_ms']:.2f} ms | router {over['router_ms']:.2f} ms{hid} | Ray adds {over['ray_ms']:.2f} ms"
          f" -> overhead {over['overhead_pct_of_lp_step']:.1f}% of an LP step (router alone {over['router_pct_of_lp_step']:.1f}%)")
    print(f"rollout throughput, {args.episodes} episodes:")
    print(f"  {'workers':>7} {'envs/w':>6} {'steps':>6} {'seconds':>8} {'steps/s':>8} {'eps/s':>6} {'speedup':>7}")
    for r in rows:
        print(f"  {r['workers']:>7} {r['envs_per_worker']:>6} {r['steps']:>6} {r['seconds']:>8.2f} "
              f"{r['steps_per_s']:>8.1f} {r['episodes_per_s']:>6.2f} {r['speedup']:>7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
