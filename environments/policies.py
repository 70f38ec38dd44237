"""Reference policies over the TextEnv interface: the family's expert and a uniform random one.

A policy maps (observation, info) to a command. Agents backed by language models live in
``dmr_rl.models``; these two need no model and serve as data sources and sanity baselines.
"""
from __future__ import annotations

from typing import Optional, Protocol

import numpy as np

from environments.base import TextEnv


class Policy(Protocol):
    def reset(self, env: TextEnv) -> None: ...

    def act(self, obs: str, info: dict) -> str: ...


class ExpertPolicy:
    """Asks the environment's expert (ALFWorld's planner, WebShop's goal-reading oracle)."""

    def __init__(self) -> None:
        self.env: Optional[TextEnv] = None

    def reset(self, env: TextEnv) -> None:
        self.env = env

    def act(self, obs: str, info: dict) -> str:
        if self.env is None:
            raise RuntimeError("ExpertPolicy.reset(env) must be called before act()")
        return self.env.expert_action()


class RandomPolicy:
    """Uniform over the admissible commands, from its own seeded RNG."""

    def __init__(self, seed: Optional[int] = 0) -> None:
        self.rng = np.random.default_rng(seed)

    def reset(self, env: TextEnv) -> None:
        pass

    def act(self, obs: str, info: dict) -> str:
        cmds = info.get("admissible_commands") or []
        return str(cmds[int(self.rng.integers(len(cmds)))]) if cmds else "look"


POLICIES = {"expert": ExpertPolicy, "random": RandomPolicy}


def _explorer(seed=None):
    """ALFWorld's observation-only teacher (imported on use: it needs alfworld's tables)."""
    from environments.alfworld.teacher import ExplorerExpert

    return ExplorerExpert(seed)


POLICIES["explorer"] = _explorer
