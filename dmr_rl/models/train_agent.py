"""``dmr train agent``: behaviour-clone an environment's teacher into a small causal LM.

Recipe (all on CPU, within a wall-clock budget):

1. **Teacher data** (:mod:`dmr_rl.models.bc_data`). The environment's observation-driven
   teacher plays the train games; each step gives (prompt, admissible actions, teacher action).
2. **Tokenizer and model.** A WordPiece tokenizer trained on those prompts and actions
   (:mod:`dmr_rl.models.agent_tokenizer`) and a transformers ``LlamaForCausalLM`` built from a
   small config (tied embeddings). Or, with ``init`` (``--init smollm2`` or a checkpoint dir),
   a pretrained model and its tokenizer, of which only the top ``train_layers`` layers train.
   Why both: an agent trained from scratch for minutes keeps wide action margins and shrugs off
   2-bit weights (its low-bit copy is a few points worse); a pretrained model fine-tuned the same
   way inherits a dense, precision-sensitive network (its 3-bit copy loses most of its wins).
   With ``lora_rank`` the pretrained weights stay frozen and a LoRA adapter (peft) trains instead;
   only the adapter is saved (bf16, a few MB), see :mod:`dmr_rl.models.lora`. ``bf16`` trains
   under bf16 autocast (AMX CPUs: ~5x the fp32 matmul rate per core).
3. **Score-mode loss** (:mod:`dmr_rl.models.bc_loss`): one forward scores every candidate
   action of a step; cross-entropy over the candidates against the teacher's action (exactly
   how score mode acts) plus a small language-modelling term.
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
from dmr_rl.models.bc_data import TEACHERS, augmented, make_teacher, rollout_labelled
from dmr_rl.models.bc_loss import build_model, encode, load_init_model, train_for
from dmr_rl.models.lora import apply_lora, cpu_bf16_fast, resume_lora, save_adapter
from dmr_rl.models.prompting import PromptConfig


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
    max_candidates: int = 16  # candidates scored per training step (the teacher's + sampled others)
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
    init: str = ""  # "" builds a model from hidden/layers/heads with its own tokenizer; "smollm2" or a checkpoint dir fine-tunes that
    train_layers: int = 8  # with init: only the top N decoder layers (and the final norm) train; 0: all
    snapshots: bool = False  # also save the agent after the teacher-data phase and each DAgger round (out/snapshots/)
    lora_rank: int = 0  # with init: > 0 trains a LoRA adapter of this rank on the top train_layers layers (0: all)
    lora_alpha: float = 0.0  # LoRA scale numerator (0: 2 x rank)
    resume_adapter: str = ""  # with init: a LoRA agent directory whose adapter goes on training (its rank, alpha, layers)
    bf16: bool = False  # bf16 autocast for forward and backward (fast where the CPU has AMX / AVX-512 BF16)
    # window 1: the memory lines carry the rest of the history, and shorter prompts train faster
    prompt: PromptConfig = field(default_factory=lambda: PromptConfig(history_window=1, show_admissible=False,
                                                                      task_last=True))

    def validate(self) -> None:
        if self.minutes <= 0:
            raise ModelError(f"--minutes must be positive, got {self.minutes}")
        if not self.init and self.hidden % self.heads:
            raise ModelError(f"hidden size {self.hidden} is not divisible by {self.heads} heads")
        if not self.out:
            raise ModelError("--out is required")
        if self.init and self.init != "smollm2" and not Path(self.init).is_dir():
            raise ModelError(f"--init {self.init}: no such checkpoint directory (or use --init smollm2)")
        if self.train_layers < 0:
            raise ModelError(f"--train-layers must be >= 0, got {self.train_layers}")
        if self.lora_rank < 0:
            raise ModelError(f"--lora-rank must be >= 0, got {self.lora_rank}")
        if self.lora_rank and not self.init:
            raise ModelError("--lora-rank needs --init (an adapter on a pretrained model)")
        if self.resume_adapter:
            self._check_resume()
        if self.lora_rank and self.snapshots:
            raise ModelError("--snapshots is not supported with --lora-rank")
        if self.bf16 and not cpu_bf16_fast():
            raise ModelError("--bf16: this CPU has neither AMX nor AVX-512-BF16, so bf16 matmuls are emulated "
                             "(measured 7x slower than fp32 on such a box); train without --bf16")

    def _check_resume(self) -> None:
        """``resume_adapter`` names a LoRA agent on the same base, trained for this environment;
        its shape fills ``lora_rank``/``lora_alpha``/``train_layers`` (a differing flag is an error)."""
        from dmr_rl.models.agent import is_adapter_dir, read_agent_config
        from dmr_rl.models.lora import adapter_shape

        d = Path(self.resume_adapter)
        if not self.init:
            raise ModelError("--resume-adapter needs --init (the base the adapter was trained on)")
        if not is_adapter_dir(d):
            raise ModelError(f"--resume-adapter {d}: no LoRA agent there (adapter_config.json without config.json)")
        settings = read_agent_config(d)
        if settings.get("base") != self.init:
            raise ModelError(f"--resume-adapter {d}: its base is {settings.get('base')!r}, not --init {self.init!r}")
        if settings.get("env") not in (None, self.env):
            raise ModelError(f"--resume-adapter {d}: trained for {settings.get('env')!r}, not --env {self.env}")
        shape = adapter_shape(d)
        for name, key in (("lora_rank", "rank"), ("lora_alpha", "alpha")):
            given = getattr(self, name)
            if given and given != shape[key]:
                raise ModelError(f"--{name.replace('_', '-')} {given} differs from the resumed adapter's {shape[key]}")
            setattr(self, name, shape[key])
        self.train_layers = shape["layers"]


#: what ``--init`` changes unless given: a pretrained model fine-tunes with a small learning rate,
#: small batches (a step costs ~100x a tiny agent's) and no DAgger (rolling a 135M learner out
#: costs ~1 s a step on 2 cores, so a round would eat the budget)
FINE_TUNE_DEFAULTS = {"lr": 1.5e-4, "batch_size": 8, "max_candidates": 8, "dagger_rounds": 0}


def make_agent(model, tokenizer, prompt_cfg: PromptConfig) -> LMAgent:
    from dmr_rl.models.backends.transformers_backend import TransformersBackend

    return LMAgent(TransformersBackend(model, tokenizer), action_mode="score", prompt=prompt_cfg)


def save_agent(model, tokenizer, out: Path, cfg: TrainAgentConfig, info: dict, calib: list,
               peft_model=None) -> None:
    """The checkpoint (or, with ``peft_model``, only its bf16 LoRA adapter plus ``base`` in
    agent_config.json, merged at first use by :func:`dmr_rl.models.agent.resolve_agent_dir`),
    tokenizer, agent_config.json, calib_prompts.json and training.json."""
    out.mkdir(parents=True, exist_ok=True)
    settings = {"action_mode": "score", "temperature": 0.0, "length_normalised": False,
                "prompt": cfg.prompt.to_dict(), "env": cfg.env}
    if peft_model is not None:
        info.setdefault("model", {})["adapter_bytes"] = save_adapter(peft_model, out, base=cfg.init)
        settings["base"] = cfg.init
    else:
        model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    (out / AGENT_CONFIG).write_text(json.dumps(settings, indent=1))
    (out / "calib_prompts.json").write_text(json.dumps(calib))
    (out / TRAINING_INFO).write_text(json.dumps(info, indent=1))


def train_agent(cfg: TrainAgentConfig, env=None, val_env=None, teacher=None, progress=print) -> dict:
    """Run the whole recipe within ``cfg.minutes``; save to ``cfg.out``; return the training info."""
    import torch

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
    from environments.runner import evaluate_policy
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

    peft_model = None
    if cfg.init and cfg.lora_rank:  # (a resumed adapter's rank was filled in by validate())
        model, tokenizer = load_init_model(cfg.init, 0)
        peft_model = (resume_lora(model, cfg.resume_adapter) if cfg.resume_adapter else
                      apply_lora(model, cfg.lora_rank, cfg.lora_alpha, cfg.train_layers, cfg.seed))
    elif cfg.init:
        model, tokenizer = load_init_model(cfg.init, cfg.train_layers)
    else:
        texts = [s.prompt for s in samples] + [a for s in samples for a in s.admissible]
        tokenizer = train_tokenizer(texts, vocab_size=cfg.vocab)
        model = build_model(cfg, tokenizer)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=0.01)
    cache: dict = {}
    data = encode(samples + augmented(samples, cfg.augment, rng), tokenizer, cfg.max_prompt_tokens, cache)
    # a step with one listed action (WebShop's search page) has no choice to learn: a full forward for nothing
    data = [e for e in data if len(e.cands) > 1]
    log: list = []
    steps = 0
    rounds = []
    remaining = budget - (time.perf_counter() - t0)
    n_rounds = max(0, cfg.dagger_rounds)
    first = remaining * (cfg.train_share if n_rounds else 1.0)
    steps += train_for(model, data, first, cfg, opt, rng, log, steps, progress=progress)
    progress(f"trained {steps} steps on teacher data; last {log[-1] if log else {}}")
    snapshot = _snapshot_saver(cfg, model, tokenizer, samples, t0, progress)
    snapshot("bc", steps)
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
        snapshot(f"dagger{r + 1}", steps)
    minutes = (time.perf_counter() - t0) / 60.0
    agent = make_agent(model, tokenizer, cfg.prompt)
    val = {}
    if cfg.val_games and (val_env is not None or cfg.val_split):
        val_env = val_env or make_env(cfg.env, cfg.data, cfg.val_split, max_steps=cfg.max_steps_episode or None)
        n = min(cfg.val_games, val_env.num_tasks)
        won = evaluate_policy(val_env, AgentPolicy(agent, seed=cfg.seed), n)["success_rate"] if n else float("nan")
        val = {"split": cfg.val_split, "games": n, "success": won}
        progress(f"validation ({cfg.val_split}, {n} games): success {val['success']:.2f}")
    calib = calibration_sample(samples, rng)
    info = {
        "env": cfg.env, "data": {"dir": str(cfg.data), "split": cfg.split, "games": len(games),
                                  "teacher": TEACHERS.get(cfg.env, type(teacher).__name__), "teacher_success": float(np.mean(teacher_wins)),
                                  "samples": len(samples)},
        "model": model_summary(model, tokenizer, cfg),
        "train": {k: v for k, v in asdict(cfg).items() if k not in ("prompt", "data", "out")},
        "prompt": cfg.prompt.to_dict(), "steps": steps, "minutes": round(minutes, 2),
        "dagger": rounds, "validation": val, "resumed_from": _resumed_from(cfg), "loss_log": log[:1] + log[-10:] if len(log) > 11 else log,
        "lp": {"method": "awq", "bits": 3, "group_size": min(32, model.config.hidden_size)},
    }
    save_agent(model, tokenizer, Path(cfg.out), cfg, info, calib, peft_model)
    return info


def _resumed_from(cfg: TrainAgentConfig) -> Optional[dict]:
    """Where a resumed adapter came from: its directory and its own training record's steps,
    minutes and (recursively) where it came from."""
    if not cfg.resume_adapter:
        return None
    path = Path(cfg.resume_adapter) / TRAINING_INFO
    prior = json.loads(path.read_text()) if path.exists() else {}
    return {"dir": str(cfg.resume_adapter), "steps": prior.get("steps"), "minutes": prior.get("minutes"),
            "lr": prior.get("train", {}).get("lr"), "resumed_from": prior.get("resumed_from")}


def model_summary(model, tokenizer, cfg: TrainAgentConfig) -> dict:
    mc = model.config
    lora = {"rank": cfg.lora_rank, "alpha": cfg.lora_alpha or 2 * cfg.lora_rank,
            "layers": cfg.train_layers or mc.num_hidden_layers} if cfg.lora_rank else None
    return {"arch": (mc.architectures or [type(model).__name__])[0], "init": cfg.init or "random", "lora": lora,
            "hidden": mc.hidden_size, "layers": mc.num_hidden_layers, "heads": mc.num_attention_heads,
            "vocab": len(tokenizer), "params": int(sum(p.numel() for p in model.parameters())),
            "trained_params": int(sum(p.numel() for p in model.parameters() if p.requires_grad))}


def calibration_sample(samples: list, rng: random.Random, n: int = 64) -> list:
    """Up to ``n`` teacher-labelled steps as prompt + action text: the AWQ calibration prompts."""
    return [s.prompt + s.admissible[s.target] for s in rng.sample(samples, min(n, len(samples)))]


def _snapshot_saver(cfg: TrainAgentConfig, model, tokenizer, samples: list, t0: float, progress):
    """``snapshot(name, steps)`` saves the agent as it is now to ``out/snapshots/name`` (when
    ``cfg.snapshots``), with calibration prompts and the steps and minutes it had trained."""
    def snapshot(name: str, steps: int) -> None:
        if not cfg.snapshots:
            return
        out = Path(cfg.out) / "snapshots" / name
        calib = calibration_sample(samples, random.Random(cfg.seed))
        info = {"env": cfg.env, "snapshot": name, "steps": steps,
                "minutes": round((time.perf_counter() - t0) / 60.0, 2), "prompt": cfg.prompt.to_dict()}
        save_agent(model, tokenizer, out, cfg, info, calib)
        progress(f"snapshot {name} saved to {out}")
    return snapshot


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
        info["lp"] = {k: lp[k] for k in ("method", "bits", "group_size", "group_size_overrides", "engine") if k in lp}
        info_path.write_text(json.dumps(info, indent=1))
    spec = lp_spec(model_dir)
    lp_dir = model_dir / spec["dir"]
    if not (lp_dir / "config.json").exists():
        q = quantize_checkpoint(str(model_dir), str(lp_dir), spec["method"], int(spec["bits"]),
                                int(spec["group_size"]), calibration_prompts(model_dir), engine=spec["engine"],
                                group_size_overrides=spec["group_size_overrides"])
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
