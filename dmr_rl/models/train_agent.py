"""``dmr train agent``: behaviour-clone an environment's teacher into a small causal LM.

Recipe (all on CPU, within a wall-clock budget):

1. **Teacher data.** The environment's observation-driven teacher (ALFWorld: ``ExplorerExpert``,
   which sees only what the agent sees; WebShop: the env's expert) plays the train games; each
   step gives (prompt, admissible actions, teacher action).
2. **Tokenizer and model.** A WordPiece tokenizer trained on those prompts and actions
   (:mod:`dmr_rl.models.agent_tokenizer`) and a transformers ``LlamaForCausalLM`` built from a
   small config (tied embeddings).
3. **Score-mode loss.** Each step is packed as one sequence ``prompt + a_1 + ... + a_C`` with a
   tree attention mask (every candidate sees the prompt and itself, not the other candidates), so
   one forward scores all candidates: ``s_j = sum_t log p(a_j,t | prompt, a_j,<t)``. Loss =
   cross-entropy of ``softmax(s)`` against the teacher's action (exactly how score mode acts)
   + ``lm_weight`` x the teacher action's per-token negative log-likelihood.
4. **DAgger.** Later rounds roll out the learner (mixed with the teacher at rate beta), label
   every visited state with the teacher's action and train on the growing aggregate.

Output (``--out``): the checkpoint (``config.json``, ``model.safetensors``, tokenizer files),
``agent_config.json`` (prompt and acting settings), ``calib_prompts.json`` (the agent's own
prompts, for AWQ calibration) and ``training.json`` (data, steps, minutes, validation success).
"""
from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from dmr_rl.errors import ModelError
from dmr_rl.models.agent import AGENT_CONFIG, TRAINING_INFO, AgentPolicy, LMAgent
from dmr_rl.models.prompting import PromptConfig, build_prompt
from dmr_rl.rollout.records import StepContext

#: teacher per environment: "module:Class" of a policy (reset(env), act(obs, info)).
TEACHERS = {
    "alfworld": "environments.alfworld.teacher:ExplorerExpert",
    "webshop": "environments.policies:ExpertPolicy",
}


@dataclass
class TrainAgentConfig:
    env: str = "alfworld"
    data: str = ""
    out: str = ""
    minutes: float = 15.0  # wall-clock budget for data + training (evaluation after it not counted)
    seed: int = 0
    split: str = "train"
    max_games: int = 0  # 0: every game of the split
    val_split: str = "valid_seen"
    val_games: int = 12
    hidden: int = 128
    layers: int = 3
    heads: int = 4
    vocab: int = 1024
    batch_size: int = 32
    lr: float = 2e-3
    max_candidates: int = 24
    lm_weight: float = 0.2
    label_smoothing: float = 0.1  # over the candidates: bounded margins, a calibrated action distribution
    dagger_max_steps: int = 30  # episode cap while rolling out the learner for DAgger
    max_prompt_tokens: int = 320
    dagger_rounds: int = 3
    dagger_beta: float = 0.3
    dagger_games: int = 0  # games per DAgger round (0: all)
    train_share: float = 0.5  # share of the budget for training on the teacher data (rest: DAgger)
    max_steps_episode: int = 0
    augment: float = 0.0  # share of samples added with entity names permuted (rename_entities); 0.5 measured worse
    threads: int = 1  # torch threads; 1 is far faster than 2 on a shared, oversubscribed 2-core box
    prompt: PromptConfig = field(default_factory=lambda: PromptConfig(history_window=2, show_admissible=False))

    def validate(self) -> None:
        if self.minutes <= 0:
            raise ModelError(f"--minutes must be positive, got {self.minutes}")
        if self.hidden % self.heads:
            raise ModelError(f"hidden size {self.hidden} is not divisible by {self.heads} heads")
        if not self.out:
            raise ModelError("--out is required")


@dataclass
class Sample:
    prompt: str
    admissible: list
    target: int  # index of the teacher's action in admissible


# ---- teachers and data ---------------------------------------------------------------------------
def make_teacher(env_name: str):
    import importlib

    if env_name not in TEACHERS:
        raise ModelError(f"no teacher for environment {env_name!r}; known: {sorted(TEACHERS)}")
    module, cls = TEACHERS[env_name].split(":")
    return getattr(importlib.import_module(module), cls)()


def _context(task: str, obs: str, history: list, info: dict) -> StepContext:
    return StepContext(task=str(info.get("task", task)), obs=obs, history=list(history),
                       admissible=list(info.get("admissible_commands") or []),
                       step=len(history), task_type=str(info.get("task_type", "")))


