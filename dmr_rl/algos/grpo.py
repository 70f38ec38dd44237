"""Stage 2: GRPO over the router's per-step Bernoulli decisions (HP=1 / LP=0).

Pipeline, in the spirit of verl's ``core_algos``:

1. :func:`episode_rewards`: r = success (or WebShop score) - lambda * HP share of the episode's
   steps; hinge variant: r = success - lambda * max(0, share - budget).
2. :func:`group_advantages`: within each task's group of G rollouts, one of ``ADV_NORMS``:
   ``group_std``: A = (r - mean_group) / (std_group + eps), std unbiased (N-1), as in verl's GRPO
   outcome advantage; ``group_mean`` (Dr. GRPO, Liu et al. 2025): A = r - mean_group, no std
   division; ``batch_std``: A = (r - mean_group) / (std over the whole batch of r - mean_group
   + eps). A group of one gets A = 0; a group whose rewards are all equal gets A = 0 in every mode.

   Why it matters here: when all G rollouts of a task succeed (or all fail), rewards differ only
   by lambda x HP share, and ``group_std`` rescales those differences to unit size, so lambda =
   0.01, 0.3 and 3 give the same update on such groups (most groups, for a strong or a weak
   agent). ``group_mean`` keeps the reward's units: an all-success group's advantages are
   -lambda x (share - mean share), proportional to lambda, the same scale as a success
   difference of 1 in a mixed group. ``batch_std`` keeps the ratio between groups but rescales
   the whole batch (lambda's effect then depends on how many groups are mixed).
3. :func:`broadcast_to_steps`: each step gets its episode's advantage.
4. :func:`grpo_loss`: clipped-ratio policy gradient over the steps' decisions plus a KL
   penalty to the stage-1 (reference) router, averaged over valid steps ("token-mean": one
   routing decision is one token-equivalent).

KL penalty: by default the EXACT Bernoulli KL(pi_theta || pi_ref) at each step, computed from the
two routers' HP logits (both cheap to evaluate; zero variance). ``kl_kind="k3"`` uses Schulman's
k3 estimator on the taken action instead: exp(r) - 1 - r with r = log pi_ref(a) - log pi_theta(a).
"""
from __future__ import annotations

from typing import Optional

import numpy as np


def episode_rewards(success, hp_share, hp_cost: float, hp_budget: Optional[float] = None) -> np.ndarray:
    """success [N] (0/1 or a score in [0, 1]), hp_share [N] in [0, 1] -> rewards [N] float64.

    ``hp_budget`` None or < 0: linear cost ``hp_cost * share``; otherwise the hinge
    ``hp_cost * max(0, share - hp_budget)``.
    """
    s = np.asarray(success, dtype=np.float64).reshape(-1)
    h = np.asarray(hp_share, dtype=np.float64).reshape(-1)
    if s.shape != h.shape:
        raise ValueError(f"episode_rewards: success {s.shape} vs hp_share {h.shape}")
    if hp_budget is None or hp_budget < 0:
        return s - hp_cost * h
    return s - hp_cost * np.maximum(0.0, h - hp_budget)


ADV_NORMS = ("group_std", "group_mean", "batch_std")


def group_advantages(rewards, group_ids, eps: float = 1e-6, normalize_std: bool = True,
                     mode: str | None = None):
    """Group-relative advantages. rewards [N], group_ids [N] (hashable, e.g. task index).

    ``mode`` in ADV_NORMS (see the module docstring); None: ``group_std`` when
    ``normalize_std`` else ``group_mean`` (the older flag). Returns (advantages [N] float64,
    metrics: adv_abs_mean, zero_std_groups, groups).
    """
    mode = mode or ("group_std" if normalize_std else "group_mean")
    if mode not in ADV_NORMS:
        raise ValueError(f"advantage normalisation must be one of {ADV_NORMS}, got {mode!r}")
    r = np.asarray(rewards, dtype=np.float64).reshape(-1)
    g = np.asarray(group_ids).reshape(-1)
    if r.shape != g.shape:
        raise ValueError(f"group_advantages: rewards {r.shape} vs group_ids {g.shape}")
    adv = np.zeros_like(r)
    zero = 0
    uniq = list(dict.fromkeys(g.tolist()))
    for key in uniq:
        idx = np.flatnonzero(g == key)
        x = r[idx]
        std = float(np.std(x, ddof=1)) if len(x) > 1 else 0.0
        if len(x) < 2 or std < 1e-12:
            zero += 1
            continue
        adv[idx] = (x - x.mean()) / (std + eps) if mode == "group_std" else x - x.mean()
    if mode == "batch_std" and len(adv) > 1:
        adv = adv / (float(np.std(adv, ddof=1)) + eps)
    return adv, {"adv_abs_mean": float(np.abs(adv).mean()) if len(adv) else 0.0,
                 "zero_std_groups": zero, "groups": len(uniq)}


