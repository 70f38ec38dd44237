"""Pure algorithm functions: KL, labels, BCE, AUROC, GRPO rewards/advantages/loss, by hand."""
from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from dmr_rl.algos.grpo import ADV_NORMS, broadcast_to_steps, episode_rewards, group_advantages
from dmr_rl.algos.kl_labels import (budget_cut, kl_categorical, kl_token_distributions, label_by_budget,
                                    label_by_threshold, label_steps, soft_targets)
from dmr_rl.algos.router_losses import auroc, classification_metrics

torch = pytest.importorskip("torch")


def test_algos_import_no_ray_or_torch():
    code = ("import sys; import dmr_rl.algos.grpo, dmr_rl.algos.kl_labels, dmr_rl.algos.router_losses; "
            "assert 'ray' not in sys.modules and 'torch' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- KL ----------------------------------------------------------------------------------------
def test_kl_categorical_by_hand_and_invariances():
    by_hand = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    assert kl_categorical([0.5, 0.5], [0.9, 0.1], kind="probs") == pytest.approx(by_hand, rel=1e-12)
    logits_p, logits_q = np.log([0.5, 0.5]) + 3.0, np.log([0.9, 0.1]) - 7.0  # unnormalised
    assert kl_categorical(logits_p, logits_q) == pytest.approx(by_hand, rel=1e-12)
    assert kl_categorical([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == pytest.approx(0.0, abs=1e-15)
    # a padded action list: the masked entry is ignored whatever it holds
    p = np.array([[0.5, 0.5, 0.0], [0.2, 0.8, 0.0]])
    q = np.array([[0.9, 0.1, 0.7], [0.2, 0.8, 0.3]])
    got = kl_categorical(p, q, kind="probs", mask=np.array([[1, 1, 0], [1, 1, 0]], bool))
    np.testing.assert_allclose(got, [by_hand, 0.0], atol=1e-12)
    with pytest.raises(ValueError, match="shapes differ"):
        kl_categorical([0.0, 1.0], [0.0, 1.0, 2.0])


def _softmax_rows(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _topk(logp, k):
    ids = np.argsort(-logp, -1)[:, :k]
    lp = np.take_along_axis(logp, ids, -1)
    tail = np.log(np.clip(1 - np.exp(lp).sum(-1), 1e-300, None))
    tail[np.exp(lp).sum(-1) >= 1 - 1e-12] = -np.inf
    return ids, np.concatenate([lp, tail[:, None]], 1)


def test_token_kl_exact_with_full_vocab_and_close_with_top_k():
    rng = np.random.default_rng(0)
    V, T = 50, 4
    a = _softmax_rows(2 * rng.normal(size=(T, V)))
    b = _softmax_rows(a + 0.5 * rng.normal(size=(T, V)))
    exact = kl_categorical(a, b)  # [T]
    ids_a, lp_a = _topk(a, V)
    ids_b, lp_b = _topk(b, V)
    assert kl_token_distributions(ids_a, lp_a, ids_b, lp_b) == pytest.approx(exact.mean(), rel=1e-9)
    assert kl_token_distributions(ids_a, lp_a, ids_b, lp_b, reduce="sum") == pytest.approx(exact.sum(), rel=1e-9)
    # top-(V-1): the union covers the vocabulary; with vocab_size the estimate is exact
    got = kl_token_distributions(*_topk(a, V - 1), *_topk(b, V - 1), vocab_size=V)
    assert got == pytest.approx(exact.mean(), rel=1e-6)
    # top-20 of 50: an estimate, in the right range and finite
    est = kl_token_distributions(*_topk(a, 20), *_topk(b, 20), vocab_size=V)
    assert 0.5 * exact.mean() < est < 2.0 * exact.mean()
    with pytest.raises(ValueError, match="same continuation"):
        kl_token_distributions(ids_a, lp_a, ids_b[:2], lp_b[:2])


# ---- labels ------------------------------------------------------------------------------------
def test_labels_by_budget_threshold_and_soft():
    kl = [0.1, 0.5, 0.3, 0.9]
    assert label_by_budget(kl, 0.5).tolist() == [0, 1, 0, 1]
    assert label_by_budget(kl, 0.25).tolist() == [0, 0, 0, 1]
    assert label_by_budget(kl, 0.0).tolist() == [0, 0, 0, 0]
    assert label_by_budget(kl, 1.0).tolist() == [1, 1, 1, 1]
    assert label_by_budget([1.0, 1.0, 1.0, 0.0], 0.5).tolist() == [1, 1, 0, 0]  # ties: step order
    assert budget_cut(kl, 0.5) == 0.5
    assert label_by_threshold(kl, 0.3).tolist() == [0, 1, 1, 1]
    labels, targets, cut = label_steps(kl, mode="threshold", threshold=0.3, soft=True, temperature=0.5)
    assert cut == 0.3 and labels.tolist() == [0, 1, 1, 1]
    assert targets[2] == pytest.approx(0.5)
    assert np.all(np.diff(targets[np.argsort(kl)]) > 0)
    expected = 1 / (1 + math.exp(-(math.log(0.9 + 1e-6) - math.log(0.3 + 1e-6)) / 0.5))
    assert targets[3] == pytest.approx(expected)
    _, hard_t, _ = label_steps(kl, mode="budget", rho=0.5)
    assert hard_t.tolist() == [0.0, 1.0, 0.0, 1.0]
    assert soft_targets(kl, float("inf")).tolist() == [0, 0, 0, 0]
    with pytest.raises(ValueError, match="NaN"):
        label_by_budget([0.1, float("nan")], 0.5)
    with pytest.raises(ValueError, match="label mode"):
        label_steps(kl, mode="top")


# ---- BCE and metrics ---------------------------------------------------------------------------
def test_bce_by_hand_with_pos_weight_and_mask():
    from dmr_rl.algos.router_losses import bce_loss

    logits = torch.tensor([0.0, 2.0], requires_grad=True)
    loss, m = bce_loss(logits, [1.0, 0.0])
    assert loss.item() == pytest.approx((math.log(2) + math.log(1 + math.e ** 2)) / 2, rel=1e-6)
    assert m["accuracy"] == pytest.approx(0.5)  # p=0.5 counts as HP: right; p=0.88 vs 0: wrong
    loss_w, _ = bce_loss(logits, [1.0, 0.0], pos_weight=3.0)
    assert loss_w.item() == pytest.approx((3 * math.log(2) + math.log(1 + math.e ** 2)) / 2, rel=1e-6)
    loss_m, _ = bce_loss(logits, [1.0, 0.0], mask=[1.0, 0.0])
    assert loss_m.item() == pytest.approx(math.log(2), rel=1e-6)
    loss.backward()
    np.testing.assert_allclose(logits.grad.numpy(), [(0.5 - 1) / 2, (1 / (1 + math.e ** -2)) / 2], rtol=1e-6)


def _pairwise_auc(s, y):
    pos, neg = s[y == 1], s[y == 0]
    return np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])


def test_auroc_known_cases_and_ties():
    assert auroc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert auroc([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]) == 0.0
    assert auroc([0.5] * 4, [0, 1, 0, 1]) == 0.5
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75
    assert auroc([0.5, 0.5, 0.9, 0.1], [1, 0, 1, 0]) == 0.875
    assert math.isnan(auroc([0.1, 0.2], [1, 1]))
    rng = np.random.default_rng(0)
    s = rng.integers(0, 5, 200).astype(float)  # many ties
    y = (rng.random(200) < 0.3 + 0.1 * s).astype(int)
    assert auroc(s, y) == pytest.approx(_pairwise_auc(s, y), abs=1e-12)


def test_classification_metrics_by_hand():
    m = classification_metrics([0.9, 0.6, 0.4, 0.2, 0.7], [1, 0, 1, 0, 1], threshold=0.5)
    # predicted positive: 0.9 (tp), 0.6 (fp), 0.7 (tp); missed 0.4 (fn)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["accuracy"] == pytest.approx(3 / 5) and m["n"] == 5
    assert m["auroc"] == pytest.approx(_pairwise_auc(np.array([0.9, 0.6, 0.4, 0.2, 0.7]), np.array([1, 0, 1, 0, 1])))
    assert math.isnan(classification_metrics([0.1, 0.2], [1, 0], threshold=0.5)["precision"])


# ---- GRPO --------------------------------------------------------------------------------------
def test_episode_rewards_linear_and_hinge():
    np.testing.assert_allclose(episode_rewards([1, 1, 0, 0], [0.5, 0.0, 0.25, 1.0], hp_cost=0.4),
                               [0.8, 1.0, -0.1, -0.4])
    np.testing.assert_allclose(episode_rewards([1, 1, 0, 0], [0.5, 0.0, 0.25, 1.0], hp_cost=0.4, hp_budget=0.3),
                               [1 - 0.4 * 0.2, 1.0, 0.0, -0.4 * 0.7])
    np.testing.assert_allclose(episode_rewards([0.5], [0.5], hp_cost=0.4, hp_budget=-1.0), [0.3])  # <0: linear


def test_group_advantages_normalise_within_groups():
    r = [0.8, 1.0, 1.0, 1.0, 1.0, 0.3, 2.0, 0.0, 1.0]
    g = [7, 7, 3, 3, 3, 9, 4, 4, 4]
    adv, m = group_advantages(r, g, eps=0.0)
    s = 0.1 * math.sqrt(2)  # unbiased std of [0.8, 1.0]
    np.testing.assert_allclose(adv[:2], [-0.1 / s, 0.1 / s], rtol=1e-9)
    np.testing.assert_allclose(adv[2:6], 0.0)  # zero-std group and a group of one
    np.testing.assert_allclose(adv[6:], [1.0, -1.0, 0.0], atol=1e-12)  # mean 1, std 1
    assert m["zero_std_groups"] == 2 and m["groups"] == 4
    adv_eps, _ = group_advantages([0.0, 1.0], [0, 0], eps=1e-6)
    assert adv_eps[1] == pytest.approx(0.5 / (math.sqrt(0.5) + 1e-6))
    assert broadcast_to_steps([1.5, -2.0], [2, 3]).tolist() == [1.5, 1.5, -2.0, -2.0, -2.0]


def test_all_success_group_advantages_scale_with_lambda():
    """The issue's inert-lambda case: every rollout of the task succeeds, rewards differ only by
    lambda x HP share. group_std turns that into the same unit advantages for any lambda;
    group_mean (Dr. GRPO) keeps them proportional to lambda; batch_std keeps lambda's weight
    against a mixed group's success difference."""
    share = np.array([0.1, 0.3, 0.5, 0.7])
    success = np.ones(4)
    out = {}
    for lam in (0.01, 0.3, 3.0):
        r = episode_rewards(success, share, hp_cost=lam)
        out[lam] = {mode: group_advantages(r, [0] * 4, mode=mode, eps=0.0)[0] for mode in ADV_NORMS}
    # group_std: identical for every lambda (lambda inert)
    np.testing.assert_allclose(out[0.01]["group_std"], out[3.0]["group_std"], rtol=1e-9)
    # group_mean: -lambda * (share - mean share), so it scales with lambda
    for lam in (0.01, 0.3, 3.0):
        np.testing.assert_allclose(out[lam]["group_mean"], -lam * (share - share.mean()), atol=1e-12)
    assert out[3.0]["group_mean"][0] == pytest.approx(10 * out[0.3]["group_mean"][0])
    # batch_std: beside a mixed group (one success of two), the all-success group's advantages
    # grow with lambda relative to the mixed group's
    ratios = []
    for lam in (0.01, 0.3, 3.0):
        r = np.concatenate([episode_rewards(success, share, lam), episode_rewards([1, 0], [0.2, 0.2], lam)])
        adv, _ = group_advantages(r, [0, 0, 0, 0, 1, 1], mode="batch_std", eps=0.0)
        ratios.append(abs(adv[0]) / abs(adv[4]))
    assert ratios == pytest.approx([0.6 * lam for lam in (0.01, 0.3, 3.0)])  # |-lam * -.3| / .5
    # the older flag still maps onto the modes; an unknown mode is refused
    np.testing.assert_allclose(group_advantages([1.0, 0.0], [0, 0], normalize_std=False)[0], [0.5, -0.5])
    with pytest.raises(ValueError, match="group_std"):
        group_advantages([1.0, 0.0], [0, 0], mode="std")


def _hand_case():
    logits = torch.tensor([0.0, math.log(3.0), -math.log(3.0)], requires_grad=True)  # p = .5, .75, .25
    actions = [1, 1, 0]
    old = [math.log(0.5), math.log(0.5), math.log(0.6)]  # ratios 1.0, 1.5, 1.25
    adv = [1.0, 1.0, -1.0]
    return logits, actions, old, adv


def test_grpo_loss_clipping_by_hand():
    from dmr_rl.algos.grpo import grpo_loss

    logits, actions, old, adv = _hand_case()
    loss, m = grpo_loss(logits, actions, old, adv, clip_eps=0.2, kl_coef=0.0)
    # step 0: -1*1; step 1: A>0, ratio 1.5 clipped to 1.2 -> -1.2; step 2: A<0, ratio 1.25 -> +1.25
    assert m["pg_loss"] == pytest.approx((-1.0 - 1.2 + 1.25) / 3, rel=1e-6)
    assert loss.item() == pytest.approx(m["pg_loss"])
    assert m["clip_frac"] == pytest.approx(1 / 3)
    assert m["ratio_mean"] == pytest.approx((1.0 + 1.5 + 1.25) / 3, rel=1e-6)
    ent = [-(p * math.log(p) + (1 - p) * math.log(1 - p)) for p in (0.5, 0.75, 0.25)]
    assert m["entropy"] == pytest.approx(sum(ent) / 3, rel=1e-6)
    loss.backward()
    g = logits.grad.numpy()
    # d/dz of -A*ratio with ratio = pi(a)/old: -A * ratio * (a - p); clipped step 1 has no gradient
    np.testing.assert_allclose(g, [-1 * 1.0 * (1 - 0.5) / 3, 0.0, 1.25 * (0 - 0.25) / 3], rtol=1e-5, atol=1e-7)
    _, m_mask = grpo_loss(logits.detach(), actions, old, adv, mask=[1, 1, 0], kl_coef=0.0)
    assert m_mask["pg_loss"] == pytest.approx((-1.0 - 1.2) / 2, rel=1e-6)
    assert m_mask["clip_frac"] == pytest.approx(0.5)


def test_grpo_kl_term_exact_and_k3_by_hand():
    from dmr_rl.algos.grpo import grpo_loss

    logits, actions, old, adv = _hand_case()
    ref = [0.0, 0.0, 0.0]  # reference P(HP) = 0.5 everywhere
    kl_75 = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)  # KL(Bern(.75) || Bern(.5)) = KL(.25||.5)
    loss, m = grpo_loss(logits, actions, old, adv, ref_logits=ref, kl_coef=0.1, kl_kind="exact")
    assert m["kl_to_ref"] == pytest.approx(2 * kl_75 / 3, rel=1e-6)
    assert loss.item() == pytest.approx(m["pg_loss"] + 0.1 * m["kl_to_ref"], rel=1e-6)
    k3 = 0.5 / 0.75 - 1 - math.log(0.5 / 0.75)  # r = log(q/p) of the taken action (p=.75 at steps 1, 2)
    _, m3 = grpo_loss(logits.detach(), actions, old, adv, ref_logits=ref, kl_coef=0.1, kl_kind="k3")
    assert m3["kl_to_ref"] == pytest.approx(2 * k3 / 3, rel=1e-6)
    # the KL gradient pulls towards the reference: with A = 0, step 1 (p=.75) gets a positive grad
    z = torch.tensor([math.log(3.0)], requires_grad=True)
    l0, _ = grpo_loss(z, [1], [math.log(0.75)], [0.0], ref_logits=[0.0], kl_coef=1.0)
    l0.backward()
    assert float(z.grad) > 0
    with pytest.raises(ValueError, match="kl_kind"):
        grpo_loss(z, [1], [0.0], [0.0], kl_kind="k2")
    with pytest.raises(ValueError, match="advantages has shape"):
        grpo_loss(z, [1], [0.0], [0.0, 1.0])
