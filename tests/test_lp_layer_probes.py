"""experiments/lp_layer_probes.py: cross-validated logistic probes on LP hidden states."""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "experiments"))
import lp_layer_probes as lpp  # noqa: E402


def test_a_probe_finds_a_flip_signal_in_one_dimension_and_not_in_noise():
    from dmr_rl.algos.router_losses import auroc

    rng = np.random.default_rng(0)
    tasks = np.repeat(np.arange(30), 10)
    y = (rng.random(300) < 0.3).astype(int)
    X = rng.normal(0, 1, (300, 12)) * 5.0 + 40.0  # raw scale and offset: the probe standardises
    X[:, 3] += 20.0 * y  # 4 standard deviations
    train, test = tasks < 20, tasks >= 20
    s, l2 = lpp.probe_scores(X, y, tasks, train, test)
    assert s.shape == (test.sum(),) and l2 in (1e-4, 1e-3, 1e-2, 1e-1)
    assert auroc(s, y[test]) > 0.9
    noise, _ = lpp.probe_scores(np.delete(X, 3, axis=1), y, tasks, train, test)
    assert abs(auroc(noise, y[test]) - 0.5) < 0.15
    w, b = lpp.fit_logistic(np.c_[np.r_[-np.ones(20), np.ones(20)]], np.r_[np.zeros(20), np.ones(20)], l2=1e-2)
    assert w[0] > 0 and abs(b) < 1e-3  # symmetric data: the boundary at 0
