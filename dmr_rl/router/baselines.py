"""Baseline routers: fixed policies and references the learned router is compared with.

Every baseline returns a :class:`RouteDecision` whose ``p_hp`` is a score (1 = HP) that a
threshold sweep can use, and whose ``logprobs`` are those of the (deterministic or random)
decision rule: 0 for deterministic rules, log(ratio)/log(1 - ratio) for ``random``.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from dmr_rl.router.base import RouteDecision, Router


def _det(tiers, score=None) -> RouteDecision:
    tiers = np.asarray(tiers, dtype=np.int64)
    p = tiers.astype(np.float64) if score is None else np.asarray(score, dtype=np.float64)
    return RouteDecision(tiers=tiers, p_hp=p, logprobs=np.zeros(len(tiers)))


class HPOnlyRouter(Router):
    name = "hp_only"

    def __init__(self, **_):
        pass

    def route(self, contexts, rng, sample=False, lp_action_probs=None, hp_action_probs=None, **_):
        return _det(np.ones(len(contexts)))


class LPOnlyRouter(Router):
    name = "lp_only"

    def __init__(self, **_):
        pass

    def route(self, contexts, rng, sample=False, lp_action_probs=None, hp_action_probs=None, **_):
        return _det(np.zeros(len(contexts)))


class RandomRouter(Router):
    """HP with probability ``hp_ratio`` at every step (the rollout's rng draws)."""

    name = "random"

    def __init__(self, hp_ratio: float = 0.25, **_):
        if not 0.0 <= hp_ratio <= 1.0:
            raise ValueError(f"random router: hp_ratio must be in [0, 1], got {hp_ratio}")
        self.hp_ratio = float(hp_ratio)

    def route(self, contexts, rng, sample=False, lp_action_probs=None, hp_action_probs=None, **_):
        tiers = (rng.random(len(contexts)) < self.hp_ratio).astype(np.int64)
        with np.errstate(divide="ignore"):
            logp = np.where(tiers == 1, np.log(self.hp_ratio), np.log(1.0 - self.hp_ratio))
        return RouteDecision(tiers=tiers, p_hp=np.full(len(contexts), self.hp_ratio), logprobs=logp)


class FirstKRouter(Router):
    """HP on the first ``k`` steps of each episode (planning happens early), LP after."""

    name = "first_k"

    def __init__(self, k: int = 3, **_):
        if k < 0:
            raise ValueError(f"first_k router: k must be >= 0, got {k}")
        self.k = int(k)

    def route(self, contexts, rng, sample=False, lp_action_probs=None, hp_action_probs=None, **_):
        steps = np.array([c.step for c in contexts])
        return _det(steps < self.k, score=1.0 / (1.0 + np.maximum(steps - self.k + 1, 0)))


def _entropy(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def _as_probs(v, where: str) -> np.ndarray:
    p = np.asarray(v, dtype=np.float64).reshape(-1)
    if p.size == 0 or not np.isfinite(p).all() or (p < 0).any():
        raise ValueError(f"{where}: action probabilities must be a non-empty finite non-negative vector")
    return p / p.sum()


class CascadeRouter(Router):
    """LP acts first; route to HP when LP is uncertain: max prob < ``max_prob_threshold`` or
    (if ``entropy_threshold`` is set) entropy > it. Score p_hp = 1 - LP max prob.
    ``score_threshold`` (a calibrated cascade, :mod:`dmr_rl.pipeline.calibrate`) replaces both:
    HP where the score >= it, the rule a learned router's threshold follows."""

    name = "cascade"
    needs_lp_first = True

    def __init__(self, max_prob_threshold: float = 0.5, entropy_threshold: Optional[float] = None,
                 score_threshold: Optional[float] = None, **_):
        self.max_prob_threshold = float(max_prob_threshold)
        self.entropy_threshold = entropy_threshold
        self.score_threshold = score_threshold

    def route(self, contexts, rng, sample=False, lp_action_probs=None, hp_action_probs=None, **_):
        if lp_action_probs is None or len(lp_action_probs) != len(contexts):
            raise ValueError("cascade router needs lp_action_probs: one LP action distribution per context")
        tiers, score = [], []
        for v in lp_action_probs:
            p = _as_probs(v, "cascade router")
            if self.score_threshold is not None:
                hp = 1.0 - p.max() >= self.score_threshold
            else:
                hp = p.max() < self.max_prob_threshold
                if self.entropy_threshold is not None:
                    hp = hp or _entropy(p) > self.entropy_threshold
            tiers.append(int(hp))
            score.append(1.0 - p.max())
        return _det(tiers, score)


class KLOracleRouter(Router):
    """Reference that sees both tiers: HP when KL(HP || LP) of the step's action distributions
    exceeds ``kl_threshold``. Score p_hp = KL / (1 + KL)."""

    name = "kl_oracle"
    needs_both = True

    def __init__(self, kl_threshold: float = 0.1, **_):
        self.kl_threshold = float(kl_threshold)

    def route(self, contexts, rng, sample=False, lp_action_probs=None, hp_action_probs=None, **_):
        if (lp_action_probs is None or hp_action_probs is None
                or len(lp_action_probs) != len(contexts) or len(hp_action_probs) != len(contexts)):
            raise ValueError("kl_oracle router needs hp_action_probs and lp_action_probs per context")
        from dmr_rl.algos.kl_labels import kl_categorical

        kls = []
        for ph, pl in zip(hp_action_probs, lp_action_probs):
            ph, pl = _as_probs(ph, "kl_oracle router"), _as_probs(pl, "kl_oracle router")
            if ph.shape != pl.shape:
                raise ValueError(f"kl_oracle router: HP and LP distributions differ in size {ph.shape} vs {pl.shape}")
            kls.append(float(kl_categorical(ph, pl, kind="probs")))
        kls = np.array(kls)
        return _det(kls > self.kl_threshold, kls / (1.0 + kls))


class FlipOracleRouter(Router):
    """Reference that sees both tiers: HP exactly where the tiers' greedy actions differ (the steps
    where LP would change what the agent does). The upper bound a per-step router can reach with
    a greedy agent: its acting HP share is the flip rate, its success HP-only's when every flip
    matters. Score p_hp = 1 for a flip."""

    name = "flip_oracle"
    needs_both = True

    def __init__(self, **_):
        pass

    def route(self, contexts, rng, sample=False, lp_action_probs=None, hp_action_probs=None, **_):
        if (lp_action_probs is None or hp_action_probs is None
                or len(lp_action_probs) != len(contexts) or len(hp_action_probs) != len(contexts)):
            raise ValueError("flip_oracle router needs hp_action_probs and lp_action_probs per context")
        flips = [int(np.argmax(_as_probs(ph, "flip_oracle router")) != np.argmax(_as_probs(pl, "flip_oracle router")))
                 for ph, pl in zip(hp_action_probs, lp_action_probs)]
        return _det(flips)
