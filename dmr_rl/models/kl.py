"""Per-step KL(P_HP || P_LP) between two precision tiers (pure numpy functions, no Ray, no torch).

Two spaces, as ``LabelConfig.kl_space`` names them:

``tokens``
    Teacher-forced on the action actually taken: at each of the action's T tokens, the KL between
    the two tiers' next-token distributions (:class:`TokenDistributions`), then the mean and the
    sum over the T tokens. With full-vocabulary distributions (top_k = 0) this is exact. With
    top-K plus a tail bucket it is computed on the coarse partition {HP's top-K tokens, rest}:
    an LP log-prob missing from LP's own top-K is estimated as ``min(LP's K-th prob, LP tail /
    (missing + 1))`` (it lies in LP's tail and cannot exceed its K-th prob), and the rest bucket
    gets what LP mass is left. A coarse partition never increases KL (data-processing
    inequality), so up to that estimate it is a lower bound of the full KL.

``actions``
    Over the admissible-action distribution of score mode: ``softmax(sum_logprobs)`` of each tier
    (:class:`ActionScores`, same candidate order), the distribution the agent acts from
    (see :mod:`dmr_rl.models.acting`).

Batch helpers return one value per step; :func:`step_kl` runs both tiers' backends.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from dmr_rl.models.acting import action_logits

_TINY = 1e-30


def categorical_kl(logp: np.ndarray, logq: np.ndarray) -> np.ndarray:
    """KL(p || q) over the last axis from log-probabilities ([..., N] -> [...]).

    Entries with p = 0 contribute 0; p > 0 where q = 0 gives +inf. Inputs need not be exactly
    normalised (they are renormalised)."""
    logp = np.asarray(logp, dtype=np.float64)
    logq = np.asarray(logq, dtype=np.float64)
    logp = logp - _logsumexp(logp)[..., None]
    logq = logq - _logsumexp(logq)[..., None]
    p = np.exp(logp)
    with np.errstate(invalid="ignore"):
        terms = np.where(p > 0, p * (logp - logq), 0.0)
    return np.maximum(terms.sum(axis=-1), 0.0)


def _logsumexp(x: np.ndarray) -> np.ndarray:
    m = np.max(x, axis=-1)
    m_safe = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        return m_safe + np.log(np.exp(x - m_safe[..., None]).sum(axis=-1))


def token_kl(hp, lp) -> np.ndarray:
    """[T] per-token KL(HP || LP) from two TokenDistributions of the same continuation."""
    hp_ids, lp_ids = np.asarray(hp.token_ids), np.asarray(lp.token_ids)
    hp_lp, lp_lp = np.asarray(hp.logprobs, np.float64), np.asarray(lp.logprobs, np.float64)
    if hp_lp.shape[0] != lp_lp.shape[0]:
        raise ValueError(f"HP has {hp_lp.shape[0]} action tokens, LP {lp_lp.shape[0]}: "
                         "the two tiers must be teacher-forced on the same tokens")
    if hp_ids.shape[0] == 0:
        return np.zeros(0)
    if hp_ids.shape == lp_ids.shape and np.array_equal(hp_ids, lp_ids):
        return categorical_kl(hp_lp, lp_lp)  # same support (e.g. both full vocabulary): exact
    return np.array([_kl_on_hp_support(hp_ids[t], hp_lp[t], lp_ids[t], lp_lp[t])
                     for t in range(hp_ids.shape[0])])


def _kl_on_hp_support(hp_ids, hp_logp, lp_ids, lp_logp) -> float:
    """KL at one position on the partition {HP's top-K ids, rest} (see the module docstring)."""
    k = len(hp_ids)
    p = np.exp(hp_logp[:k])
    p_rest = float(np.exp(hp_logp[k])) if hp_logp.shape[0] > k else 0.0
    lp_map = {int(i): float(np.exp(v)) for i, v in zip(lp_ids, lp_logp[: len(lp_ids)])}
    lp_tail = float(np.exp(lp_logp[len(lp_ids)])) if lp_logp.shape[0] > len(lp_ids) else 0.0
    missing = [int(i) for i in hp_ids if int(i) not in lp_map]
    if missing:
        kth = min(lp_map.values()) if lp_map else lp_tail
        guess = min(kth, lp_tail / (len(missing) + 1))
        for i in missing:
            lp_map[i] = guess
    q = np.array([lp_map[int(i)] for i in hp_ids])
    q_rest = max(1.0 - q.sum(), 0.0)
    p_all = np.append(p, p_rest)
    q_all = np.append(q, q_rest)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p_all > 0, p_all * (np.log(np.maximum(p_all, _TINY)) - np.log(q_all)), 0.0)
    return float(max(terms.sum(), 0.0))


