"""What a paired comparison could have detected: pure numpy, no Ray.

A "no difference" is only worth what the design could have seen. For a paired comparison of two
methods on the same tasks (and seeds), :func:`minimum_detectable_difference` gives the smallest
true difference in success that the design would call significant with probability ``power``
at two-sided level ``alpha``: the larger of

* the **normal-approximation MDE**, ``(z_{1-alpha/2} + z_power) * SE``, with ``SE`` the
  task-clustered (cluster-robust) standard error of the mean pair difference, estimated from the
  observed differences, and
* the **exact-test floor**: the exact McNemar (sign) test reaches ``p <= alpha`` only with at
  least :func:`sign_test_min_discordant` discordant pairs all in one direction; each pair
  difference is at most 1 in size, so no mean difference below ``k_min / n_pairs`` can be
  significant, whatever the noise (``inf`` when there are fewer pairs than ``k_min``).

The floor matters when the methods rarely disagree (SE near 0): 30 paired tasks cannot show a
difference under 6/30 = 0.2 with the exact test.
"""
from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np


def sign_test_min_discordant(alpha: float = 0.05) -> int:
    """Smallest number k of discordant pairs, all in one direction, whose exact two-sided sign
    test p-value (2 * 0.5**k) is <= ``alpha`` (6 for alpha = 0.05)."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    return max(1, math.ceil(math.log2(2.0 / alpha) - 1e-12))


def clustered_se(diffs, clusters) -> float:
    """Cluster-robust standard error of ``mean(diffs)`` ([N] pair differences; [N] cluster id of
    each, e.g. the task): ``sqrt(T / (T - 1) * sum_t (S_t - n_t * mean)^2) / N`` with ``S_t`` the
    sum and ``n_t`` the count of cluster t's differences; nan with fewer than 2 clusters."""
    d = np.asarray(diffs, dtype=np.float64)
    c = np.asarray(clusters)
    if d.shape != c.shape or d.ndim != 1:
        raise ValueError(f"diffs {d.shape} and clusters {c.shape} must be the same 1-D shape")
    _, inv = np.unique(c, return_inverse=True)
    T, N = int(inv.max()) + 1 if len(inv) else 0, len(d)
    if T < 2:
        return float("nan")
    resid = np.bincount(inv, weights=d - d.mean(), minlength=T)
    return float(math.sqrt(T / (T - 1) * float((resid ** 2).sum())) / N)


def minimum_detectable_difference(diffs, clusters, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest true mean difference this paired design detects (module docstring): max of
    ``(z_{1-alpha/2} + z_power) * clustered_se(diffs, clusters)`` and ``k_min / N``.

    ``diffs``: [N] pair differences (A - B, each in [-1, 1]); ``clusters``: [N] their task ids.
    Returns inf when N < k_min."""
    if not 0.0 < power < 1.0:
        raise ValueError(f"power must be in (0, 1), got {power}")
    n = len(np.asarray(diffs))
    k_min = sign_test_min_discordant(alpha)
    if n < k_min:
        return float("inf")
    z = NormalDist().inv_cdf(1.0 - alpha / 2.0) + NormalDist().inv_cdf(power)
    se = clustered_se(diffs, clusters)
    normal = z * se if np.isfinite(se) else float("inf")
    return float(max(normal, k_min / n))
