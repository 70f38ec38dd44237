"""The LM agent: a Backend (one precision tier) plus how it is prompted and how it acts.

:class:`LMAgent` acts for a batch of :class:`StepContext` in one backend call (score mode: one
``score_actions`` call over every context's admissible actions; generate mode: one ``generate``
call, then :func:`match_action`). :class:`AgentPolicy` adapts it to the environments' policy
protocol (``reset(env)``, ``act(obs, info)``) and keeps the history itself.
:func:`agent_policy_from_args` is what ``dmr env eval --policy agent`` calls.

Where the project's agents live
    ``dmr_rl/assets/agents/<env>/`` holds the trained agent (``dmr train agent``): a transformers
    checkpoint, ``agent_config.json`` (prompt and acting settings) and ``training.json``
    (data, steps, minutes, HP/LP success). ``--tier hp`` loads it at full precision.
    ``--tier lp`` loads its low-bit AWQ copy: the sub-directory named in ``training.json``
    (``lp.dir``, committed beside the agent when small); if it is missing, it is produced once
    with :func:`dmr_rl.models.quantize.quantize_checkpoint` (method, bits and group size from
    ``training.json``'s ``lp`` entry, calibrated on the agent's own prompts in
    ``calib_prompts.json``) into ``$DMR_CACHE`` (default ``~/.cache/dmr_rl``)
    ``/agents/<env>/<lp.dir>`` and reused from there. ``--model DIR`` loads any checkpoint dir.
    A LoRA agent (``alfworld-smollm2``: SmolLM2-135M-Instruct + a committed bf16 adapter) holds
    only its adapter; :func:`resolve_agent_dir` merges it with its base once into
    ``$DMR_CACHE/agents/merged/`` and its low-bit copy is made beside that merged checkpoint.
    ``dmr env eval --policy agent`` plays :data:`DEFAULT_AGENTS` (else the agent named after the
    env); a run serves ``agent.name`` (empty: the agent named after the env, the tiny one).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from dmr_rl.atomic_io import publish_dir
from dmr_rl.errors import ModelError
from dmr_rl.models.checkpoints import cache_root
from dmr_rl.models.acting import choose_action, match_action, one_hot
from dmr_rl.models.prompting import PromptConfig, build_prompt
from dmr_rl.step import StepContext

ACTION_MODES = ("score", "generate")
AGENT_CONFIG = "agent_config.json"
TRAINING_INFO = "training.json"
ASSETS = Path(__file__).resolve().parent.parent / "assets" / "agents"


@dataclass
class AgentAction:
    """One decision: the command, its index in the admissible list, the action distribution."""

    action: str
    index: int
    probs: np.ndarray  # [len(admissible)]
    prompt: str


class LMAgent:
    """An agent over one backend. ``act`` is batched over contexts (one backend call per step)."""

    def __init__(self, backend, action_mode: str = "score", history_window: Optional[int] = None,
                 temperature: float = 0.0, prompt: Optional[PromptConfig] = None,
                 max_new_tokens: int = 24, length_normalised: bool = False):
        if action_mode not in ACTION_MODES:
            raise ModelError(f"unknown action_mode {action_mode!r}; known: {', '.join(ACTION_MODES)}")
        if temperature < 0:
            raise ModelError(f"temperature must be >= 0, got {temperature}")
        self.backend = backend
        self.action_mode = action_mode
        self.prompt_config = prompt or PromptConfig()
        if history_window is not None:
            self.prompt_config = PromptConfig.from_dict({**self.prompt_config.to_dict(),
                                                         "history_window": int(history_window)})
        self.temperature = float(temperature)
        self.max_new_tokens = int(max_new_tokens)
        self.length_normalised = bool(length_normalised)

    @property
    def history_window(self) -> int:
        return self.prompt_config.history_window

    def build_prompts(self, contexts: list) -> list[str]:
        return [build_prompt(c, self.history_window, self.prompt_config) for c in contexts]

    def act(self, contexts: list, rng: Optional[np.random.Generator] = None) -> list[tuple]:
        """[(action, probs)] per context; probs is over ``context.admissible`` (see acting.py)."""
        return [(d.action, d.probs) for d in self.decide(contexts, rng)]

    def decide(self, contexts: list, rng: Optional[np.random.Generator] = None,
               prompts: Optional[list] = None) -> list[AgentAction]:
        """Like :meth:`act` with the index and prompt too; ``prompts`` reuses prompts built already."""
        if not contexts:
            return []
        for c in contexts:
            if not c.admissible:
                raise ValueError(f"step {c.step} of task {c.task!r} has no admissible actions")
        rng = rng if rng is not None else np.random.default_rng()
        prompts = prompts if prompts is not None else self.build_prompts(contexts)
        if self.action_mode == "score":
            scores = self.backend.score_actions(prompts, [list(c.admissible) for c in contexts])
            out = []
            for c, p, s in zip(contexts, prompts, scores):
                i, probs = choose_action(s, c.admissible, self.temperature, rng, self.length_normalised)
                out.append(AgentAction(c.admissible[i], i, probs, p))
            return out
        from dmr_rl.models.backends.base import SamplingParams

        sampling = SamplingParams(max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                                  seed=int(rng.integers(2**31)))
        gens = self.backend.generate(prompts, sampling)
        out = []
        for c, p, g in zip(contexts, prompts, gens):
            action = match_action(g.text, c.admissible)
            i = list(c.admissible).index(action)
            out.append(AgentAction(action, i, one_hot(i, len(c.admissible)), p))
        return out

    @classmethod
    def from_checkpoint(cls, model_dir, backend, **overrides) -> "LMAgent":
        """An agent with the settings saved beside a trained checkpoint (``agent_config.json``);
        ``overrides`` (action_mode, temperature, history_window ...) win. Missing file: defaults."""
        settings = read_agent_config(model_dir)
        prompt = PromptConfig.from_dict(settings.get("prompt", {}))
        kw = {k: settings[k] for k in ("action_mode", "temperature", "max_new_tokens", "length_normalised")
              if k in settings}
        kw.update({k: v for k, v in overrides.items() if v is not None})
        return cls(backend, prompt=prompt, **kw)


def read_agent_config(model_dir) -> dict:
    path = Path(model_dir) / AGENT_CONFIG
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ModelError(f"{path}: not valid JSON ({e})") from e


class AgentPolicy:
    """The environments policy protocol over an :class:`LMAgent` (one env, history kept here)."""

    def __init__(self, agent: LMAgent, seed: Optional[int] = 0):
        self.agent = agent
        self.rng = np.random.default_rng(seed)
        self.history: list = []
        self._last_action: Optional[str] = None
        self.last_probs: Optional[np.ndarray] = None

    def reset(self, env=None) -> None:
        self.history = []
        self._last_action = None
        self.last_probs = None

    def context(self, obs: str, info: dict) -> StepContext:
        if self._last_action is not None:
            self.history.append((self._last_action, obs))
            self._last_action = None
        return StepContext(task=str(info.get("task", "")), obs=obs, history=list(self.history),
                           admissible=list(info.get("admissible_commands") or []),
                           step=int(info.get("step", len(self.history))),
                           task_type=str(info.get("task_type", "")))

    def act(self, obs: str, info: dict) -> str:
        ctx = self.context(obs, info)
        if not ctx.admissible:
            action, self.last_probs = "look", None
        else:
            action, self.last_probs = self.agent.act([ctx], self.rng)[0]
        self._last_action = action
        return action


# ---- finding the project's agents and their low-bit copies --------------------------------------
#: the agent ``dmr env eval --policy agent`` plays when no ``--model`` is given (default: the env's name);
#: an agent goes here once it meets its issue's bar on a fresh catalog (its training.json's eval)
DEFAULT_AGENTS: dict = {"alfworld": "alfworld-smollm2", "webshop": "webshop-smollm2"}


def agent_name(cfg) -> str:
    """The committed agent a run's tiers serve when their model_path is empty: ``agent.name``,
    else the directory named after the env (``alfworld``: the tiny 0.7M agent)."""
    return getattr(cfg.agent, "name", "") or cfg.env.name


def agent_dir(name: str) -> Path:
    """The committed agent ``dmr_rl/assets/agents/<name>`` as a loadable checkpoint directory (a
    LoRA agent: its merged copy, see :func:`resolve_agent_dir`); a ModelError naming the path
    when there is none."""
    d = ASSETS / name
    if not (d / "config.json").exists() and not is_adapter_dir(d):
        raise ModelError(f"no trained agent {name!r} at {d}: run "
                         f"`dmr train agent --env ENV --data DIR --out {d}`")
    return resolve_agent_dir(d)


def is_adapter_dir(model_dir) -> bool:
    """Whether ``model_dir`` holds a LoRA agent (adapter, no full checkpoint)."""
    from dmr_rl.models.lora import ADAPTER_CONFIG

    d = Path(model_dir)
    return (d / ADAPTER_CONFIG).exists() and not (d / "config.json").exists()


def resolve_agent_dir(model_dir) -> Path:
    """A LoRA agent's base merged with its adapter, as a plain checkpoint with the agent's own
    files: made once under ``$DMR_CACHE/agents/merged/<name>-<adapter digest>`` (the base from
    its package: ``agent_config.json``'s ``base``, ``smollm2`` or a checkpoint dir); the agent's
    small files (settings, training.json, calibration prompts) are copied afresh on every call.
    Any other directory is returned as it is."""
    import hashlib
    import shutil

    from dmr_rl.models.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS, merged_from_adapter

    src = Path(model_dir)
    if not is_adapter_dir(src):
        return src
    base = read_agent_config(src).get("base")
    if not base:
        raise ModelError(f"{src}: a LoRA adapter whose {AGENT_CONFIG} names no 'base' model")
    h = hashlib.sha256((src / ADAPTER_CONFIG).read_bytes())
    h.update((src / ADAPTER_WEIGHTS).read_bytes())
    h.update(str(base).encode())
    out = cache_root() / "agents" / "merged" / f"{src.name}-{h.hexdigest()[:12]}"
    if not (out / "config.json").exists():
        if base == "smollm2":
            from dmr_rl.models.smollm2 import fetch_smollm2

            base_dir = fetch_smollm2()
        else:
            base_dir = Path(base)

        def build(tmp: Path) -> None:
            merged_from_adapter(base_dir, src).save_pretrained(str(tmp))
            for f in src.iterdir():
                if f.is_file() and not f.name.startswith("adapter_"):
                    shutil.copy2(f, tmp / f.name)

        publish_dir(out, build)
    for name in (AGENT_CONFIG, TRAINING_INFO, "calib_prompts.json"):
        if (src / name).exists():
            shutil.copy2(src / name, out / name)
    return out


def lp_spec(model_dir) -> dict:
    """The low-bit copy the agent's ``training.json`` asks for (defaults: AWQ 3 bits, group 32)."""
    from dmr_rl.models.quantize import copy_dir_name

    info_path = Path(model_dir) / TRAINING_INFO
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    spec = {"method": "awq", "bits": 3, "group_size": 32, "engine": "llmcompressor", "group_size_overrides": {}}
    spec.update(info.get("lp", {}))
    spec.setdefault("dir", copy_dir_name(spec["method"], int(spec["bits"]), int(spec["group_size"]),
                                         spec["group_size_overrides"]))
    return spec


def lp_checkpoint(model_dir, env_name: str = "") -> Path:
    """Directory of the agent's low-bit copy: committed beside it, cached, or produced now."""
    model_dir = resolve_agent_dir(model_dir)
    spec = lp_spec(model_dir)
    for cand in (model_dir / spec["dir"], cache_root() / "agents" / (env_name or model_dir.name) / spec["dir"]):
        if (cand / "config.json").exists():
            return cand
    out = cache_root() / "agents" / (env_name or model_dir.name) / spec["dir"]
    if cache_root() in model_dir.parents:  # a merged LoRA agent: its copies live beside it
        out = model_dir / spec["dir"]
    from dmr_rl.models.quantize import quantize_checkpoint

    calib = calibration_prompts(model_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    quantize_checkpoint(str(model_dir), str(out), spec["method"], int(spec["bits"]),
                        int(spec["group_size"]), calib, engine=spec["engine"],
                        group_size_overrides=spec["group_size_overrides"])
    return out


def tier_model_dir(cfg, tier: str) -> str:
    """The checkpoint a tier serves: ``<tier>.model_path``, else the project's agent for the env
    (HP: the agent; LP: its low-bit copy, produced once if missing)."""
    t = getattr(cfg, tier)
    if t.model_path:
        return str(resolve_agent_dir(t.model_path)) if Path(t.model_path).is_dir() else t.model_path
    base = agent_dir(agent_name(cfg))
    return str(base if t.quant_method == "none" and t.bits == 16 else lp_checkpoint(base, cfg.env.name))


def calibration_prompts(model_dir, limit: int = 64) -> list[str]:
    path = Path(model_dir) / "calib_prompts.json"
    if not path.exists():
        raise ModelError(f"{path} is missing: the agent's own prompts are needed to calibrate AWQ")
    return list(json.loads(path.read_text()))[:limit]


def load_agent(model_dir, dtype: str = "auto", **overrides) -> LMAgent:
    """An :class:`LMAgent` over the checkpoint in ``model_dir`` (any backend load_backend knows),
    computing in ``dtype`` (``auto``: bf16 on CPUs with AMX / AVX-512-BF16, fp32 elsewhere)."""
    from dmr_rl.models import load_backend

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelError(f"model directory {model_dir} does not exist")
    model_dir = resolve_agent_dir(model_dir)
    backend = load_backend(model_path=str(model_dir), dtype=dtype)
    # a low-bit copy carries no agent_config.json of its own: use its parent agent's
    cfg_dir = model_dir if (model_dir / AGENT_CONFIG).exists() else model_dir.parent
    return LMAgent.from_checkpoint(cfg_dir, backend, **overrides)


def agent_policy_from_args(args, env) -> AgentPolicy:
    """``dmr env eval --policy agent``: ``--model DIR`` or the project's agent at ``--tier``."""
    model = getattr(args, "model", "") or ""
    tier = (getattr(args, "tier", "hp") or "hp").lower()
    env_name = getattr(args, "env", "") or getattr(env, "name", "")
    if tier not in ("hp", "lp"):
        raise ModelError(f"unknown tier {tier!r}; known: hp, lp")
    if model:  # a trained agent's directory: its low-bit copy with --tier lp
        if not Path(model).is_dir():
            raise ModelError(f"model directory {model} does not exist")
        model_dir = lp_checkpoint(Path(model), env_name) if tier == "lp" else Path(model)
    else:
        name = DEFAULT_AGENTS.get(env_name, env_name)
        model_dir = agent_dir(name) if tier == "hp" else lp_checkpoint(agent_dir(name), name)
    temperature = 0.0 if getattr(args, "temperature", None) is None else args.temperature
    return AgentPolicy(load_agent(model_dir, temperature=temperature), seed=getattr(args, "seed", 0))