def token_kl_batch(hp_dists: Sequence, lp_dists: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """Per step: (mean over action tokens, sum over action tokens) of KL(HP || LP); each [B].

    ``hp_dists[i]``, ``lp_dists[i]``: TokenDistributions of step i's (prompt, action) per tier.
    An action with no tokens has KL 0."""
    if len(hp_dists) != len(lp_dists):
        raise ValueError(f"{len(hp_dists)} HP distributions but {len(lp_dists)} LP distributions")
    means, sums = np.zeros(len(hp_dists)), np.zeros(len(hp_dists))
    for i, (h, l) in enumerate(zip(hp_dists, lp_dists)):
        kl = token_kl(h, l)
        sums[i] = kl.sum()
        means[i] = kl.mean() if kl.size else 0.0
    return means, sums


def action_kl(hp_scores, lp_scores, length_normalised: bool = False) -> float:
    """KL(HP || LP) over the admissible-action distribution of one step (two ActionScores)."""
    a, b = action_logits(hp_scores, length_normalised), action_logits(lp_scores, length_normalised)
    if a.shape != b.shape:
        raise ValueError(f"HP scored {a.shape[0]} actions, LP {b.shape[0]}: same candidates needed")
    if a.size == 0:
        return 0.0
    return float(categorical_kl(a, b))


def action_kl_batch(hp_scores: Sequence, lp_scores: Sequence, length_normalised: bool = False) -> np.ndarray:
    """[B] action-space KL(HP || LP), one per step."""
    if len(hp_scores) != len(lp_scores):
        raise ValueError(f"{len(hp_scores)} HP scores but {len(lp_scores)} LP scores")
    return np.array([action_kl(h, l, length_normalised) for h, l in zip(hp_scores, lp_scores)])


def step_kl(hp_backend, lp_backend, prompts: list, actions: list, admissible: list | None = None,
            space: str = "tokens", top_k: int = 0) -> dict:
    """Run both tiers on a batch of steps and return the per-step KL arrays.

    ``space="tokens"``: teacher-forced on ``actions`` -> {"kl_mean": [B], "kl_sum": [B]};
    ``space="actions"``: over ``admissible[i]`` -> {"kl": [B]}.
    """
    if len(prompts) != len(actions):
        raise ValueError(f"{len(prompts)} prompts but {len(actions)} actions")
    if space == "tokens":
        hp = hp_backend.token_distributions(prompts, actions, top_k=top_k)
        lp = lp_backend.token_distributions(prompts, actions, top_k=top_k)
        mean, total = token_kl_batch(hp, lp)
        return {"kl_mean": mean, "kl_sum": total}
    if space == "actions":
        if admissible is None or len(admissible) != len(prompts):
            raise ValueError("space='actions' needs one admissible list per prompt")
        hp = hp_backend.score_actions(prompts, admissible)
        lp = lp_backend.score_actions(prompts, admissible)
        return {"kl": action_kl_batch(hp, lp)}
    raise ValueError(f"unknown KL space {space!r}; known: tokens, actions")
