"""Per-step KL(HP || LP) and the labels stage 1 learns from.

Two spaces of KL, as in ``LabelConfig.kl_space``:

* ``actions``: the agent's distribution over the admissible actions at a step (softmax of the
  summed log-likelihoods, see ``ActionScores``): :func:`kl_categorical`.
* ``tokens``: teacher-forced next-token distributions over the chosen action's tokens
  (``TokenDistributions``: top-K ids + a tail bucket): :func:`kl_token_distributions`.

Labelling: :func:`label_by_budget` (the top ``rho`` share of steps by KL are positive),
:func:`label_by_threshold` (KL >= a threshold), :func:`soft_targets`, and :func:`label_steps`
which combines them. All functions are numpy in / numpy out (labelling is not differentiated).
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

_NEG = -1e30


def _log_normalize(x: np.ndarray, kind: str, mask: Optional[np.ndarray]) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if kind == "probs":
        x = np.log(np.clip(x, 1e-300, None))
    elif kind != "logits":
        raise ValueError(f"kind must be 'logits' (also for log-probs) or 'probs', got {kind!r}")
    if mask is not None:
        x = np.where(mask, x, _NEG)
    m = np.max(x, axis=-1, keepdims=True)
    return x - (m + np.log(np.sum(np.exp(x - m), axis=-1, keepdims=True)))


def kl_categorical(p, q, kind: str = "logits", mask=None) -> np.ndarray:
    """KL(p || q) of categorical distributions over the last axis.

    p, q: [..., A] logits / log-probs (``kind="logits"``; unnormalised is fine, they are
    log-softmaxed) or probabilities (``kind="probs"``). mask: optional [..., A] bool, False
    entries (padding of a ragged action list) are excluded. Returns [...] float64, >= 0.
    """
    p_arr, q_arr = np.asarray(p), np.asarray(q)
    if p_arr.shape != q_arr.shape:
        raise ValueError(f"kl_categorical: shapes differ, p {p_arr.shape} vs q {q_arr.shape}")
    if p_arr.shape[-1] == 0:
        raise ValueError("kl_categorical: empty action axis")
    mask = None if mask is None else np.asarray(mask, dtype=bool)
    lp, lq = _log_normalize(p_arr, kind, mask), _log_normalize(q_arr, kind, mask)
    pp = np.exp(lp)
    terms = np.where(pp > 0, pp * (lp - lq), 0.0)
    if mask is not None:
        terms = np.where(mask, terms, 0.0)
    return np.maximum(terms.sum(-1), 0.0)


def kl_from_action_logprobs(p_sum_logprobs, q_sum_logprobs) -> float:
    """KL between two tiers' action distributions at one step, from ``ActionScores.sum_logprobs``
    ([A] each, the same admissible list in the same order). Returns a float."""
    return float(kl_categorical(np.asarray(p_sum_logprobs)[None], np.asarray(q_sum_logprobs)[None])[0])


def _bucket_logprobs(ids: np.ndarray, logp: np.ndarray, union: np.ndarray,
                     vocab_size: Optional[int]) -> np.ndarray:
    """One position: a distribution over ``union`` ids + a rest bucket, [U+1] log-probs.

    Ids of ``union`` missing from this distribution's top-K get a share of its tail mass: the
    uniform-tail share tail / (V - K) when the vocabulary size V is known, else
    tail / (n_missing + 1); capped by the smallest known top-K probability (they ranked below
    it). What is left stays in the rest bucket; buckets are floored at 1e-12.
    """
    known = dict(zip(ids.tolist(), logp[:-1].tolist()))
    tail = math.exp(logp[-1]) if np.isfinite(logp[-1]) else 0.0
    missing = [u for u in union.tolist() if u not in known]
    share = 0.0
    if missing and tail > 0:
        slots = (vocab_size - len(known)) if vocab_size else len(missing) + 1
        smallest = math.exp(min(known.values())) if known else tail
        share = min(tail / max(slots, len(missing)), smallest)
    probs = np.array([math.exp(known[u]) if u in known else share for u in union.tolist()]
                     + [max(tail - share * len(missing), 0.0)])
    probs = np.maximum(probs, 1e-12)
    return np.log(probs / probs.sum())


def kl_token_distributions(p_ids, p_logprobs, q_ids, q_logprobs, reduce: str = "mean",
                           vocab_size: Optional[int] = None) -> float:
    """Teacher-forced token KL(p || q) over one continuation, from top-K + tail buckets.

    p_ids, q_ids: [T, K] int token ids of each distribution's top-K; p_logprobs, q_logprobs:
    [T, K+1] log-probs of those ids and, last column, of the remaining tail mass (-inf when K is
    the vocabulary), as in ``TokenDistributions``. Per position the KL is computed over the
    union of both top-K id sets plus one rest bucket: exact when K covers the vocabulary (or
    the union covers it and ``vocab_size`` is given); otherwise an estimate (see
    ``_bucket_logprobs``). reduce: "mean" or "sum" over the T positions.
    """
    p_ids, q_ids = np.asarray(p_ids), np.asarray(q_ids)
    p_lp, q_lp = np.asarray(p_logprobs, dtype=np.float64), np.asarray(q_logprobs, dtype=np.float64)
    if p_ids.shape[0] != q_ids.shape[0]:
        raise ValueError(f"kl_token_distributions: {p_ids.shape[0]} vs {q_ids.shape[0]} positions; "
                         "both tiers must be teacher-forced on the same continuation")
    if p_lp.shape != (p_ids.shape[0], p_ids.shape[1] + 1) or q_lp.shape != (q_ids.shape[0], q_ids.shape[1] + 1):
        raise ValueError("kl_token_distributions: logprobs must be [T, K+1] for token_ids [T, K]")
    if reduce not in ("mean", "sum"):
        raise ValueError(f"reduce must be 'mean' or 'sum', got {reduce!r}")
    T = p_ids.shape[0]
    if T == 0:
        return 0.0
    per_pos = np.empty(T)
    for t in range(T):
        union = np.unique(np.concatenate([p_ids[t], q_ids[t]]))
        a = _bucket_logprobs(p_ids[t], p_lp[t], union, vocab_size)
        b = _bucket_logprobs(q_ids[t], q_lp[t], union, vocab_size)
        per_pos[t] = kl_categorical(a, b)
    return float(per_pos.mean() if reduce == "mean" else per_pos.sum())


def kl_token(p, q, reduce: str = "mean", vocab_size: Optional[int] = None) -> float:
    """:func:`kl_token_distributions` on two ``TokenDistributions`` (HP first, then LP)."""
    return kl_token_distributions(p.token_ids, p.logprobs, q.token_ids, q.logprobs, reduce=reduce,
                                  vocab_size=vocab_size)


# ---------------------------------------------------------------------------------------------
# Labelling
# ---------------------------------------------------------------------------------------------
def _check_kl(kl) -> np.ndarray:
    kl = np.asarray(kl, dtype=np.float64).reshape(-1)
    if np.isnan(kl).any():
        raise ValueError(f"KL values contain NaN at step indices {np.flatnonzero(np.isnan(kl))[:5].tolist()}")
    return kl


def budget_cut(kl, rho: float) -> float:
    """The KL value above which a step is among the top ``rho`` share ([N] -> float; inf if none)."""
    kl = _check_kl(kl)
    n_pos = int(round(rho * len(kl)))
    if n_pos <= 0 or len(kl) == 0:
        return float("inf")
    return float(np.sort(kl)[::-1][n_pos - 1])


def label_by_budget(kl, rho: float) -> np.ndarray:
    """Top ``rho`` share of steps by KL -> 1, others 0. kl [N] -> labels [N] int64.

    At most ``round(rho * N)`` positives; ties at the cut are broken by step order (stable). A step
    with KL <= 0 (the tiers agree exactly) is never positive, even inside the budget.
    """
    if not 0.0 <= rho <= 1.0:
        raise ValueError(f"rho must be in [0, 1], got {rho}")
    kl = _check_kl(kl)
    n_pos = int(round(rho * len(kl)))
    labels = np.zeros(len(kl), dtype=np.int64)
    labels[np.argsort(-kl, kind="stable")[:n_pos]] = 1
    labels[kl <= 0] = 0
    return labels


def label_by_threshold(kl, threshold: float) -> np.ndarray:
    """KL >= threshold -> 1. kl [N] -> labels [N] int64."""
    return (_check_kl(kl) >= threshold).astype(np.int64)


def soft_targets(kl, cut: float, temperature: float = 0.5) -> np.ndarray:
    """Soft targets in (0, 1): sigmoid((log(kl + 1e-6) - log(cut + 1e-6)) / temperature).

    On a log scale because per-step KL is heavy-tailed; 0.5 at the cut. kl [N] -> [N] float64.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    kl = _check_kl(kl)
    if not np.isfinite(cut):
        return np.zeros_like(kl)
    z = (np.log(np.maximum(kl, 0) + 1e-6) - math.log(max(cut, 0) + 1e-6)) / temperature
    return 1.0 / (1.0 + np.exp(-z))


