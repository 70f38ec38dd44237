"""RouteLLM's trade-off metrics over a router's measured points: pure numpy, no Ray.

APGR / CPT (:func:`routellm_tradeoff`) as RouteLLM defines them (lm-sys/RouteLLM,
``routellm/evals/evaluate.py``, ``generate_results``): the router's thresholds are swept (here:
calibrated on a validation split beforehand), quality is plotted against the share of
strong-model calls, ``AUC = np.trapz(accuracy, strong_share)`` over the measured points sorted
by share, ``weak_auc`` / ``strong_auc`` the same integral of the constant weak / strong
accuracy over the same points, ``APGR = (AUC - weak_auc) / (strong_auc - weak_auc)``; CPT(x%)
is the strong-call share at which quality recovers x% of the weak->strong gap. Here the
curve is the MEASURED points only: the router's threshold points plus the measured LP-only
point (at its HP ratio, 0) and the measured HP-only point (at 1); no assumed lines beyond them,
no envelope, no point dropped. CPT(x%) = the smallest measured HP ratio whose quality reaches
weak + x% (strong - weak) (RouteLLM interpolates with ``np.interp``, which presumes a monotone
curve; we report the measured point), None when no point does. Quality is per episode
(success, or the WebShop score) and the x-axis is the per-step HP ratio (:mod:`dmr_rl.report.metrics`), since a router
decides at every step of an episode.

CIs come from the same task resamples as the other metrics (:func:`dmr_rl.report.metrics.resample_weights`).
"""
from __future__ import annotations

import math

import numpy as np

from dmr_rl.report.metrics import LEVEL, interval, mean_with_ci, resample_weights


def apgr_cpt(xs, qs, weak, strong, levels=(50, 80)):
    """APGR and CPT over measured curves, vectorised over leading axes.

    xs, qs: [..., P] the measured points' HP ratios and qualities (the curve, LP-only and HP-only
    points included, any order); weak, strong: [...] LP-only and HP-only quality. Returns
    (apgr [...], {level: cpt [...]}): APGR = (AUC - weak_auc) / (strong_auc - weak_auc) with
    trapezoids over the points sorted by x (RouteLLM's formula, see the module docstring), NaN
    where strong <= weak or the points span no x; CPT(level) = the smallest x among the points
    whose q >= weak + level% (strong - weak), NaN where none does (or no gap).
    """
    x, q = np.asarray(xs, dtype=float), np.asarray(qs, dtype=float)
    weak, strong = np.asarray(weak, dtype=float), np.asarray(strong, dtype=float)
    order = np.argsort(x, axis=-1, kind="stable")
    x, q = np.take_along_axis(x, order, -1), np.take_along_axis(q, order, -1)
    dx = np.diff(x, axis=-1)
    auc = np.sum(dx * (q[..., 1:] + q[..., :-1]) / 2.0, axis=-1)
    span = x[..., -1] - x[..., 0]
    gap = strong - weak
    ok = (gap > 1e-12) & (span > 1e-12)
    with np.errstate(invalid="ignore", divide="ignore"):
        apgr = np.where(ok, (auc - weak * span) / np.where(ok, gap * span, 1.0), np.nan)
    cpts = {}
    for level in levels:
        target = weak + level / 100.0 * gap
        reach = (q >= target[..., None] - 1e-12) & (gap[..., None] > 1e-12)
        first = np.where(reach, x, np.inf).min(axis=-1)
        cpts[level] = np.where(np.isfinite(first), first, np.nan)
    return apgr, cpts


def routellm_tradeoff(curve: list, weak: dict, strong: dict, n_boot: int = 2000, seed: int = 0,
                      quality: str = "won", levels=(50, 80), level: float = LEVEL) -> dict:
    """APGR and CPT of one router with task-bootstrap CIs.

    curve: the router's measured threshold points, each :func:`per_task` output; weak, strong:
    the LP-only and HP-only points' :func:`per_task` output (measured points of the curve, at
    their own HP ratios). All must cover the same tasks. quality: "won" or "score".
    Returns {"apgr", "apgr_ci", "cpt50", "cpt50_ci", ..., "gap", "gap_ci", "withheld"}:
    ``withheld`` is a one-line reason (and the metrics None) when the 95% CI of the HP-LP gap
    (paired by task) includes 0: without a gap there is nothing to recover.
    """
    pts = [weak, *curve, strong]
    tasks = weak["tasks"]
    for p in pts:
        if not np.array_equal(p["tasks"], tasks):
            raise ValueError("routellm_tradeoff: the points cover different tasks")
    X = np.stack([p["hp_ratio"] for p in pts])  # [P, T]
    Q = np.stack([p[quality] for p in pts])
    T = X.shape[1]
    w = resample_weights(T, n_boot, seed)
    gap_t = strong[quality] - weak[quality]
    gap, gap_ci = mean_with_ci(gap_t, weights=w, level=level)
    out: dict = {"gap": gap, "gap_ci": gap_ci, "points": len(curve), "withheld": None}
    if not gap_ci[0] > 0:
        out["withheld"] = (f"the HP-LP {'success' if quality == 'won' else 'score'} gap {gap:+.3f} has a 95% "
                           f"CI [{gap_ci[0]:+.3f}, {gap_ci[1]:+.3f}] that includes 0")
        out["apgr"] = out["apgr_ci"] = None
        for lv in levels:
            out[f"cpt{lv}"] = out[f"cpt{lv}_ci"] = None
        return out
    xm, qm = X.mean(axis=1), Q.mean(axis=1)
    a, c = apgr_cpt(xm, qm, qm[0], qm[-1], levels)
    xb, qb = (w @ X.T) / T, (w @ Q.T) / T  # [B, P]
    ab, cb = apgr_cpt(xb, qb, qb[:, 0], qb[:, -1], levels)
    out["apgr"], out["apgr_ci"] = _nan_none(float(a)), _ci_or_none(ab, level)
    for lv in levels:
        out[f"cpt{lv}"] = _nan_none(float(c[lv]))
        out[f"cpt{lv}_ci"] = _ci_or_none(np.where(np.isnan(cb[lv]), np.inf, cb[lv]), level)
    return out


def _nan_none(v: float):
    return None if v is None or not math.isfinite(v) else v


def _ci_or_none(samples: np.ndarray, level: float):
    """Percentile interval of bootstrap samples; NaN samples (a resample without an HP-LP gap)
    are left out; a bound at +inf (CPT not reached in that share of resamples) is None."""
    s = np.asarray(samples, dtype=float)
    s = s[~np.isnan(s)]
    if s.size == 0:
        return None
    lo, hi = interval(s, level)
    return [_nan_none(lo), _nan_none(hi)]