def rollout_labelled(env, teacher, task_index: int, prompt_cfg: PromptConfig, learner=None,
                     beta: float = 1.0, rng: Optional[np.random.Generator] = None,
                     max_steps: int = 0) -> tuple[list, bool]:
    """Play one episode; label every state with the teacher's action.

    The acting policy is the teacher (``learner`` None or with probability ``beta`` per step) or
    the learner (an :class:`LMAgent`). Returns (samples, won)."""
    rng = rng or np.random.default_rng(0)
    obs, info = env.reset(options={"task_index": task_index})
    cap = max_steps or 10**9
    teacher.reset(env)
    history: list = []
    samples: list = []
    done = False
    while not done:
        ctx = _context("", obs, history, info)
        label = teacher.act(obs, info)
        if ctx.admissible and label in ctx.admissible:
            samples.append(Sample(build_prompt(ctx, prompt_cfg.history_window, prompt_cfg),
                                  ctx.admissible, ctx.admissible.index(label)))
        action = label
        if learner is not None and ctx.admissible and rng.random() >= beta:
            action = learner.act([ctx], rng)[0][0]
            if action != label and hasattr(teacher, "observe_action"):
                teacher.observe_action(action)  # a teacher with memory learns what was really done
        obs, _, terminated, truncated, info = env.step(action)
        history.append((action, obs))
        done = terminated or truncated or len(history) >= cap
    return samples, bool(info.get("won"))


#: classes the teacher reaches without the task naming them (clean/heat/cool): never renamed
FIXED_CLASSES = {"sinkbasin", "microwave", "fridge"}


def entity_classes(sample: Sample) -> tuple[set, set]:
    """(place classes, thing classes) of the numbered entities a sample mentions: a place is
    something the agent can "go to" ("shelf 1" -> shelf), a thing anything else ("keychain 2")."""
    import re

    text = (sample.prompt + "\n" + "\n".join(sample.admissible)).lower()
    places = set(re.findall(r"\bgo to ([a-z]+) \d+\b", text))
    things = set(re.findall(r"\b([a-z]+) \d+\b", text)) - places
    return places - FIXED_CLASSES, things - FIXED_CLASSES


def rename_entities(sample: Sample, pools: tuple, rng: random.Random) -> Sample:
    """The same step with its place and thing classes consistently renamed to other classes of the
    same kind from ``pools`` (prompt, task words, candidates and label alike): a world where, say,
    the shelf is called a drawer. It teaches the agent to copy names from the task and the
    observations instead of memorising which object goes where, as unseen pairs need."""
    import re

    mapping = {}
    for classes, pool in zip(entity_classes(sample), pools):
        classes = sorted(classes)
        if classes and len(pool) >= len(classes):
            mapping.update(zip(classes, rng.sample(pool, len(classes))))
    if not mapping:
        return sample
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, sorted(mapping))) + r")\b")

    def sub(text: str) -> str:
        return pattern.sub(lambda m: mapping[m.group(1)], text)

    return Sample(sub(sample.prompt), [sub(a) for a in sample.admissible], sample.target)


def augmented(samples: list, share: float, rng: random.Random) -> list:
    if share <= 0 or not samples:
        return []
    kinds = [entity_classes(s) for s in samples]
    places = sorted(set().union(*(k[0] for k in kinds)))
    things = sorted(set().union(*(k[1] for k in kinds)) - set(places))
    chosen = [s for s in samples if rng.random() < share]
    return [rename_entities(s, (places, things), rng) for s in chosen]


# ---- model ---------------------------------------------------------------------------------------
def build_model(cfg: TrainAgentConfig, tokenizer):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(cfg.seed)
    mc = LlamaConfig(vocab_size=len(tokenizer), hidden_size=cfg.hidden, intermediate_size=cfg.hidden * 3,
                     num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads,
                     num_key_value_heads=cfg.heads, max_position_embeddings=1024,
                     tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
                     eos_token_id=tokenizer.eos_token_id, bos_token_id=None, rms_norm_eps=1e-5)
    model = LlamaForCausalLM(mc)
    model.config._attn_implementation = "sdpa"
    return model


@dataclass
class Encoded:
    prompt: list
    cands: list  # list of id lists
    target: int


