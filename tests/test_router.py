"""Routers: features, the transformer router (decisions, weights, save/load, cost), baselines."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from dmr_rl.step import StepContext
from dmr_rl.router import ROUTERS, make_router

torch = pytest.importorskip("torch")


def ctx(obs="You see a mug 1 and a locked drawer 2.", step=0, history=(), task="put a mug in the fridge"):
    return StepContext(task=task, obs=obs, history=list(history), step=step)


def test_router_package_import_is_light():
    code = ("import sys, dmr_rl.router as r; assert 'torch' not in sys.modules and 'ray' not in sys.modules; "
            "assert sorted(r.ROUTERS) == ['cascade','first_k','flip_oracle','hp_only','kl_oracle','lp_only','random','transformer']")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- features ----------------------------------------------------------------------------------
def test_token_features_layout_truncation_and_stability():
    from dmr_rl.router.features import (CLS, SEG_ACT, SEG_CLS, SEG_OBS, SEG_TASK, SEP, TokenFeatures,
                                        hash_piece, word_pieces)

    assert word_pieces("Go to Countertop 12, please!") == ["go", "to", "counte", "##rtop", "12", ",", "please", "!"]
    assert hash_piece("mug", 4096) == hash_piece("mug", 4096) != hash_piece("cup", 4096)
    f = TokenFeatures(vocab_size=4096, max_tokens=32, max_step=10, recent_actions=2)
    hist = [("go to sink 1", "ok"), ("take mug 1", "ok"), ("open fridge 1", "ok")]
    b = f([ctx(step=3, history=hist), ctx(obs="short", step=25)])
    assert b["tokens"].shape == b["segments"].shape and b["tokens"].shape[0] == 2
    assert b["step"].tolist() == [3, 9]  # clipped to max_step - 1
    toks, segs = b["tokens"][0], b["segments"][0]
    assert toks[0] == CLS and segs[0] == SEG_CLS
    acts = toks[segs == SEG_ACT]
    # the two most recent actions, newest last, each closed by SEP; the oldest one dropped
    expected = [hash_piece(w, 4096) for w in ("take", "mug", "1")] + [SEP] + \
               [hash_piece(w, 4096) for w in ("open", "fridge", "1")] + [SEP]
    assert acts.tolist() == expected
    assert (segs == SEG_TASK).sum() == len(word_pieces("put a mug in the fridge")) + 1
    assert (segs == SEG_OBS).sum() > 0 and (b["tokens"][1] == 0).any()  # the short one is padded
    long = f([ctx(obs="word " * 500, history=hist * 20)])
    assert long["tokens"].shape[1] == 32
    again = TokenFeatures(vocab_size=4096, max_tokens=32, max_step=10, recent_actions=2)([ctx(step=3, history=hist)])
    np.testing.assert_array_equal(again["tokens"][0], b["tokens"][0, :again["tokens"].shape[1]])


def test_contexts_from_episode_rebuild_history():
    from dmr_rl.rollout.records import EpisodeRecord, StepRecord
    from dmr_rl.router.features import contexts_from_episode

    ep = EpisodeRecord(episode_id="e", task_index=0, task_id="t", task_type="pick", task="do it",
                       steps=[StepRecord(step=i, obs=f"o{i}", action=f"a{i}", tier=0) for i in range(3)])
    cs = contexts_from_episode(ep)
    assert [c.obs for c in cs] == ["o0", "o1", "o2"]
    assert cs[2].history == [("a0", "o1"), ("a1", "o2")] and cs[0].history == []
    assert cs[1].task == "do it" and cs[1].step == 1 and cs[1].task_type == "pick"


# ---- transformer router ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def router():
    return make_router("transformer", seed=3)


def test_transformer_route_threshold_logprobs_and_sampling(router):
    contexts = [ctx(step=i, obs=f"You see {i} mugs.") for i in range(6)]
    d = router.route(contexts, np.random.default_rng(0))
    assert d.tiers.shape == d.p_hp.shape == d.logprobs.shape == (6,)
    assert np.all((d.p_hp > 0) & (d.p_hp < 1))
    np.testing.assert_array_equal(d.tiers, (d.p_hp >= router.threshold).astype(int))
    np.testing.assert_allclose(d.logprobs, np.log(np.where(d.tiers == 1, d.p_hp, 1 - d.p_hp)), rtol=1e-6)
    # sampling: frequency of HP matches P(HP); logprobs are those of the sampled tier
    many = [ctx()] * 3000
    s = router.route(many, np.random.default_rng(1), sample=True)
    p = s.p_hp[0]
    assert abs(s.tiers.mean() - p) < 4 * np.sqrt(p * (1 - p) / 3000)
    np.testing.assert_allclose(s.logprobs, np.log(np.where(s.tiers == 1, p, 1 - p)), rtol=1e-6)
    # a threshold router flips when the threshold crosses P(HP)
    lo = make_router("transformer", seed=3, threshold=0.0).route(contexts, np.random.default_rng(0))
    hi = make_router("transformer", seed=3, threshold=1.0).route(contexts, np.random.default_rng(0))
    assert lo.tiers.all() and not hi.tiers.any()


def test_hp_first_steps_hands_the_first_steps_to_hp_and_survives_save_load(tmp_path):
    contexts = [ctx(step=i, obs=f"You see {i} mugs.") for i in range(5)]
    never = make_router("transformer", seed=3, threshold=1.0)  # the network alone routes nothing to HP
    assert not never.route(contexts, np.random.default_rng(0)).tiers.any()
    ruled = make_router("transformer", seed=3, threshold=1.0, hp_first_steps=2)
    d = ruled.route(contexts, np.random.default_rng(0))
    np.testing.assert_array_equal(d.tiers, [1, 1, 0, 0, 0])
    np.testing.assert_array_equal(d.p_hp[:2], [1.0, 1.0])  # scored 1: a calibrated threshold counts them
    np.testing.assert_array_equal(d.logprobs[:2], [0.0, 0.0])  # the rule's decision, not a draw
    s = ruled.route(contexts * 200, np.random.default_rng(1), sample=True)
    assert s.tiers[np.array([c.step for c in contexts * 200]) < 2].all()
    ruled.save(tmp_path / "r")
    again = make_router("transformer", path=str(tmp_path / "r"))
    np.testing.assert_array_equal(again.route(contexts, np.random.default_rng(0)).tiers, [1, 1, 0, 0, 0])


def test_decision_does_not_depend_on_batch_neighbours(router):
    a = ctx(obs="a short one")
    b = ctx(obs="a much longer observation " * 20, history=[("go to sink 1", "ok")] * 4, step=7)
    alone = router.route([a], np.random.default_rng(0)).p_hp
    together = router.route([a, b], np.random.default_rng(0)).p_hp
    np.testing.assert_allclose(alone[0], together[0], rtol=1e-5)


def test_weights_round_trip_rlmodule_keys_and_save_load(router, tmp_path):
    from dmr_rl.router.transformer import TransformerRouter

    contexts = [ctx(step=i) for i in range(4)]
    other = TransformerRouter(seed=99)
    p_other = other.route(contexts, np.random.default_rng(0)).p_hp
    assert not np.allclose(p_other, router.route(contexts, np.random.default_rng(0)).p_hp)
    other.set_weights(router.get_weights())
    np.testing.assert_allclose(other.route(contexts, np.random.default_rng(0)).p_hp,
                               router.route(contexts, np.random.default_rng(0)).p_hp, rtol=1e-6)
    prefixed = {"net." + k: v for k, v in TransformerRouter(seed=5).get_weights().items()}
    other.set_weights(prefixed)
    np.testing.assert_allclose(other.route(contexts, np.random.default_rng(0)).p_hp,
                               TransformerRouter(seed=5).route(contexts, np.random.default_rng(0)).p_hp, rtol=1e-6)
    with pytest.raises(ValueError, match="do not fit"):
        other.set_weights({"bogus": np.zeros(2)})
    router.save(tmp_path / "r")
    loaded = make_router("transformer", path=str(tmp_path / "r"))
    np.testing.assert_allclose(loaded.route(contexts, np.random.default_rng(0)).p_hp,
                               router.route(contexts, np.random.default_rng(0)).p_hp, rtol=1e-6)
    with pytest.raises(FileNotFoundError, match="no router checkpoint"):
        make_router("transformer", path=str(tmp_path / "missing"))
    import json

    meta = json.loads((tmp_path / "r" / "router.json").read_text())
    meta["config"]["hp_first_stepz"] = 1  # a rule this code does not know is not dropped silently
    (tmp_path / "r" / "router.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"unknown router config key\(s\) \['hp_first_stepz'\]"):
        make_router("transformer", path=str(tmp_path / "r"))


def test_lp_hidden_features_feed_the_decision():
    r = make_router("transformer", features="lp_hidden", hidden_dim=6, seed=0)
    cs = [ctx(), ctx()]
    d = r.route(cs, np.random.default_rng(0), lp_hidden=[np.zeros(6), np.ones(6) * 3])
    assert d.p_hp[0] != pytest.approx(d.p_hp[1])
    with pytest.raises(ValueError, match="one hidden vector per context"):
        r.route(cs, np.random.default_rng(0))
    with pytest.raises(ValueError, match="size 4"):
        r.route(cs, np.random.default_rng(0), lp_hidden=[np.zeros(4)] * 2)


def test_rl_module_forward_equals_the_plain_network(router):
    pytest.importorskip("ray.rllib")
    from dmr_rl.router.rl_module import module_spec

    module = module_spec(router.config).build()
    module.set_state({"net." + k: torch.as_tensor(v) for k, v in router.get_weights().items()})
    contexts = [ctx(step=i, obs="You see " + "mug " * i) for i in range(5)]
    batch = {k: torch.as_tensor(v) for k, v in router.features(contexts).items()}
    out = module.forward_train(batch)["logits"].detach().numpy()
    np.testing.assert_allclose(out, router.logits(contexts), rtol=1e-5, atol=1e-6)


# ---- baselines ---------------------------------------------------------------------------------
def test_fixed_baselines():
    cs = [ctx(step=i) for i in range(6)]
    rng = np.random.default_rng(0)
    assert make_router("hp_only").route(cs, rng).tiers.tolist() == [1] * 6
    assert make_router("lp_only").route(cs, rng).tiers.tolist() == [0] * 6
    fk = make_router("first_k", k=2).route(cs, rng)
    assert fk.tiers.tolist() == [1, 1, 0, 0, 0, 0] and np.all(np.diff(fk.p_hp) <= 0)
    rnd = make_router("random", hp_ratio=0.25).route([ctx()] * 4000, np.random.default_rng(0))
    assert abs(rnd.tiers.mean() - 0.25) < 0.03
    np.testing.assert_allclose(rnd.logprobs, np.log(np.where(rnd.tiers == 1, 0.25, 0.75)))
    with pytest.raises(ValueError, match="hp_ratio"):
        make_router("random", hp_ratio=1.5)
    with pytest.raises(ValueError, match="unknown router 'nope'"):
        make_router("nope")


def test_cascade_and_kl_oracle():
    cs = [ctx(), ctx(), ctx()]
    rng = np.random.default_rng(0)
    lp = [[0.9, 0.05, 0.05], [0.4, 0.35, 0.25], [0.55, 0.45]]
    cas = ROUTERS["cascade"]
    assert cas.needs_lp_first and not cas.needs_both
    d = make_router("cascade", max_prob_threshold=0.5).route(cs, rng, lp_action_probs=lp)
    assert d.tiers.tolist() == [0, 1, 0]
    np.testing.assert_allclose(d.p_hp, [0.1, 0.6, 0.45])
    d = make_router("cascade", max_prob_threshold=0.5, entropy_threshold=0.6).route(cs, rng, lp_action_probs=lp)
    assert d.tiers.tolist() == [0, 1, 1]  # H([.55,.45]) = 0.688 > 0.6
    with pytest.raises(ValueError, match="needs lp_action_probs"):
        make_router("cascade").route(cs, rng)
    hp = [[0.9, 0.05, 0.05], [0.9, 0.05, 0.05], [0.55, 0.45]]
    assert ROUTERS["kl_oracle"].needs_both
    d = make_router("kl_oracle", kl_threshold=0.1).route(cs, rng, lp_action_probs=lp, hp_action_probs=hp)
    kl1 = 0.9 * np.log(0.9 / 0.4) + 0.05 * np.log(0.05 / 0.35) + 0.05 * np.log(0.05 / 0.25)
    np.testing.assert_allclose(d.p_hp, [0.0, kl1 / (1 + kl1), 0.0], atol=1e-12)
    assert d.tiers.tolist() == [0, 1, 0]
    with pytest.raises(ValueError, match="needs hp_action_probs"):
        make_router("kl_oracle").route(cs, rng, lp_action_probs=lp)
    # the flip oracle: HP exactly where the tiers' greedy actions differ (row 2: 0 vs 0, row 3: 0 vs 0; a flip in row 1)
    flip_hp = [[0.1, 0.8, 0.1], [0.9, 0.05, 0.05], [0.55, 0.45]]
    assert ROUTERS["flip_oracle"].needs_both
    d = make_router("flip_oracle").route(cs, rng, lp_action_probs=lp, hp_action_probs=flip_hp)
    assert d.tiers.tolist() == [1, 0, 0]
    with pytest.raises(ValueError, match="needs hp_action_probs"):
        make_router("flip_oracle").route(cs, rng, lp_action_probs=lp)


def test_a_zero_layer_router_is_a_linear_probe_on_the_standardised_hidden_state(tmp_path):
    """n_layers=0: the logit is a linear function of (hidden - mean) / std alone (the text does not
    matter), the stats set by set_hidden_stats travel with the weights, and it needs hidden_dim."""
    from dmr_rl.router.transformer import TransformerRouter

    r = make_router("transformer", features="lp_hidden", hidden_dim=6, n_layers=0, seed=0)
    rng = np.random.default_rng(0)
    H = rng.normal(3.0, 5.0, (50, 6)).astype(np.float32)
    r.net.set_hidden_stats(H)
    np.testing.assert_allclose(r.net.hidden_mean.numpy(), H.mean(0), rtol=1e-5)
    a, b = ctx(obs="you see a mug"), ctx(obs="a completely different room, long text " * 5)
    z = r.logits([a, b], lp_hidden=[H[0], H[0]])
    assert z[0] == pytest.approx(z[1])  # the text is not read
    w, bias = r.net.probe.weight.detach().numpy()[0], float(r.net.probe.bias.detach()[0])
    want = ((H[:3] - H.mean(0)) / H.std(0)) @ w + bias
    np.testing.assert_allclose(r.logits([a] * 3, lp_hidden=list(H[:3])), want, rtol=1e-4, atol=1e-5)
    r.save(tmp_path)
    back = TransformerRouter.load(tmp_path)
    np.testing.assert_allclose(back.logits([a] * 3, lp_hidden=list(H[:3])), want, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="n_layers=0 is a probe on the LP hidden state"):
        make_router("transformer", n_layers=0)
