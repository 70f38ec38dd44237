"""Typed configuration: loading, overrides and value checks of the schema in :mod:`dmr_rl.config_schema`.

YAML presets live in ``experiments/`` and hold any subset of the fields; ``load_config`` fills the
rest with defaults, applies ``section.field=value`` overrides from the command line, and validates
the result. The schema's classes are imported from here (``from dmr_rl.config import TierConfig``).
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import typing
from pathlib import Path
from typing import Any, Optional

import yaml

from dmr_rl.config_schema import (AgentConfig, CollectConfig, ConfigError, DMRConfig, EnvConfig, EvalConfig,  # noqa: F401
                                  GRPOConfig, LabelConfig, RayConfig, RouterConfig, SFTConfig, TierConfig)

# Value checks: (section, field) -> (predicate, message). Kept beside the fields they check.
CHOICES = {
    ("env", "name"): ("alfworld", "webshop"),
    ("agent", "action_mode"): ("score", "generate"),
    ("label", "mode"): ("budget", "threshold"),
    ("label", "kl_space"): ("actions", "tokens", "greedy_flip"),
    ("grpo", "adv_norm"): ("group_mean", "group_std", "batch_std"),
    ("collect", "policy"): ("hp", "lp", "mixed"),
    ("hp", "dtype"): ("auto", "float32", "bfloat16", "float16"),
    ("lp", "dtype"): ("auto", "float32", "bfloat16", "float16"),
    ("hp", "quant_method"): ("none", "awq", "rtn"),
    ("lp", "quant_method"): ("none", "awq", "rtn"),
}
RANGES = {
    ("label", "rho"): (0.0, 1.0),
    ("sft", "holdout"): (0.0, 0.9),
    ("sft", "pos_weight"): (0.0, 1e6),
    ("grpo", "clip_eps"): (0.0, 1.0),
    ("router", "threshold"): (0.0, 1.0),
    ("eval", "causal_flag_share"): (0.0, 0.9),
}
POSITIVE = {("collect", "episodes"), ("collect", "num_workers"), ("collect", "envs_per_worker"),
            ("grpo", "iterations"), ("grpo", "group_size"), ("grpo", "tasks_per_iter"),
            ("sft", "epochs"), ("sft", "batch_size")}


def validate(cfg: DMRConfig) -> DMRConfig:
    """Raise ConfigError naming the first bad value; return cfg unchanged otherwise."""
    for (sec, name), allowed in CHOICES.items():
        value = getattr(getattr(cfg, sec), name)
        if value not in allowed:
            raise ConfigError(f"{sec}.{name}={value!r} is not one of {list(allowed)}")
    for (sec, name), (lo, hi) in RANGES.items():
        value = getattr(getattr(cfg, sec), name)
        if not lo <= value <= hi:
            raise ConfigError(f"{sec}.{name}={value} is outside [{lo}, {hi}]")
    for sec, name in POSITIVE:
        if getattr(getattr(cfg, sec), name) <= 0:
            raise ConfigError(f"{sec}.{name} must be positive")
    for tier in ("hp", "lp"):
        t = getattr(cfg, tier)
        if t.bits not in (2, 3, 4, 8, 16):
            raise ConfigError(f"{tier}.bits={t.bits} is not a supported bit width (2, 3, 4, 8, 16)")
        if t.quant_method != "none" and t.bits == 16:
            raise ConfigError(f"{tier}.quant_method={t.quant_method!r} needs bits < 16")
        if t.tensor_parallel_size < 1:
            raise ConfigError(f"{tier}.tensor_parallel_size must be >= 1, got {t.tensor_parallel_size}")
        if t.tensor_parallel_size > 1 and t.backend != "vllm":
            raise ConfigError(f"{tier}.tensor_parallel_size={t.tensor_parallel_size} needs backend vllm "
                              f"(the {t.backend} backend does not shard)")
        if not 0.0 < t.gpu_memory_utilization <= 1.0:
            raise ConfigError(f"{tier}.gpu_memory_utilization={t.gpu_memory_utilization} is outside (0, 1]")
    if cfg.router.n_layers < 0 or (cfg.router.n_layers == 0 and cfg.router.features != "lp_hidden"):
        raise ConfigError(f"router.n_layers={cfg.router.n_layers}: a transformer needs >= 1 layer; 0 (a linear probe "
                          f"on the LP hidden state) needs router.features=lp_hidden (features is {cfg.router.features!r})")
    if cfg.router.hidden_layer < 0:
        raise ConfigError(f"router.hidden_layer={cfg.router.hidden_layer} must be >= 0 (0: the LP model's last layer)")
    if cfg.router.hp_first_steps < 0:
        raise ConfigError(f"router.hp_first_steps={cfg.router.hp_first_steps} must be >= 0 (0: the network routes "
                          f"every step)")
    if cfg.router.hidden_layer and cfg.router.features != "lp_hidden":
        raise ConfigError(f"router.hidden_layer={cfg.router.hidden_layer} is read only by router.features=lp_hidden "
                          f"(features is {cfg.router.features!r})")
    if cfg.env.generate_train_n < 0:
        raise ConfigError(f"env.generate_train_n={cfg.env.generate_train_n} must be >= 0 (0: a third of generate_n)")
    if cfg.env.generate_train_n and cfg.env.name != "alfworld":
        raise ConfigError(f"env.generate_train_n sizes generated ALFWorld games; env {cfg.env.name!r} does not read it")
    bad = [r for r in cfg.eval.routers if r not in MAIN_JOB_ROUTERS]
    if bad:
        raise ConfigError(f"eval.routers: {bad} are not routers of the main job; known: {list(MAIN_JOB_ROUTERS)}")
    if len(cfg.eval.seeds) < 1:
        raise ConfigError("eval.seeds must list at least one seed")
    if cfg.eval.episodes < 0 or cfg.eval.calib_episodes < 0 or cfg.eval.causal_episodes < 0:
        raise ConfigError("eval.episodes, eval.calib_episodes and eval.causal_episodes must be >= 0 (0: all tasks)")
    bad = [r for r in cfg.eval.target_hp_ratios if not isinstance(r, (int, float)) or not 0.0 < float(r) <= 1.0]
    if bad or not cfg.eval.target_hp_ratios:
        raise ConfigError(f"eval.target_hp_ratios must list ratios in (0, 1], got {cfg.eval.target_hp_ratios}")
    bad = [x for x in cfg.eval.escalate_shares if not isinstance(x, (int, float)) or not 0.0 <= float(x) < 1.0]
    if bad:
        raise ConfigError(f"eval.escalate_shares: {bad} are not shares of steps in [0, 1)")
    bad = [b for b in cfg.eval.calibrated_baselines if b not in CALIBRATED_BASELINES]
    if bad:
        raise ConfigError(f"eval.calibrated_baselines: {bad} cannot be calibrated; known: {list(CALIBRATED_BASELINES)}")
    check_quantization_and_paths(cfg)
    return cfg


MAIN_JOB_ROUTERS = ("sft", "grpo")  # the routers dmr run trains: stage 1's and GRPO's
CALIBRATED_BASELINES = ("cascade",)  # baselines with a knob calibrated like a router's threshold


QUANT_BITS = (2, 3, 4, 8)


def _model_widths(model_dir: Path) -> list:
    """The input widths of a checkpoint's quantized linears (hidden, attention, MLP) from its
    config.json; [] when there is none to read."""
    try:
        c = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        return []
    c = c.get("text_config", c)
    hidden, heads = c.get("hidden_size"), c.get("num_attention_heads")
    widths = [hidden, c.get("intermediate_size")]
    if hidden and heads:
        widths.append(int(c.get("head_dim") or hidden // heads) * int(heads))
    return sorted({int(w) for w in widths if isinstance(w, int) and w > 0})


def check_quantization_and_paths(cfg: DMRConfig) -> None:
    """What can be checked without loading a model: bit width and group size of each quantized
    tier, the group size against the widths of the checkpoint the LP copy is made from (its
    config.json, when it is on this machine), and, on a local Ray, that given paths exist."""
    for tier in ("hp", "lp"):
        t = getattr(cfg, tier)
        if t.quant_method != "none":
            if t.bits not in QUANT_BITS:
                raise ConfigError(f"{tier}.bits={t.bits}: {t.quant_method} supports {list(QUANT_BITS)} bits")
            if t.group_size <= 0 or t.group_size % 8:
                raise ConfigError(f"{tier}.group_size={t.group_size} must be a positive multiple of 8 "
                                  f"({t.quant_method} stores one scale per group of weights)")
            for pat, g in t.group_size_overrides.items():
                if not isinstance(g, int) or isinstance(g, bool) or g <= 0 or g % 8:
                    raise ConfigError(f"{tier}.group_size_overrides[{pat!r}]={g!r} must be a positive multiple of 8")
                try:
                    re.compile(str(pat))
                except re.error as e:
                    raise ConfigError(f"{tier}.group_size_overrides: {pat!r} is not a regular expression ({e})") from None
    local = not cfg.ray.address
    if local:
        for key, value in (("env.data_dir", cfg.env.data_dir), ("hp.model_path", cfg.hp.model_path),
                           ("lp.model_path", cfg.lp.model_path)):
            if value and not Path(value).is_dir():
                raise ConfigError(f"{key}={value!r} is not a directory")
    lp = cfg.lp
    if lp.quant_method != "none" and not lp.model_path:  # dmr run quantizes the HP checkpoint
        src = Path(cfg.hp.model_path) if cfg.hp.model_path else \
            Path(__file__).resolve().parent / "assets" / "agents" / (cfg.agent.name or cfg.env.name)
        widths = _model_widths(src)
        bad = [w for w in widths if w % lp.group_size]
        if bad:
            fits = [g for g in (128, 64, 32, 16, 8) if all(w % g == 0 for w in widths)]
            raise ConfigError(f"lp.group_size={lp.group_size} does not divide the model's widths {bad} "
                              f"({src / 'config.json'}); try {fits[:3]}")
    if cfg.ray.max_restarts < 0:
        raise ConfigError(f"ray.max_restarts must be >= 0, got {cfg.ray.max_restarts}")


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------
def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where} expects a boolean, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{where} expects {tp.__name__}, got {value!r}")
        try:
            out = tp(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where} expects {tp.__name__}, got {value!r}") from None
        if tp is int and isinstance(value, float) and value != out:
            raise ConfigError(f"{where} expects an integer, got {value!r}")
        return out
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{where} expects a string, got {value!r}")
        return str(value)
    if tp in (list, dict) or origin in (list, dict):
        want = list if (tp is list or origin is list) else dict
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, want):
            raise ConfigError(f"{where} expects a {want.__name__}, got {value!r}")
        return value
    return value


def _build(cls, data: dict, where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(known)
    if unknown:
        raise ConfigError(f"unknown key(s) {sorted(unknown)} in {where or 'config'}; known: {sorted(known)}")
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        key = f"{where}.{name}" if where else name
        kwargs[name] = _build(tp, value, key) if dataclasses.is_dataclass(tp) else _coerce(value, tp, key)
    obj = cls()
    for name, value in kwargs.items():
        if dataclasses.is_dataclass(value):
            merged = dataclasses.replace(getattr(obj, name), **{f.name: getattr(value, f.name)
                                                                   for f in dataclasses.fields(value)
                                                                   if f.name in data[name]})
            setattr(obj, name, merged)
        else:
            setattr(obj, name, value)
    return obj


def _set_path(data: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {p!r} is not a section")
    node[parts[-1]] = value


def apply_overrides(data: dict, overrides: Optional[list[str]]) -> dict:
    """Set each ``a.b=value`` override (value parsed as YAML) in the nested dict ``data``; returns it."""
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.field=value")
        key, raw = item.split("=", 1)
        _set_path(data, key.strip(), yaml.safe_load(raw) if raw.strip() else "")
    return data


def load_config(path: Optional[str] = None, overrides: Optional[list[str]] = None) -> DMRConfig:
    """Read a YAML preset (or defaults when ``path`` is None), apply ``a.b=value`` overrides, validate."""
    data: dict = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {p} is not valid YAML: {e}") from None
    apply_overrides(data, overrides)
    cfg = _build(DMRConfig, data, "")
    if not cfg.env.data_dir and cfg.env.name == "alfworld" and os.environ.get("ALFWORLD_DATA"):
        cfg.env.data_dir = os.environ["ALFWORLD_DATA"]
    return validate(cfg)


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: DMRConfig, path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def field_help(inst=None, prefix: str = "") -> list[tuple[str, str, Any]]:
    """(dotted name, help, default) for every field, for ``dmr config --fields``."""
    rows = []
    inst = DMRConfig() if inst is None else inst
    for f in dataclasses.fields(inst):
        value = getattr(inst, f.name)
        if dataclasses.is_dataclass(value):
            rows += field_help(value, f"{prefix}{f.name}.")
        else:
            rows.append((prefix + f.name, f.metadata.get("help", ""), value))
    return rows