def broadcast_to_steps(episode_values, steps_per_episode) -> np.ndarray:
    """[E] per-episode values, [E] step counts -> [sum(counts)] per-step values, in episode order."""
    return np.repeat(np.asarray(episode_values, dtype=np.float64), np.asarray(steps_per_episode, dtype=np.int64))


def bernoulli_logprob(logits, actions):
    """log pi(a) for a Bernoulli with P(1) = sigmoid(logits). [B], [B] {0,1} -> [B] (torch)."""
    import torch.nn.functional as F

    a = actions.to(logits.dtype)
    return a * F.logsigmoid(logits) + (1 - a) * F.logsigmoid(-logits)


def bernoulli_kl(logits_p, logits_q):
    """Exact KL(Bern(sigmoid(lp)) || Bern(sigmoid(lq))) per element (torch, [B] -> [B])."""
    import torch
    import torch.nn.functional as F

    p = torch.sigmoid(logits_p)
    return (p * (F.logsigmoid(logits_p) - F.logsigmoid(logits_q))
            + (1 - p) * (F.logsigmoid(-logits_p) - F.logsigmoid(-logits_q)))


def bernoulli_entropy(logits):
    import torch
    import torch.nn.functional as F

    p = torch.sigmoid(logits)
    return -(p * F.logsigmoid(logits) + (1 - p) * F.logsigmoid(-logits))


def grpo_loss(logits, actions, old_logprobs, advantages, ref_logits=None, mask=None,
              clip_eps: float = 0.2, kl_coef: float = 0.05, kl_kind: str = "exact",
              entropy_coef: float = 0.0):
    """Clipped-ratio GRPO loss over per-step router decisions.

    logits [B]: current router's HP logits at the B steps; actions [B] {0,1}: the tiers taken;
    old_logprobs [B]: log-prob of the taken tier under the router that sampled it (recorded as
    ``StepRecord.router_logprob``); advantages [B]: the episode's advantage on each of its steps;
    ref_logits [B]: the reference (stage-1) router's HP logits (None or kl_coef 0: no KL term);
    mask [B]: 1 = counts.

    loss = mean_steps( max(-A * ratio, -A * clip(ratio, 1-eps, 1+eps)) )
           + kl_coef * mean_steps(KL(pi || pi_ref)) - entropy_coef * mean_steps(H(pi)).

    Returns (loss scalar tensor, metrics floats: loss, pg_loss, kl_to_ref, clip_frac,
    ratio_mean, ratio_max, entropy, approx_kl_old, hp_prob_mean).
    """
    import torch

    if kl_kind not in ("exact", "k3"):
        raise ValueError(f"kl_kind must be 'exact' or 'k3', got {kl_kind!r}")
    dev = logits.device
    logits = logits.reshape(-1).float()
    as_t = lambda x: torch.as_tensor(x, dtype=torch.float32, device=dev).reshape(-1)  # noqa: E731
    actions, old_lp, adv = as_t(actions), as_t(old_logprobs), as_t(advantages)
    m = torch.ones_like(logits) if mask is None else as_t(mask)
    for name, t in (("actions", actions), ("old_logprobs", old_lp), ("advantages", adv), ("mask", m)):
        if t.shape != logits.shape:
            raise ValueError(f"grpo_loss: {name} has shape {tuple(t.shape)}, logits {tuple(logits.shape)}")
    denom = m.sum().clamp_min(1.0)
    mean = lambda x: (x * m).sum() / denom  # noqa: E731

    logp = bernoulli_logprob(logits, actions)
    log_ratio = (logp - old_lp).clamp(-20.0, 20.0)
    ratio = torch.exp(log_ratio)
    pg1 = -adv * ratio
    pg2 = -adv * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    pg_loss = mean(torch.maximum(pg1, pg2))
    entropy = mean(bernoulli_entropy(logits))

    if ref_logits is not None and kl_coef != 0.0:
        ref = as_t(ref_logits)
        if kl_kind == "exact":
            kl = bernoulli_kl(logits, ref)
        else:
            r = (bernoulli_logprob(ref, actions) - logp).clamp(-20.0, 20.0)
            kl = torch.exp(r) - 1.0 - r
        kl_to_ref = mean(kl)
    else:
        kl_to_ref = torch.zeros((), device=dev)
    loss = pg_loss + kl_coef * kl_to_ref - entropy_coef * entropy

    with torch.no_grad():
        metrics = {
            "loss": float(loss.detach()), "pg_loss": float(pg_loss.detach()),
            "kl_to_ref": float(kl_to_ref.detach()),
            "clip_frac": float(mean((pg2 > pg1).float()).detach()),
            "ratio_mean": float(mean(ratio.detach())),
            "ratio_max": float((ratio.detach() * m).max()) if bool(m.any()) else 1.0,
            "entropy": float(entropy.detach()),
            "approx_kl_old": float(mean(torch.exp(-log_ratio.detach()) - 1.0 + log_ratio.detach())),
            "hp_prob_mean": float(mean(torch.sigmoid(logits.detach()))),
        }
    return loss, metrics
