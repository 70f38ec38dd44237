"""Benchmark of the precision tiers: agent steps/s old vs new path, speed per tier, KL between tiers.

    python experiments/bench_models.py                       # SmolLM2 if cached, else a tiny model
    python experiments/bench_models.py --json                # the agent-steps section as one JSON line
    python experiments/bench_models.py --model DIR --awq DIR --throughput --kl-games 12

Sections (each a function returning rows, so other sections can be added beside them):

- :func:`bench_agent_steps` (always): agent steps per second on real multi-step episodes (the
  expert's consecutive steps of generated ALFWorld valid_unseen games, prompted as the agent
  is), per tier (HP: the model; LP: its AWQ copy), at 1 and 4 environments per call, for
  today's path (fp32, ``batched`` engine, no sessions) and the new one (``dtype=auto``,
  ``packed`` engine, one session per episode so consecutive prompts reuse their KV cache).
  Both paths score the same calls alternately, so load from other processes hits both alike;
  ``agree`` is the share of steps whose argmax action is the same on both paths.
  ``--json``: one line with ``speedup`` {"hp": x, "lp": y} (new/old steps/s at 1 env per call).

- :func:`bench_throughput` (``--throughput``): generated tokens/s (greedy decode) and scored token positions/s
  (``score_actions``) per tier and batch size, with weight bytes; printed as ratios to fp32.
- :func:`bench_ray_overhead` (``--ray-overhead``): a Ray model-server call against an in-process one.
- :func:`bench_score_actions` (``--throughput``): the rollout hot path, one step = one prompt and C admissible
  actions: batched KV-reuse ``score_actions`` against a naive one-forward-per-candidate loop.
- :func:`bench_step_kl` (``--kl-games N``, default 0: skipped): per-step KL(HP || LP) on expert
  trajectories of generated ALFWorld valid_unseen games, between the committed agent and its
  low-bit copy: over the admissible actions and teacher-forced over the expert's action tokens
  (mean, p50, p90, p99, share of the total in the top 5% of steps), the share of steps where the
  two tiers' greedy actions differ, and the HP agent's margin (top-1 minus top-2 log-prob).

On this CPU, low-bit tiers do not run faster (weights are decompressed, or dequantized per
forward); the wall-clock gain of low precision shows on GPUs, hence the modelled bytes column.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dmr_rl.models.backends.base import SamplingParams  # noqa: E402

OBS = ("You are in the middle of a room. Looking quickly around you, you see a cabinet 6, a cabinet 5, "
       "a cabinet 4, a cabinet 3, a cabinet 2, a cabinet 1, a coffeemachine 1, a countertop 3, a countertop 2, "
       "a countertop 1, a drawer 3, a drawer 2, a drawer 1, a fridge 1, a garbagecan 1, a microwave 1, "
       "a shelf 3, a shelf 2, a shelf 1, a sinkbasin 1, a stoveburner 4, a stoveburner 3, a toaster 1.")
ACTIONS = ([f"go to cabinet {i}" for i in range(1, 7)] + [f"go to drawer {i}" for i in range(1, 4)]
           + [f"go to countertop {i}" for i in range(1, 4)] + [f"go to shelf {i}" for i in range(1, 4)]
           + ["go to fridge 1", "go to microwave 1", "go to sinkbasin 1", "go to toaster 1", "inventory",
              "look", "go to coffeemachine 1", "go to garbagecan 1", "examine countertop 1"])


def step_prompt(i: int, history: int = 3) -> str:
    lines = [f"Task: put a clean mug {i} in the coffeemachine."]
    for k in range(history):
        lines += [f"> go to cabinet {k + 1}", f"You arrive at cabinet {k + 1}. The cabinet {k + 1} is closed."]
    lines += [OBS, "Actions: " + " | ".join(ACTIONS)]
    return "\n".join(lines) + "\n>"


def load_tiers(model_dir: str, awq_dir: str = "", quanto: bool = True) -> dict:
    """name -> backend: fp32, bf16, the compressed copy (AWQ or RTN, decompressed on CPU, named
    by its dmr_quant.json), quanto int8/int4."""
    from dmr_rl.models import load_backend

    tiers = {"fp32": load_backend(model_path=model_dir, dtype="float32"),
             "bf16": load_backend(model_path=model_dir, dtype="bfloat16")}
    if awq_dir:
        be = load_backend(model_path=awq_dir, backend="compressed")
        info = getattr(be, "quant_info", {}) or {}
        tiers[f"{info.get('method', 'q')}-w{info.get('bits', '?')}"] = be
    if quanto:
        tiers["quanto-w8"] = load_backend(model_path=model_dir, backend="quanto", bits=8)
        tiers["quanto-w4"] = load_backend(model_path=model_dir, backend="quanto", bits=4)
    return tiers


def bench_throughput(tiers: dict, batch_sizes=(1, 4, 16), new_tokens: int = 16, n_cands: int = 20,
                     repeats: int = 2) -> list:
    """Rows: tier, batch, gen tok/s, score positions/s, ms per scored step, weight bytes.

    Tiers are timed round-robin and the best of ``repeats`` rounds is kept, so that load from
    other processes on a shared machine hits every tier alike.
    """
    best: dict = {}
    for b in batch_sizes:
        prompts = [step_prompt(i) for i in range(b)]
        for be in tiers.values():  # warm-up (first forward of a compressed model decompresses it)
            be.generate(prompts[:1], SamplingParams(max_new_tokens=2, stop=()))
        for _ in range(repeats):
            for name, be in tiers.items():
                t0, n0 = time.perf_counter(), be.cost.generated_tokens
                be.generate(prompts, SamplingParams(max_new_tokens=new_tokens, stop=()))
                gen = (be.cost.generated_tokens - n0) / (time.perf_counter() - t0)
                t0, p0 = time.perf_counter(), be.cost.prompt_tokens
                be.score_actions(prompts, [ACTIONS[:n_cands]] * b)
                sc_s = time.perf_counter() - t0
                row = {"tier": name, "batch": b, "gen_tok_s": gen, "score_pos_s": (be.cost.prompt_tokens - p0) / sc_s,
                       "score_step_ms": 1000 * sc_s / b, "weight_bytes": be.weight_bytes}
                old = best.get((name, b))
                if old is None:
                    best[(name, b)] = row
                else:
                    old["gen_tok_s"] = max(old["gen_tok_s"], row["gen_tok_s"])
                    old["score_pos_s"] = max(old["score_pos_s"], row["score_pos_s"])
                    old["score_step_ms"] = min(old["score_step_ms"], row["score_step_ms"])
    return [best[(name, b)] for name in tiers for b in batch_sizes]


def naive_score(be, prompt: str, cands: list) -> np.ndarray:
    """One full forward per candidate (the reference the batched path must beat)."""
    import torch

    tok = be.tokenizer
    p = tok(prompt)["input_ids"]
    out = []
    with torch.no_grad():
        for c in cands:
            ids = tok(c, add_special_tokens=False)["input_ids"]
            logp = torch.log_softmax(be.model(input_ids=torch.tensor([p + ids])).logits[0].float(), -1)
            out.append(sum(float(logp[len(p) - 1 + t, x]) for t, x in enumerate(ids)))
    return np.array(out)


def bench_score_actions(be, n_cands=(10, 20, 29), repeats: int = 3) -> list:
    """Rows: candidates, prompt tokens, batched ms, naive ms, speed-up, max |difference|."""
    rows = []
    prompt = step_prompt(0)
    n_prompt = len(be.tokenizer(prompt)["input_ids"])
    for c in n_cands:
        cands = ACTIONS[:c]
        be.score_actions([prompt], [cands])
        t0 = time.perf_counter()
        for _ in range(repeats):
            got = be.score_actions([prompt], [cands])[0].sum_logprobs
        fast = (time.perf_counter() - t0) / repeats
        t0 = time.perf_counter()
        ref = naive_score(be, prompt, cands)
        slow = time.perf_counter() - t0
        rows.append({"candidates": c, "prompt_tokens": n_prompt, "batched_ms": 1000 * fast,
                     "naive_ms": 1000 * slow, "speedup": slow / fast,
                     "max_abs_diff": float(np.abs(got - ref).max())})
    return rows


def format_table(rows: list, ratio_to: str = "fp32") -> str:
    """Throughput rows side by side, each also as a ratio to the ``ratio_to`` tier at the same batch."""
    base = {r["batch"]: r for r in rows if r["tier"] == ratio_to}
    head = f"{'tier':<11}{'batch':>6}{'gen tok/s':>11}{'x':>7}{'score pos/s':>13}{'x':>7}{'ms/step':>9}{'weight MB':>11}{'x':>7}"
    out = [head, "-" * len(head)]
    for r in rows:
        b = base.get(r["batch"], r)
        out.append(f"{r['tier']:<11}{r['batch']:>6}{r['gen_tok_s']:>11.1f}{r['gen_tok_s'] / b['gen_tok_s']:>7.2f}"
                   f"{r['score_pos_s']:>13.0f}{r['score_pos_s'] / b['score_pos_s']:>7.2f}{r['score_step_ms']:>9.1f}"
                   f"{r['weight_bytes'] / 1e6:>11.1f}{r['weight_bytes'] / b['weight_bytes']:>7.3f}")
    return "\n".join(out)


def default_model() -> tuple:
    """SmolLM2 (and its AWQ copy) when cached, else a tiny random Llama quantized on the spot."""
    from dmr_rl.models import smollm2
    from dmr_rl.models.checkpoints import cache_root, make_tiny_checkpoint
    from dmr_rl.models.quantize import quantize_checkpoint

    if smollm2.is_cached():
        for name in ("smollm2-awq-w4g64", "smollm2-rtn-w4g64"):  # what `dmr quantize --out` wrote
            q = cache_root() / "models" / name
            if (q / "config.json").exists():
                return str(smollm2.smollm2_dir()), str(q)
        return str(smollm2.smollm2_dir()), ""
    tmp = Path(tempfile.mkdtemp(prefix="dmr_bench_"))
    src = make_tiny_checkpoint(tmp / "tiny", hidden=128, layers=4)
    quantize_checkpoint(src, tmp / "awq", "awq", 4, 64, [step_prompt(i) for i in range(8)], n_grid=10)
    return str(src), str(tmp / "awq")


def episode_prompts(n_games: int = 4, data_dir: str = "", agent: str = "", max_steps: int = 25) -> list:
    """Real multi-step episodes: for ``n_games`` generated ALFWorld valid_unseen games (in
    ``data_dir``, default: generated into a temporary directory), the explorer expert's
    consecutive steps as (prompt, admissible actions), prompted as ``agent`` (its
    agent_config.json) or as a SmolLM2 agent trained by ``dmr train agent`` is by default."""
    from dmr_rl.models.agent import read_agent_config
    from dmr_rl.models.bc_data import make_teacher, rollout_labelled
    from dmr_rl.models.prompting import PromptConfig
    from dmr_rl.models.train_agent import TrainAgentConfig
    from environments import make_env
    from environments.runner import spread_tasks

    if not data_dir:
        from environments.alfworld.generator import generate

        with tempfile.TemporaryDirectory(prefix="dmr_bench_games_") as tmp:
            generate(tmp, n=3 * n_games, seed=0)
            return episode_prompts(n_games, tmp, agent, max_steps)
    prompt = (PromptConfig.from_dict(read_agent_config(agent).get("prompt", {})) if agent
              else TrainAgentConfig().prompt)
    env = make_env("alfworld", data_dir, "valid_unseen")
    teacher = make_teacher("alfworld")
    return [[(s.prompt, list(s.admissible)) for s in rollout_labelled(env, teacher, i, prompt, max_steps=max_steps)[0]]
            for i in spread_tasks(env.num_tasks, min(n_games, env.num_tasks))]


def bench_agent_steps(paths: dict, episodes: list, n_envs=(1, 4)) -> list:
    """Agent steps/s of each tier's old and new path on ``episodes`` (lists of (prompt, actions)).

    paths: tier -> (old backend, new backend). Episodes are played ``n`` at a time in lock-step,
    one ``score_actions`` call per step for the ``n`` environments (the new path with one session
    id per episode, ended with ``end_sessions`` when the episode ends). The two paths score each
    call back to back in alternating order. Steps/s are per CPU second of this process (with one
    torch thread that is wall time on an idle core, and it stays honest on a machine shared with
    other jobs); ``*_wall_steps_s`` are per wall second. Rows: tier, envs, steps, old/new steps/s,
    speedup, agree (share of steps with the same argmax action on both paths)."""
    rows = []
    for tier, (old, new) in paths.items():
        warm = episodes[0][0]
        old.score_actions([warm[0]], [warm[1]])
        new.score_actions([warm[0]], [warm[1]])
        for n in n_envs:
            t_old = t_new = w_old = w_new = 0.0
            steps = same = 0
            for g in range(0, len(episodes), n):
                group = episodes[g:g + n]
                ids = [f"{tier}-{n}-{g + k}" for k in range(len(group))]
                for t in range(max(map(len, group))):
                    live = [k for k, ep in enumerate(group) if t < len(ep)]
                    prompts, cands = [group[k][t][0] for k in live], [group[k][t][1] for k in live]
                    for first in ((old, new) if (steps + t) % 2 == 0 else (new, old)):
                        t0, c0 = time.perf_counter(), time.process_time()
                        if first is old:
                            a = old.score_actions(prompts, cands)
                            t_old += time.process_time() - c0
                            w_old += time.perf_counter() - t0
                        else:
                            b = new.score_actions(prompts, cands, sessions=[ids[k] for k in live])
                            t_new += time.process_time() - c0
                            w_new += time.perf_counter() - t0
                    steps += len(live)
                    same += sum(int(np.argmax(x.sum_logprobs) == np.argmax(y.sum_logprobs)) for x, y in zip(a, b))
                    new.end_sessions([ids[k] for k, ep in enumerate(group) if len(ep) == t + 1])
            rows.append({"tier": tier, "envs": n, "steps": steps, "old_steps_s": steps / t_old,
                         "new_steps_s": steps / t_new, "speedup": t_old / t_new, "agree": same / steps,
                         "old_wall_steps_s": steps / w_old, "new_wall_steps_s": steps / w_new,
                         "old": old.info()["label"] + f" {old.info()['dtype']}/{old.engine}",
                         "new": new.info()["label"] + f" {new.info()['dtype']}/{new.engine}+sessions"})
    return rows


def agent_step_paths(model_dir: str, awq_dir: str) -> dict:
    """tier -> (today's path: fp32, batched engine; new path: dtype auto, packed engine)."""
    from dmr_rl.models import load_backend

    paths = {"hp": (load_backend(model_path=model_dir, dtype="float32", engine="batched"),
                    load_backend(model_path=model_dir, dtype="auto"))}
    if awq_dir:
        paths["lp"] = (load_backend(model_path=awq_dir, backend="compressed", dtype="float32", engine="batched"),
                       load_backend(model_path=awq_dir, backend="compressed", dtype="auto"))
    return paths


def format_steps(rows: list) -> str:
    head = (f"{'tier':<5}{'envs':>5}{'steps':>7}{'old steps/s':>13}{'new steps/s':>13}{'speedup':>9}{'agree':>7}"
            f"{'wall: old':>11}{'new':>7}")
    out = [head, "-" * len(head)]
    for r in rows:
        out.append(f"{r['tier']:<5}{r['envs']:>5}{r['steps']:>7}{r['old_steps_s']:>13.2f}{r['new_steps_s']:>13.2f}"
                   f"{r['speedup']:>9.2f}{r['agree']:>7.3f}{r['old_wall_steps_s']:>11.2f}{r['new_wall_steps_s']:>7.2f}")
    for tier in dict.fromkeys(r["tier"] for r in rows):
        r = next(x for x in rows if x["tier"] == tier)
        out.append(f"{tier}: old = {r['old']}; new = {r['new']}")
    return "\n".join(out)


def bench_step_kl(n_games: int = 12, data_dir: str = "", agent: str = "", lp: str = "") -> dict:
    """KL statistics of ``agent`` (default: the committed ALFWorld agent) against ``lp`` (default:
    its low-bit copy) on the explorer expert's trajectories of ``n_games`` valid_unseen games of
    ``data_dir`` (default: games generated into a temporary directory)."""
    from dmr_rl.algos.kl_labels import kl_summary
    from dmr_rl.models import load_backend
    from dmr_rl.models.acting import action_logits
    from dmr_rl.models.agent import agent_dir, lp_checkpoint, read_agent_config
    from dmr_rl.models.bc_data import make_teacher, rollout_labelled
    from dmr_rl.models.kl import action_kl_batch, step_kl
    from dmr_rl.models.prompting import PromptConfig
    from environments import make_env
    from environments.runner import spread_tasks

    agent = agent or str(agent_dir("alfworld"))
    lp = lp or str(lp_checkpoint(agent, "alfworld"))
    if not data_dir:
        from environments.alfworld.generator import generate

        with tempfile.TemporaryDirectory(prefix="dmr_bench_games_") as tmp:
            generate(tmp, n=3 * n_games, seed=0)
            return bench_step_kl(n_games, tmp, agent, lp)
    env = make_env("alfworld", data_dir, "valid_unseen")
    prompt_cfg = PromptConfig.from_dict(read_agent_config(agent).get("prompt", {}))
    teacher = make_teacher("alfworld")
    samples = [s for i in spread_tasks(env.num_tasks, min(n_games, env.num_tasks))
               for s in rollout_labelled(env, teacher, i, prompt_cfg)[0]]
    hp_be, lp_be = load_backend(model_path=agent), load_backend(model_path=lp)
    prompts, adm = [s.prompt for s in samples], [list(s.admissible) for s in samples]
    actions = [s.admissible[s.target] for s in samples]
    hs, ls = hp_be.score_actions(prompts, adm), lp_be.score_actions(prompts, adm)
    kl_actions = action_kl_batch(hs, ls)
    kl_tokens = step_kl(hp_be, lp_be, prompts, actions, space="tokens")["kl_mean"]
    hp_logits, lp_logits = [action_logits(s) for s in hs], [action_logits(s) for s in ls]
    differ = np.mean([np.argmax(a) != np.argmax(b) for a, b in zip(hp_logits, lp_logits)])
    margins = [np.diff(np.sort(x)[-2:])[0] for x in hp_logits if len(x) > 1]
    return {"agent": agent, "lp": lp, "games": min(n_games, env.num_tasks), "steps": len(samples),
            "kl_actions": kl_summary(kl_actions), "kl_tokens": kl_summary(kl_tokens),
            "greedy_differs": float(differ),
            "hp_margin_pct": dict(zip(("p5", "p25", "p50"), np.percentile(margins, [5, 25, 50]).round(2).tolist()))}


def format_kl(r: dict) -> str:
    lines = [f"agent {r['agent']}\nlp    {r['lp']}\n{r['games']} games, {r['steps']} expert steps"]
    for space in ("kl_actions", "kl_tokens"):
        k = r[space]
        lines.append(f"  {space:<10s} mean {k['mean']:.4f}  p50 {k['p50']:.4f}  p90 {k['p90']:.4f}  "
                     f"p99 {k['p99']:.4f}  max {k['max']:.3f}  top 5% of steps hold {100 * k['top5_share']:.1f}%")
    m = r["hp_margin_pct"]
    lines.append(f"  greedy action differs on {100 * r['greedy_differs']:.1f}% of steps; HP margin "
                 f"(top-1 minus top-2 log-prob) p5 {m['p5']}  p25 {m['p25']}  p50 {m['p50']}")
    return "\n".join(lines)


def bench_ray_overhead(model_dir: str, n_envs=(1, 4, 16), repeats: int = 20) -> list:
    """Ray call overhead per rollout step: one ``score_actions`` call of ``n`` environments through
    a ModelServer actor against the same call in-process (both one torch thread). Rows for the
    model-free FakeBackend (pure transport) and for ``model_dir`` (fp32). Starts a local Ray."""
    import functools

    import ray

    from dmr_rl.config import TierConfig
    from dmr_rl.serving.bench import ray_call_overhead
    from dmr_rl.serving.fake_backend import FakeBackend
    from dmr_rl.serving.launcher import load_tier_backend

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    rows = []
    try:
        for name, factory in (("fake", functools.partial(FakeBackend, "hp")),
                              ("fp32", functools.partial(load_tier_backend, TierConfig(), model_dir))):
            for n in n_envs:
                r = ray_call_overhead(factory, n_envs=n, repeats=repeats, prompts=[step_prompt(i) for i in range(n)],
                                      candidates=[ACTIONS] * n)
                rows.append({"backend": name, **r})
    finally:
        if started:
            ray.shutdown()
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="", help="full-precision checkpoint (default: SmolLM2 if cached, else tiny)")
    ap.add_argument("--awq", default="", help="its compressed-tensors AWQ (or RTN) copy (dmr quantize --out)")
    ap.add_argument("--agent", default="", help="agent directory whose agent_config.json prompts the episodes "
                                                "(default: the SmolLM2 agent's default prompt format)")
    ap.add_argument("--data", default="", help="generated ALFWorld games for the agent-steps section (default: generate)")
    ap.add_argument("--games", type=int, default=4, help="generated valid_unseen games played by the agent-steps section")
    ap.add_argument("--max-steps", type=int, default=25, help="steps per episode in the agent-steps section")
    ap.add_argument("--envs", type=int, nargs="+", default=[1, 4], help="environments per call")
    ap.add_argument("--json", action="store_true", help="print the agent-steps section as one JSON line only")
    ap.add_argument("--throughput", action="store_true", help="also the throughput-per-tier and score_actions sections")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--no-quanto", action="store_true")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (a model server runs with one; 0: torch's default)")
    ap.add_argument("--ray-overhead", action="store_true", help="also time a Ray model-server call against an in-process one")
    ap.add_argument("--kl-games", type=int, default=0, help="valid_unseen games for the KL section (0: skip it)")
    ap.add_argument("--kl-data", default="", help="generated ALFWorld games for the KL section (default: generate)")
    ap.add_argument("--kl-agent", default="", help="HP agent for the KL section (default: the committed one)")
    ap.add_argument("--kl-lp", default="", help="its low-bit copy (default: the agent's configured LP)")
    args = ap.parse_args(argv)
    import json
    import os

    import torch

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # keep CPU time in the measured thread

    if args.threads:
        torch.set_num_threads(args.threads)
    model, awq = (args.model, args.awq) if args.model else default_model()
    episodes = episode_prompts(args.games, args.data, agent=args.agent, max_steps=args.max_steps)
    rows = bench_agent_steps(agent_step_paths(model, awq), episodes, args.envs)
    if args.json:
        first = {r["tier"]: r for r in rows if r["envs"] == args.envs[0]}
        print(json.dumps({"model": model, "awq": awq, "torch_threads": torch.get_num_threads(), "rows": rows,
                          "speedup": {t: round(r["speedup"], 3) for t, r in first.items()}}))
        return 0
    print(f"model: {model}\nawq:   {awq or '(none)'}\ntorch threads: {torch.get_num_threads()}\n")
    print(f"== agent steps/s, today's path vs the new one ({len(episodes)} episodes, "
          f"{sum(map(len, episodes))} steps; steps per CPU second, speedup = new/old) ==")
    print(format_steps(rows))
    if args.throughput:
        tiers = load_tiers(model, awq, quanto=not args.no_quanto)
        print("\n== throughput per tier and batch size (x = ratio to fp32 at the same batch) ==")
        print(format_table(bench_throughput(tiers, args.batch_sizes, args.new_tokens)))
        print("\n== score_actions, one step (fp32): batched KV reuse vs one forward per candidate ==")
        for r in bench_score_actions(tiers["fp32"]):
            print("  ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))
    if args.ray_overhead:
        print("\n== Ray call overhead per step (median ms, one score_actions call of n envs) ==")
        for r in bench_ray_overhead(model):
            print(f"  {r['backend']:<5s} n_envs={r['n_envs']:<3d} in-process {r['local_ms']:8.2f}   "
                  f"ray {r['ray_ms']:8.2f}   overhead {r['overhead_ms']:6.2f}   actor ping {r['actor_ping_ms']:.2f}")
    if args.kl_games:
        print("\n== per-step KL(HP || LP) on expert trajectories (generated ALFWorld valid_unseen) ==")
        print(format_kl(bench_step_kl(args.kl_games, args.kl_data, args.kl_agent, args.kl_lp)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
