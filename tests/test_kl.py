"""Per-step KL(HP || LP) on known distributions (hand-computed numbers)."""
import math

import numpy as np
import pytest

from dmr_rl.models.backends.base import ActionScores, TokenDistributions
from dmr_rl.algos.kl_labels import kl_categorical as categorical_kl
from dmr_rl.models.kl import action_kl, action_kl_batch, token_kl, token_kl_batch

LN2 = math.log(2.0)


def full(rows):
    """TokenDistributions over a full vocabulary (tail column -inf)."""
    p = np.array(rows, dtype=np.float64)
    t, v = p.shape
    logp = np.concatenate([np.log(p), np.full((t, 1), -np.inf)], axis=1)
    return TokenDistributions(token_ids=np.tile(np.arange(v), (t, 1)), logprobs=logp,
                              target_logprobs=np.zeros(t))


def topk(ids, probs, tail):
    logp = np.log(np.array([list(p) + [tl] for p, tl in zip(probs, tail)]))
    return TokenDistributions(token_ids=np.array(ids), logprobs=logp, target_logprobs=np.zeros(len(ids)))


def test_categorical_kl_hand_number():
    # 0.5 ln(0.5/0.25) + 0.5 ln(0.5/0.75) = 0.143841...
    kl = categorical_kl(np.log([0.5, 0.5]), np.log([0.25, 0.75]))
    assert math.isclose(kl, 0.5 * LN2 + 0.5 * math.log(2 / 3), rel_tol=1e-12)
    assert math.isclose(kl, 0.1438410362, rel_tol=1e-8)
    assert categorical_kl(np.log([1.0, 1e-300]), np.log([0.5, 0.5])) == pytest.approx(LN2)
    assert categorical_kl(np.log([0.5, 0.5]), np.array([0.0, -np.inf])) == np.inf


def test_token_kl_full_vocabulary_mean_and_sum():
    hp = full([[0.5, 0.25, 0.25], [0.2, 0.3, 0.5]])
    lp = full([[0.25, 0.5, 0.25], [0.2, 0.3, 0.5]])
    per_token = token_kl(hp, lp)
    # position 0: 0.5 ln 2 + 0.25 ln 0.5 + 0 = 0.25 ln 2; position 1: identical -> 0
    assert np.allclose(per_token, [0.25 * LN2, 0.0])
    mean, total = token_kl_batch([hp, hp], [lp, hp])
    assert np.allclose(mean, [0.125 * LN2, 0.0]) and np.allclose(total, [0.25 * LN2, 0.0])


def test_token_kl_top_k_with_tail_bucket():
    # vocab 4; HP (0.6, 0.3, .05, .05), LP (0.3, 0.6, .05, .05); K = 2, different id orders.
    hp = topk([[0, 1]], [[0.6, 0.3]], [0.1])
    lp = topk([[1, 0]], [[0.6, 0.3]], [0.1])
    # partition {0, 1, rest}: 0.6 ln 2 + 0.3 ln 0.5 + 0.1 ln 1 = 0.3 ln 2 (the full KL, as the tails agree)
    assert np.allclose(token_kl(hp, lp), [0.3 * LN2])
    # HP's id 0 is not in LP's top-2. True distributions over 4 ids with uniform tails:
    # HP (.6, .3, .05, .05), LP (.1, .6, .2, .1); top-2: HP {0: .6, 1: .3, tail .1}, LP {1: .6, 2: .2, tail .2}.
    # Knowing the vocabulary size, each tail spreads uniformly, so the estimate is the exact KL:
    # .6 ln 6 + .3 ln .5 + .05 ln .25 + .05 ln .5 = 0.763139...
    lp2 = topk([[1, 2]], [[0.6, 0.2]], [0.2])
    expected = 0.6 * math.log(6) + 0.3 * math.log(0.5) + 0.05 * math.log(0.25) + 0.05 * math.log(0.5)
    assert math.isclose(expected, 0.7631394, rel_tol=1e-6)
    assert np.allclose(token_kl(hp, lp2, vocab_size=4), [expected], atol=1e-9)
    assert np.allclose(token_kl(full([[0.6, 0.3, 0.05, 0.05]]), full([[0.1, 0.6, 0.2, 0.1]])), [expected])
    mean, total = token_kl_batch([hp], [lp2], vocab_size=4)
    assert np.allclose(mean, [expected]) and np.allclose(total, [expected])


def test_token_kl_zero_between_identical_tiers_and_errors():
    hp = topk([[3, 1, 2]], [[0.5, 0.2, 0.1]], [0.2])
    assert np.allclose(token_kl(hp, hp), [0.0])
    mean, total = token_kl_batch([hp], [hp])
    assert mean[0] == 0.0 and total[0] == 0.0
    with pytest.raises(ValueError):
        token_kl(full([[0.5, 0.5]]), full([[0.5, 0.5], [0.5, 0.5]]))
    with pytest.raises(ValueError):
        token_kl_batch([hp], [])


def test_action_kl_over_admissible_distribution():
    hp = ActionScores(sum_logprobs=np.array([-1.0, -1.0]), num_tokens=np.array([2, 4]))
    lp = ActionScores(sum_logprobs=np.log([0.25, 0.75]) - 3.0, num_tokens=np.array([2, 4]))
    assert math.isclose(action_kl(hp, lp), 0.1438410362, rel_tol=1e-8)
    assert action_kl(hp, hp) == 0.0
    # length normalisation: HP sums (-1, -2) over (1, 2) tokens -> means (-1, -1), uniform;
    # LP sums (-2, -2) over (2, 1) tokens -> means (-1, -2): q = (0.731059, 0.268941)
    h2 = ActionScores(np.array([-1.0, -2.0]), np.array([1, 2]))
    l2 = ActionScores(np.array([-2.0, -2.0]), np.array([2, 1]))
    q = np.exp([-1.0, -2.0]) / np.exp([-1.0, -2.0]).sum()
    assert math.isclose(action_kl(h2, l2, length_normalised=True),
                        0.5 * math.log(0.5 / q[0]) + 0.5 * math.log(0.5 / q[1]), rel_tol=1e-12)
    assert math.isclose(action_kl(h2, l2), q[0] * math.log(q[0] / 0.5) + q[1] * math.log(q[1] / 0.5),
                        rel_tol=1e-12)
    assert np.allclose(action_kl_batch([hp, hp], [lp, hp]), [0.1438410362, 0.0])
    with pytest.raises(ValueError):
        action_kl(hp, ActionScores(np.array([0.0]), np.array([1])))
