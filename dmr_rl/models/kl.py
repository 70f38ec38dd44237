"""Per-step KL(P_HP || P_LP) between two precision tiers (pure numpy functions, no Ray, no torch).

Two spaces, as ``LabelConfig.kl_space`` names them:

``tokens``
    Teacher-forced on the action actually taken: at each of the action's T tokens, the KL between
    the two tiers' next-token distributions (:class:`TokenDistributions`), then the mean and the
    sum over the T tokens. With full-vocabulary distributions (top_k = 0) this is exact; with
    top-K plus a tail bucket it is the coarse-grained estimate of
    :func:`dmr_rl.algos.kl_labels.kl_token_distributions` (union of both top-K id sets plus a
    rest bucket; an id missing from one tier's top-K gets an equal share of that tier's tail,
    capped by its smallest top-K probability).

``actions``
    Over the admissible-action distribution of score mode: ``softmax(sum_logprobs)`` of each tier
    (:class:`ActionScores`, same candidate order), the distribution the agent acts from
    (see :mod:`dmr_rl.models.acting`).

The categorical and token KLs themselves live in :mod:`dmr_rl.algos.kl_labels` (one
implementation); this module applies them to the backends' outputs, batched.
Batch helpers return one value per step; :func:`step_kl` runs both tiers' backends.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from dmr_rl.algos.kl_labels import kl_categorical, kl_token_distributions
from dmr_rl.models.acting import action_logits


def token_kl(hp, lp, vocab_size: Optional[int] = None) -> np.ndarray:
    """[T] per-token KL(HP || LP) from two TokenDistributions of the same continuation.

    ``vocab_size`` (optional) lets a top-K estimate spread each tail uniformly over the vocabulary."""
    hp_ids, lp_ids = np.asarray(hp.token_ids), np.asarray(lp.token_ids)
    hp_lp, lp_lp = np.asarray(hp.logprobs, np.float64), np.asarray(lp.logprobs, np.float64)
    if hp_lp.shape[0] != lp_lp.shape[0]:
        raise ValueError(f"HP has {hp_lp.shape[0]} action tokens, LP {lp_lp.shape[0]}: "
                         "the two tiers must be teacher-forced on the same tokens")
    if hp_ids.shape == lp_ids.shape and np.array_equal(hp_ids, lp_ids):
        if hp_ids.shape[0] == 0:
            return np.zeros(0)
        if np.isneginf(hp_lp[:, -1]).all() and np.isneginf(lp_lp[:, -1]).all():
            hp_lp, lp_lp = hp_lp[:, :-1], lp_lp[:, :-1]  # full vocabulary: no tail bucket
        return kl_categorical(hp_lp, lp_lp)  # same support: exact
    return np.array([kl_token_distributions(hp_ids[t:t + 1], hp_lp[t:t + 1], lp_ids[t:t + 1],
                                            lp_lp[t:t + 1], reduce="sum", vocab_size=vocab_size)
                     for t in range(hp_ids.shape[0])])


def token_kl_batch(hp_dists: Sequence, lp_dists: Sequence,
                   vocab_size: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """Per step: (mean over action tokens, sum over action tokens) of KL(HP || LP); each [B].

    ``hp_dists[i]``, ``lp_dists[i]``: TokenDistributions of step i's (prompt, action) per tier.
    An action with no tokens has KL 0."""
    if len(hp_dists) != len(lp_dists):
        raise ValueError(f"{len(hp_dists)} HP distributions but {len(lp_dists)} LP distributions")
    means, sums = np.zeros(len(hp_dists)), np.zeros(len(hp_dists))
    for i, (h, l) in enumerate(zip(hp_dists, lp_dists)):
        kl = token_kl(h, l, vocab_size)
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
    return float(kl_categorical(a, b))


def action_kl_batch(hp_scores: Sequence, lp_scores: Sequence, length_normalised: bool = False) -> np.ndarray:
    """[B] action-space KL(HP || LP), one per step."""
    if len(hp_scores) != len(lp_scores):
        raise ValueError(f"{len(hp_scores)} HP scores but {len(lp_scores)} LP scores")
    return np.array([action_kl(h, l, length_normalised) for h, l in zip(hp_scores, lp_scores)])


def step_kl(hp_backend, lp_backend, prompts: list, actions: list, admissible: list | None = None,
            space: str = "tokens", top_k: int = 0, vocab_size: Optional[int] = None) -> dict:
    """Run both tiers on a batch of steps and return the per-step KL arrays.

    ``space="tokens"``: teacher-forced on ``actions`` -> {"kl_mean": [B], "kl_sum": [B]};
    ``space="actions"``: over ``admissible[i]`` -> {"kl": [B]}.
    """
    if len(prompts) != len(actions):
        raise ValueError(f"{len(prompts)} prompts but {len(actions)} actions")
    if space == "tokens":
        hp = hp_backend.token_distributions(prompts, actions, top_k=top_k)
        lp = lp_backend.token_distributions(prompts, actions, top_k=top_k)
        mean, total = token_kl_batch(hp, lp, vocab_size)
        return {"kl_mean": mean, "kl_sum": total}
    if space == "actions":
        if admissible is None or len(admissible) != len(prompts):
            raise ValueError("space='actions' needs one admissible list per prompt")
        hp = hp_backend.score_actions(prompts, admissible)
        lp = lp_backend.score_actions(prompts, admissible)
        return {"kl": action_kl_batch(hp, lp)}
    raise ValueError(f"unknown KL space {space!r}; known: tokens, actions")
