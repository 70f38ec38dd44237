"""Stage-1 router loss (binary cross-entropy) and classification metrics.

``bce_loss`` is torch (differentiated inside the learner); ``classification_metrics`` and
``auroc`` are numpy (evaluation on held-out steps).
"""
from __future__ import annotations

from typing import Optional

import numpy as np


def bce_loss(logits, targets, mask=None, pos_weight: Optional[float] = None):
    """Binary cross-entropy of the router's HP logits against hard or soft targets.

    logits: [B] float tensor (logit of P(HP)); targets: [B] in [0, 1] (labels or soft targets);
    mask: optional [B] (1 = counts); pos_weight: weight of the positive term (class imbalance:
    e.g. (1 - rho) / rho). Returns (loss scalar tensor, metrics dict of floats:
    bce, accuracy (vs targets >= 0.5), p_hp_mean, target_mean).
    """
    import torch
    import torch.nn.functional as F

    logits = logits.reshape(-1).float()
    targets = torch.as_tensor(targets, dtype=torch.float32, device=logits.device).reshape(-1)
    if logits.shape != targets.shape:
        raise ValueError(f"bce_loss: logits {tuple(logits.shape)} vs targets {tuple(targets.shape)}")
    pw = None if pos_weight is None else torch.tensor(float(pos_weight), device=logits.device)
    per = F.binary_cross_entropy_with_logits(logits, targets, pos_weight=pw, reduction="none")
    if mask is None:
        m = torch.ones_like(per)
    else:
        m = torch.as_tensor(mask, dtype=torch.float32, device=logits.device).reshape(-1)
    denom = m.sum().clamp_min(1.0)
    loss = (per * m).sum() / denom
    with torch.no_grad():
        p = torch.sigmoid(logits.detach())
        acc = (((p >= 0.5) == (targets >= 0.5)).float() * m).sum() / denom
        metrics = {"bce": float(loss.detach()), "accuracy": float(acc),
                   "p_hp_mean": float((p * m).sum() / denom),
                   "target_mean": float((targets * m).sum() / denom)}
    return loss, metrics


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of x with ties given their average rank. [N] -> [N] float64."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    ranks = np.empty(len(x), dtype=np.float64)
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and xs[j + 1] == xs[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def auroc(scores, labels) -> float:
    """Area under the ROC curve by the rank-sum (Mann-Whitney U) formula; ties count one half.

    scores [N] float, labels [N] {0,1}. NaN when only one class is present.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1).astype(bool)
    if s.shape != y.shape:
        raise ValueError(f"auroc: scores {s.shape} vs labels {y.shape}")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = _average_ranks(s)
    return float((r[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def classification_metrics(scores, labels, threshold: float = 0.5) -> dict:
    """Precision, recall, F1, accuracy at ``threshold`` and threshold-free AUROC.

    scores [N] (P(HP) or any monotone score), labels [N] {0,1} (targets >= 0.5 count as 1).
    Precision is NaN when nothing is predicted positive; recall NaN when no positives exist.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels, dtype=np.float64).reshape(-1) >= 0.5
    pred = s >= threshold
    tp = int((pred & y).sum())
    fp = int((pred & ~y).sum())
    fn = int((~pred & y).sum())
    precision = tp / (tp + fp) if tp + fp else float("nan")
    recall = tp / (tp + fn) if tp + fn else float("nan")
    f1 = (2 * precision * recall / (precision + recall)
          if tp and precision + recall > 0 else 0.0 if tp + fp and tp + fn else float("nan"))
    return {"precision": precision, "recall": recall, "f1": f1,
            "accuracy": float((pred == y).mean()) if len(y) else float("nan"),
            "auroc": auroc(s, y), "pos_rate": float(y.mean()) if len(y) else float("nan"),
            "pred_pos_rate": float(pred.mean()) if len(y) else float("nan"), "n": int(len(y))}