def encode(samples: list, tokenizer, max_prompt_tokens: int, cache: dict) -> list:
    out = []
    for s in samples:
        p = tokenizer(s.prompt, add_special_tokens=True)["input_ids"][-max_prompt_tokens:]
        cands = []
        for a in s.admissible:
            if a not in cache:
                cache[a] = tokenizer(a, add_special_tokens=False)["input_ids"] or [tokenizer.eos_token_id]
            cands.append(cache[a])
        out.append(Encoded(p, cands, s.target))
    return out


def pack_batch(batch: list, max_candidates: int, rng: random.Random):
    """Pack each example as prompt + candidates with a tree mask (see the module docstring).

    Returns tensors: ids [B, L], pos [B, L], mask [B, 1, L, L] bool, and for the loss
    pred_b, pred_pos, tgt, cand_of [N] (one per candidate token), cand_valid [B, C], target [B]."""
    import torch

    rows, segs, poss = [], [], []
    pred_b, pred_pos, tgt, cand_of = [], [], [], []
    targets, n_cands = [], []
    C = 0
    for b, ex in enumerate(batch):
        idx = list(range(len(ex.cands)))
        if len(idx) > max_candidates:
            others = [i for i in idx if i != ex.target]
            idx = [ex.target] + rng.sample(others, max_candidates - 1)
        rng.shuffle(idx)
        targets.append(idx.index(ex.target))
        n_cands.append(len(idx))
        C = max(C, len(idx))
        ids, seg = list(ex.prompt), [0] * len(ex.prompt)
        pos = list(range(len(ex.prompt)))
        P = len(ex.prompt)
        for j, ci in enumerate(idx):
            c = ex.cands[ci]
            start = len(ids)
            for t, tok in enumerate(c):
                pred_b.append(b)
                pred_pos.append(P - 1 if t == 0 else start + t - 1)
                tgt.append(tok)
                cand_of.append(b * 10_000 + j)
            ids += c
            seg += [j + 1] * len(c)
            pos += list(range(P, P + len(c)))
        rows.append(ids)
        segs.append(seg)
        poss.append(pos)
    L = max(map(len, rows))
    B = len(batch)
    ids_t = torch.zeros((B, L), dtype=torch.long)
    seg_t = torch.full((B, L), -1, dtype=torch.long)
    pos_t = torch.zeros((B, L), dtype=torch.long)
    for b in range(B):
        n = len(rows[b])
        ids_t[b, :n] = torch.tensor(rows[b])
        seg_t[b, :n] = torch.tensor(segs[b])
        pos_t[b, :n] = torch.tensor(poss[b])
    causal = torch.ones((L, L), dtype=torch.bool).tril()
    same = (seg_t[:, :, None] == seg_t[:, None, :]) | (seg_t[:, None, :] == 0)
    mask = (causal[None] & same)[:, None]
    cand_flat = torch.tensor(cand_of)
    cand_b, cand_j = cand_flat // 10_000, cand_flat % 10_000
    valid = torch.zeros((B, C), dtype=torch.bool)
    for b, n in enumerate(n_cands):
        valid[b, :n] = True
    return dict(ids=ids_t, pos=pos_t, mask=mask, pred_b=torch.tensor(pred_b), pred_pos=torch.tensor(pred_pos),
                tgt=torch.tensor(tgt), cand_b=cand_b, cand_j=cand_j, valid=valid,
                target=torch.tensor(targets), C=C)


def score_loss(model, packed: dict, lm_weight: float, label_smoothing: float = 0.0):
    """(loss, metrics) of one packed batch: candidate cross-entropy (label-smoothed over the valid
    candidates) + lm_weight x the teacher action's per-token NLL."""
    import torch

    hidden = model.model(input_ids=packed["ids"], attention_mask=packed["mask"],
                         position_ids=packed["pos"]).last_hidden_state
    h = hidden[packed["pred_b"], packed["pred_pos"]]  # [N, H]
    logp = torch.log_softmax(model.lm_head(h).float(), dim=-1)
    tok_lp = logp.gather(-1, packed["tgt"][:, None])[:, 0]  # [N]
    B, C = packed["valid"].shape
    sums = torch.zeros((B, C), dtype=tok_lp.dtype).index_put((packed["cand_b"], packed["cand_j"]), tok_lp,
                                                              accumulate=True)
    counts = torch.zeros((B, C)).index_put((packed["cand_b"], packed["cand_j"]), torch.ones_like(tok_lp),
                                           accumulate=True)
    logits = sums.masked_fill(~packed["valid"], float("-inf"))
    ar = torch.arange(B)
    logq = torch.log_softmax(logits, dim=-1)
    nll = -logq[ar, packed["target"]]
    uniform = -(logq.masked_fill(~packed["valid"], 0.0).sum(-1) / packed["valid"].sum(-1))
    ce = ((1 - label_smoothing) * nll + label_smoothing * uniform).mean()
    lm = -(sums[ar, packed["target"]] / counts[ar, packed["target"]].clamp(min=1)).mean()
    loss = ce + lm_weight * lm
    acc = (logits.argmax(-1) == packed["target"]).float().mean()
    return loss, {"ce": float(ce.detach()), "lm": float(lm.detach()), "acc": float(acc)}


