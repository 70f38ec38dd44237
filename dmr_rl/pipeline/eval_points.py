"""Evaluation's operating points: which (method, knob setting) pairs ``dmr eval`` plays, and how.

An :class:`OperatingPoint` names a method and its knob setting and carries what a rollout worker
needs to route by it (``RolloutWorker.set_router``'s spec) and whether it is played once (greedy on a
deterministic environment) or under every seed. :func:`router_points` builds a router's points
from its calibrated thresholds, :func:`baseline_points` the fixed baselines' sweeps
(``BASELINE_SWEEPS``), :func:`baseline_point` one matched baseline. No Ray, no models.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

BASELINE_SWEEPS = {  # baseline -> (router kwarg, values, point-name format), used when no router sets the cost
    "hp_only": (None, [None], "default"),
    "lp_only": (None, [None], "default"),
    "random": ("hp_ratio", [0.1, 0.25, 0.4, 0.6, 0.8], "ratio{:.2f}"),
    "first_k": ("k", [1, 2, 4, 8], "k{}"),
    "cascade": ("max_prob_threshold", [0.3, 0.5, 0.7, 0.9], "p{:.2f}"),
    "kl_oracle": ("kl_threshold", [0.02, 0.1, 0.3, 1.0], "kl{:g}"),
    "flip_oracle": (None, [None], "default"),
}
MATCHED = ("random", "first_k")  # baselines run at each router point's realised HP ratio
STOCHASTIC_BASELINES = {"random"}
ROUTER_METHOD = "router"
MATCH_TOLERANCE = 0.02


@dataclass
class OperatingPoint:
    method: str  # the name in results ("router", "hp_only", "random", ...)
    point: str  # the knob setting ("r0.20", "sampled", "ratio0.25", "default")
    spec: object  # what RolloutWorker.set_router takes: {"name", "kwargs"} or a Router instance
    params: dict = field(default_factory=dict)
    default: bool = False
    stochastic: bool = False  # played under every seed; else once
    sample: bool = False  # the router samples its decision (a GRPO router's trained policy)


def parse_router_ckpts(items) -> dict:
    """``["DIR", "NAME=DIR", ...]`` -> {method name: dir}; a bare DIR goes to "router"."""
    out: dict = {}
    for item in items or []:
        name, _, path = item.rpartition("=") if "=" in item else ("", "", item)
        name = name or ROUTER_METHOD
        if not (Path(path) / "router.json").is_file():
            raise FileNotFoundError(f"--router-ckpt {item!r}: no router checkpoint (router.json) in {path}")
        if name in out:
            raise ValueError(f"--router-ckpt: two checkpoints named {name!r}; give each its own NAME=DIR")
        out[name] = str(path)
    return out


def env_is_deterministic(cfg) -> bool:
    """Greedy acting on a deterministic environment replays the same episode under every seed."""
    from environments import env_class

    return bool(getattr(env_class(cfg.env.name), "deterministic", False)) and float(cfg.agent.temperature) <= 0.0


def router_points(cfg, router_dirs: dict, calibration: dict, baselines=()) -> list:
    """Each router at its calibrated thresholds, and with its LP-confidence floor where calibration
    chose one (method ``<name>_escalate``); a GRPO-trained one also as its sampled policy
    (``eval.sampled``); each
    calibrated baseline (names; the cascade: 1 - LP max prob >= threshold escalates to HP) at its
    thresholds, as method ``<name>_calibrated`` of kind router (compared like a router point)."""
    from dmr_rl.pipeline.calibrate import calibrated_method
    from dmr_rl.pipeline.escalation import escalation_method

    det = env_is_deterministic(cfg)
    points = []
    for name in baselines:
        method = calibrated_method(name)
        for target, t in calibration[method]["thresholds"].items():
            points.append(OperatingPoint(method, f"r{float(target):.2f}",
                                         {"name": name, "kwargs": {"score_threshold": float(t)}},
                                         {"kind": "router", "calibrated_baseline": name, "threshold": float(t),
                                          "target_hp_ratio": float(target)}, stochastic=not det))
    def threshold_point(method: str, d, target, t: float, meta: dict, floor=None, **params) -> OperatingPoint:
        """A learned router at threshold ``t`` (calibrated to ``target``), with LP floor ``floor`` if any."""
        kwargs = {"path": str(d), "threshold": float(t), "num_threads": 1}
        if floor is not None:
            kwargs["lp_escalate_below"] = params["lp_floor"] = floor
        return OperatingPoint(method, f"r{float(target):.2f}", {"name": "transformer", "kwargs": kwargs},
                              {"kind": "router", "checkpoint": str(d), "threshold": float(t),
                               "target_hp_ratio": float(target), **params, **meta}, stochastic=not det)

    for name, d in router_dirs.items():
        meta = _ckpt_meta(d)
        for target, t in calibration[name]["thresholds"].items():
            points.append(threshold_point(name, d, target, t, meta))
        for target, c in calibration.get(escalation_method(name), {}).get("choices", {}).items():
            points.append(threshold_point(escalation_method(name), d, target, c["threshold"], meta,
                                          floor=c["lp_floor"], escalate_share=c["share"]))
        if meta.get("stage") == "grpo" and cfg.eval.sampled:
            spec = {"name": "transformer", "kwargs": {"path": str(d), "num_threads": 1}}
            points.append(OperatingPoint(name, "sampled", spec, {"kind": "router", "checkpoint": str(d),
                                                                  "sampled": True, **meta},
                                         stochastic=True, sample=True))
    return points


def sweep_points(sweep_ckpts: dict) -> list:
    """The GRPO routers of a lambda sweep as their sampled policies (kind ``lambda_sweep``)."""
    return [OperatingPoint(name, "sampled", {"name": "transformer", "kwargs": {"path": str(d), "num_threads": 1}},
                           {"kind": "lambda_sweep", "checkpoint": str(d), "sampled": True, **_ckpt_meta(d)},
                           stochastic=True, sample=True)
            for name, d in sweep_ckpts.items()]


def baseline_points(cfg, names: list) -> list:
    """Fixed sweeps of the named baselines (``eval.baseline_sweeps`` overrides a sweep's values)."""
    det = env_is_deterministic(cfg)
    points = []
    for name in names:
        if name not in BASELINE_SWEEPS:
            raise ValueError(f"unknown method {name!r}: not a baseline {sorted(BASELINE_SWEEPS)} "
                             f"and no --router-ckpt was given under that name")
        knob, values, fmt = BASELINE_SWEEPS[name]
        values = list(cfg.eval.baseline_sweeps.get(name, values))
        for v in values:
            kwargs = {} if knob is None else {knob: v}
            points.append(baseline_point(name, fmt.format(v) if knob else fmt, kwargs, det))
    return points


def baseline_point(name: str, point: str, kwargs: dict, det: bool, **params) -> OperatingPoint:
    """Baseline ``name`` with router kwargs ``kwargs`` as point ``point`` (``params`` go to point.json)."""
    return OperatingPoint(name, point, {"name": name, "kwargs": dict(kwargs)},
                          {"kind": "baseline", **kwargs, **params},
                          stochastic=(name in STOCHASTIC_BASELINES) or not det)


def _ckpt_meta(directory) -> dict:
    """Training facts recorded beside a router checkpoint by GRPO (``grpo.json`` in the checkpoint
    directory or its parent: ``stage``, ``hp_cost``, ``hp_budget``; {} for a stage-1 router), and
    the routing rule its ``router.json`` carries (``hp_first_steps``, when set)."""
    from dmr_rl.report.layout import read_json

    out: dict = {}
    rule = Path(directory) / "router.json"
    first = read_json(rule).get("config", {}).get("hp_first_steps", 0) if rule.is_file() else 0
    if first:
        out["hp_first_steps"] = int(first)
    for base in (Path(directory), Path(directory).parent):
        p = base / "grpo.json"
        if p.is_file():
            d = read_json(p)
            return {**out, **{k: d[k] for k in ("stage", "hp_cost", "hp_budget", "adv_norm") if k in d}}
    return out
