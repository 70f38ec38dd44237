"""The router interface: given a batch of step contexts, choose HP (1) or LP (0) for each.

Learned routers and baselines (HP-only, LP-only, random, first-k, LP-confidence cascade,
KL oracle) all implement :class:`Router`, registered by name in ``dmr_rl.router.ROUTERS``, so a
rollout or an evaluation takes any of them in place of another.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Optional

import numpy as np


@dataclass
class RouteDecision:
    """Per context: chosen tier (HP=1/LP=0), P(HP), and log-prob of the chosen tier."""

    tiers: np.ndarray  # [B] int
    p_hp: np.ndarray  # [B] float
    logprobs: np.ndarray  # [B] float


class Router(abc.ABC):
    name: str = "router"
    #: True for routers that must see the LP model's action distribution first (the cascade):
    #: the rollout then calls ``route(contexts, lp_action_probs=...)`` after an LP pass.
    needs_lp_first: bool = False
    #: True for references that need both tiers' action distributions at every step (KL oracle):
    #: the rollout computes both and passes them; the cost of both is charged.
    needs_both: bool = False
    #: True for routers that read the LP model's hidden state of the prompt (``lp_hidden``
    #: features): the rollout runs the LP prompt pass first, charges it, and passes
    #: ``lp_hidden=[vector per context]`` to ``route``.
    needs_lp_hidden: bool = False
    #: With ``needs_lp_hidden``: the LP decoder layer whose state the router reads (0: the last);
    #: a router wrapping another must pass its inner router's on, as it passes ``needs_lp_hidden``.
    hidden_layer: int = 0

    @abc.abstractmethod
    def route(self, contexts: list, rng: np.random.Generator, sample: bool = False,
              lp_action_probs: Optional[list] = None,
              hp_action_probs: Optional[list] = None) -> RouteDecision:
        """Decide for each StepContext. ``sample``: draw from P(HP) (GRPO) instead of thresholding.

        ``lp_action_probs``/``hp_action_probs``: per context, the tier's probability vector over
        ``context.admissible`` (given only to routers that declare they need them).
        """

    def both_tiers_at(self, context) -> bool:
        """Whether this step also runs the tier the router did not pick (both are charged), so the
        step records whether their greedy actions agree. Asked of routers that need neither both
        tiers everywhere (``needs_both``) nor the LP pass first; the causal check's forced-LP
        replays answer True on their forced steps only."""
        return False

    #: True for routers that may hand a step they gave LP on to HP after seeing LP's action
    #: distribution there (a learned router with an LP-confidence floor): the rollout runs LP on
    #: the steps ``route`` gave it, asks ``escalate``, and runs HP on top where it says so (both paid).
    escalates: bool = False

    def escalate(self, contexts: list, lp_action_probs: list) -> np.ndarray:
        """[B] bool for the B contexts ``route`` gave LP: True where HP should act instead, given
        LP's probability vector over each context's admissible actions. Only asked of routers with
        ``escalates``."""
        raise NotImplementedError(f"{type(self).__name__} does not escalate LP steps")

    def get_weights(self) -> Optional[dict]:
        """Learned routers: a state dict to ship to rollout workers; baselines: None."""
        return None

    def set_weights(self, weights: Optional[dict]) -> None:
        pass