def train_for(model, data: list, seconds: float, cfg: TrainAgentConfig, opt, rng: random.Random,
              log: list, step0: int = 0, max_steps: int = 0) -> int:
    """Minibatch steps over ``data`` until ``seconds`` pass (or ``max_steps``). Returns steps done."""
    import torch

    model.train()
    t_end = time.perf_counter() + seconds
    order: list = []
    steps = 0
    while time.perf_counter() < t_end and (max_steps <= 0 or steps < max_steps):
        if len(order) < cfg.batch_size:
            order += rng.sample(range(len(data)), len(data))
        batch = [data[i] for i in order[:cfg.batch_size]]
        del order[:cfg.batch_size]
        packed = pack_batch(batch, cfg.max_candidates, rng)
        loss, metrics = score_loss(model, packed, cfg.lm_weight, cfg.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        steps += 1
        if (step0 + steps) % 10 == 0:
            log.append({"step": step0 + steps, "loss": float(loss.detach()), **metrics})
    model.eval()
    return steps


def make_agent(model, tokenizer, prompt_cfg: PromptConfig) -> LMAgent:
    from dmr_rl.models.backends.transformers_backend import TransformersBackend

    return LMAgent(TransformersBackend(model, tokenizer), action_mode="score", prompt=prompt_cfg)


def success_rate(env, agent: LMAgent, task_indices: list, seed: int = 0) -> float:
    from environments.runner import run_episode

    if not task_indices:
        return float("nan")
    policy = AgentPolicy(agent, seed=seed)
    return float(np.mean([run_episode(env, policy, i).won for i in task_indices]))


def save_agent(model, tokenizer, out: Path, cfg: TrainAgentConfig, info: dict, calib: list) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    (out / AGENT_CONFIG).write_text(json.dumps({"action_mode": "score", "temperature": 0.0,
                                                "length_normalised": False,
                                                "prompt": cfg.prompt.to_dict(), "env": cfg.env}, indent=1))
    (out / "calib_prompts.json").write_text(json.dumps(calib))
    (out / TRAINING_INFO).write_text(json.dumps(info, indent=1))


def train_agent(cfg: TrainAgentConfig, env=None, val_env=None, teacher=None, progress=print) -> dict:
    """Run the whole recipe within ``cfg.minutes``; save to ``cfg.out``; return the training info."""
    import torch

    from environments import make_env
    from dmr_rl.models.agent_tokenizer import train_tokenizer

    cfg.validate()
    threads_before = torch.get_num_threads()
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    try:
        return _train_agent(cfg, env, val_env, teacher, progress)
    finally:
        torch.set_num_threads(threads_before)


def _train_agent(cfg: TrainAgentConfig, env, val_env, teacher, progress) -> dict:
    import torch

    from environments import make_env
    from dmr_rl.models.agent_tokenizer import train_tokenizer

    t0 = time.perf_counter()
    budget = cfg.minutes * 60.0
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    nrng = np.random.default_rng(cfg.seed)
    env = env or make_env(cfg.env, cfg.data, cfg.split, max_steps=cfg.max_steps_episode or None)
    games = list(range(env.num_tasks))
    if cfg.max_games:
        games = games[: cfg.max_games]
    if not games:
        raise ModelError(f"no {cfg.split} games under {cfg.data}")
    teacher = teacher if teacher is not None else make_teacher(cfg.env)

    samples, teacher_wins = [], []
    for i in games:
        s, won = rollout_labelled(env, teacher, i, cfg.prompt)
        samples += s
        teacher_wins.append(won)
        if time.perf_counter() - t0 > 0.3 * budget:
            break
    progress(f"teacher: {len(samples)} steps from {len(teacher_wins)} games, "
             f"teacher success {np.mean(teacher_wins):.2f} ({time.perf_counter() - t0:.0f}s)")

    texts = [s.prompt for s in samples] + [a for s in samples for a in s.admissible]
    tokenizer = train_tokenizer(texts, vocab_size=cfg.vocab)
    model = build_model(cfg, tokenizer)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    cache: dict = {}
    data = encode(samples + augmented(samples, cfg.augment, rng), tokenizer, cfg.max_prompt_tokens, cache)
    log: list = []
    steps = 0
    rounds = []
    remaining = budget - (time.perf_counter() - t0)
    n_rounds = max(0, cfg.dagger_rounds)
    first = remaining * (cfg.train_share if n_rounds else 1.0)
    steps += train_for(model, data, first, cfg, opt, rng, log, steps)
    progress(f"trained {steps} steps on teacher data; last {log[-1] if log else {}}")
    for r in range(n_rounds):
        left = budget - (time.perf_counter() - t0)
        if left < 20:
            break
        round_t0 = time.perf_counter()
        agent = make_agent(model, tokenizer, cfg.prompt)
        dgames = games if not cfg.dagger_games else rng.sample(games, min(cfg.dagger_games, len(games)))
        new, wins = [], []
        for i in dgames:
            s, won = rollout_labelled(env, teacher, i, cfg.prompt, learner=agent, beta=cfg.dagger_beta, rng=nrng,
                                      max_steps=cfg.dagger_max_steps)
            new += s
            wins.append(won)
            if time.perf_counter() - round_t0 > 0.45 * left / max(1, n_rounds - r):
                break
        data += encode(new + augmented(new, cfg.augment, rng), tokenizer, cfg.max_prompt_tokens, cache)
        samples += new
        left = budget - (time.perf_counter() - t0)
        n = train_for(model, data, left / max(1, n_rounds - r), cfg, opt, rng, log, steps)
        steps += n
        rounds.append({"round": r + 1, "games": len(wins), "new_steps": len(new),
                       "mixed_success": float(np.mean(wins)) if wins else None, "train_steps": n})
        progress(f"DAgger round {r + 1}: {len(new)} new steps, mixed-policy success "
                 f"{np.mean(wins) if wins else float('nan'):.2f}, {n} steps; last {log[-1] if log else {}}")
    minutes = (time.perf_counter() - t0) / 60.0
    agent = make_agent(model, tokenizer, cfg.prompt)
    val = {}
    if cfg.val_games and (val_env is not None or cfg.val_split):
        val_env = val_env or make_env(cfg.env, cfg.data, cfg.val_split, max_steps=cfg.max_steps_episode or None)
        idx = list(range(min(cfg.val_games, val_env.num_tasks)))
        val = {"split": cfg.val_split, "games": len(idx), "success": success_rate(val_env, agent, idx, cfg.seed)}
        progress(f"validation ({cfg.val_split}, {len(idx)} games): success {val['success']:.2f}")
    calib = [s.prompt + s.admissible[s.target] for s in rng.sample(samples, min(64, len(samples)))]
    info = {
        "env": cfg.env, "data": {"dir": str(cfg.data), "split": cfg.split, "games": len(games),
                                  "teacher": TEACHERS.get(cfg.env, type(teacher).__name__), "teacher_success": float(np.mean(teacher_wins)),
                                  "samples": len(samples)},
        "model": {"arch": "LlamaForCausalLM", "hidden": cfg.hidden, "layers": cfg.layers, "heads": cfg.heads,
                  "vocab": len(tokenizer), "params": int(sum(p.numel() for p in model.parameters()))},
        "train": {k: v for k, v in asdict(cfg).items() if k not in ("prompt", "data", "out")},
        "prompt": cfg.prompt.to_dict(), "steps": steps, "minutes": round(minutes, 2),
        "dagger": rounds, "validation": val, "loss_log": log[:1] + log[-10:] if len(log) > 11 else log,
        "lp": {"method": "awq", "bits": 3, "group_size": min(32, cfg.hidden)},
    }
    save_agent(model, tokenizer, Path(cfg.out), cfg, info, calib)
    return info


def evaluate_tiers(model_dir, env_name: str, data: str, split: str = "valid_unseen", games: int = 0,
                   lp: Optional[dict] = None, seed: int = 0, progress=print) -> dict:
    """Quantize the agent as ``lp`` asks (into ``<model_dir>/<lp dir>``, reused when present),
    play ``games`` games of ``split`` with both tiers, and record the result in training.json."""
    from environments import make_env
    from environments.runner import evaluate_policy
    from dmr_rl.models.agent import calibration_prompts, load_agent, lp_spec
    from dmr_rl.models.quantize import quantize_checkpoint

    model_dir = Path(model_dir)
    info_path = model_dir / TRAINING_INFO
    info = json.loads(info_path.read_text())
    if lp:
        info["lp"] = {k: lp[k] for k in ("method", "bits", "group_size")}
        info_path.write_text(json.dumps(info, indent=1))
    spec = lp_spec(model_dir)
    lp_dir = model_dir / spec["dir"]
    if not (lp_dir / "config.json").exists():
        q = quantize_checkpoint(str(model_dir), str(lp_dir), spec["method"], int(spec["bits"]),
                                int(spec["group_size"]), calibration_prompts(model_dir))
        progress(f"quantized {spec['dir']}: {q.get('packed_bytes')} packed bytes")
    env = make_env(env_name, data, split)
    n = min(games or env.num_tasks, env.num_tasks)
    result = {"data": str(data), "split": split, "games": n}
    for tier, d in (("hp", model_dir), ("lp", lp_dir)):
        summary = evaluate_policy(env, AgentPolicy(load_agent(d), seed=seed), n)
        result[tier] = {k: summary[k] for k in ("success_rate", "mean_steps", "seconds_per_step",
                                                "success_by_task_type")}
        result[tier]["success"] = summary["success_rate"]
        progress(f"{tier} ({d.name}): success {summary['success_rate']:.3f} on {n} {split} games")
    info["eval"] = result
    info_path.write_text(json.dumps(info, indent=1))
    return result


# ---- command line --------------------------------------------------------------------------------
def register_train_agent(train_sub) -> None:
    p = train_sub.add_parser("agent", help="behaviour-clone the environment's teacher into a small LM agent")
    p.add_argument("--env", required=True, help="alfworld | webshop")
    p.add_argument("--data", required=True, help="data root (generated games / catalog)")
    p.add_argument("--out", required=True, help="checkpoint directory to write")
    p.add_argument("--minutes", type=float, default=15.0, help="wall-clock budget (data + training)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", default="train")
    p.add_argument("--max-games", type=int, default=0, help="cap on training games (0: all)")
    p.add_argument("--val-games", type=int, default=12, help="valid_seen games checked after training (0: none)")
    p.add_argument("--hidden", type=int, default=TrainAgentConfig.hidden)
    p.add_argument("--layers", type=int, default=TrainAgentConfig.layers)
    p.add_argument("--vocab", type=int, default=TrainAgentConfig.vocab)
    p.add_argument("--dagger-rounds", type=int, default=TrainAgentConfig.dagger_rounds)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy 2-core box)")
    p.add_argument("--eval-data", default="", help="after training: data root whose --eval-split games "
                   "both tiers play (HP and its low-bit copy); recorded in training.json")
    p.add_argument("--eval-split", default="valid_unseen")
    p.add_argument("--eval-games", type=int, default=0, help="0: the whole split")
    p.add_argument("--lp-method", default="awq", help="low-bit copy: awq | rtn")
    p.add_argument("--lp-bits", type=int, default=3)
    p.add_argument("--lp-group-size", type=int, default=32, help="must divide the hidden size")
    p.set_defaults(func=_cmd_train_agent)


def _cmd_train_agent(args) -> int:
    import os

    data = Path(args.data)
    if not data.exists():
        raise FileNotFoundError(f"data directory {data} does not exist")
    cfg = TrainAgentConfig(env=args.env, data=str(data), out=args.out, minutes=args.minutes, seed=args.seed,
                           split=args.split, max_games=args.max_games, val_games=args.val_games,
                           hidden=args.hidden, layers=args.layers, vocab=args.vocab,
                           dagger_rounds=args.dagger_rounds, threads=args.threads)
    if args.env == "webshop":
        cfg.prompt = PromptConfig(history_window=2, show_admissible=False, max_obs_chars=600)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    info = train_agent(cfg)
    print(json.dumps({k: info[k] for k in ("steps", "minutes", "validation", "data")}, indent=1))
    if args.eval_data:
        import torch

        torch.set_num_threads(max(1, args.threads))
        lp = {"method": args.lp_method, "bits": args.lp_bits, "group_size": args.lp_group_size}
        result = evaluate_tiers(args.out, args.env, args.eval_data, args.eval_split, args.eval_games, lp, args.seed)
        print(json.dumps({t: result[t]["success"] for t in ("hp", "lp")}))
    return 0