def label_steps(kl, mode: str = "budget", rho: float = 0.25, threshold: float = 0.1,
                soft: bool = False, temperature: float = 0.5):
    """Label steps from their KL. Returns (labels [N] int64, targets [N] float64, cut float).

    mode "budget": the top ``rho`` share; "threshold": KL >= ``threshold``. ``targets`` equal
    the labels unless ``soft``, then :func:`soft_targets` around the cut.
    """
    if mode == "budget":
        labels, cut = label_by_budget(kl, rho), budget_cut(kl, rho)
    elif mode == "threshold":
        labels, cut = label_by_threshold(kl, threshold), float(threshold)
    else:
        raise ValueError(f"label mode must be 'budget' or 'threshold', got {mode!r}")
    targets = soft_targets(kl, cut, temperature) if soft else labels.astype(np.float64)
    return labels, targets, cut


def kl_summary(kls) -> dict:
    """Summary of per-step KL values [N]: steps, mean, p50, p90, p99, max, and ``top5_share``, the
    share of the total KL held by the top 5% of steps (0.0 when the total is 0). Empty: {"steps": 0}."""
    k = np.sort(np.asarray(kls, dtype=np.float64))[::-1]
    if k.size == 0:
        return {"steps": 0}
    top = max(1, int(np.ceil(0.05 * k.size)))
    total = float(k.sum())
    return {"steps": int(k.size), "mean": float(k.mean()), "p50": float(np.percentile(k, 50)),
            "p90": float(np.percentile(k, 90)), "p99": float(np.percentile(k, 99)), "max": float(k[0]),
            "top5_share": float(k[:top].sum() / total) if total > 0 else 0.0}
