"""The vllm backend against the transformers backend, on the committed tiny ALFWorld agent (CPU).

Runs where vLLM imports: the side venv (``python -m dmr_rl.models.vllm_env``; .ci/run's second
step runs this file with ``.venv-vllm/bin/python -m pytest``). Elsewhere it is skipped. Engines
start with ``enforce_eager`` (no compile step): ~20 s each on 2 cores.
"""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("vllm")
torch = pytest.importorskip("torch")

from dmr_rl.errors import ModelError  # noqa: E402
from dmr_rl.models import load_backend  # noqa: E402
from dmr_rl.models.acting import action_logits  # noqa: E402
from dmr_rl.models.agent import agent_dir, read_agent_config  # noqa: E402
from dmr_rl.models.backends.base import SamplingParams  # noqa: E402

PROMPTS = ["You are in the kitchen. Your task is to: put a mug in the fridge.\n> ",
           "go to",
           "Observation: you see a drawer 1, a cabinet 2, and a countertop 1.\nAction: ",
           ""]
CANDS = [["take mug 1", "go to fridge 1", "open fridge 1", "look", "inventory"],
         ["the kitchen", " table 1"],
         ["open drawer 1", "go to countertop 1", "examine cabinet 2", ""],
         ["look"]]
AGENT = str(agent_dir("alfworld"))


def _vllm(dtype):
    return load_backend({"model_path": AGENT, "backend": "vllm", "dtype": dtype, "enforce_eager": True})


@pytest.fixture(scope="module")
def engines():
    """(vLLM fp32, vLLM bf16, transformers fp32, transformers bf16) over the shipped agent."""
    out = (_vllm("float32"), _vllm("bfloat16"),
           load_backend(model_path=AGENT, backend="transformers", dtype="float32"),
           load_backend(model_path=AGENT, backend="transformers", dtype="bfloat16"))
    yield out
    for be in out[:2]:
        be.close()


def test_score_actions_equal_transformers_and_cost(engines):
    v, _, tb, _ = engines
    before = v.cost.snapshot()
    got = v.score_actions(PROMPTS, CANDS)
    ref = tb.score_actions(PROMPTS, CANDS)
    for g, r, cands in zip(got, ref, CANDS):
        assert g.sum_logprobs.shape == (len(cands),)
        np.testing.assert_array_equal(g.num_tokens, r.num_tokens)
        np.testing.assert_allclose(g.sum_logprobs, r.sum_logprobs, atol=2e-3)
    assert got[2].num_tokens[3] == 0 and got[2].sum_logprobs[3] == 0.0  # an empty candidate
    after = v.cost.snapshot()
    assert after["calls"] == before["calls"] + 1 and after["by_call"]["score"] >= 1
    assert after["wall_time_s"] > before["wall_time_s"]
    assert v.weight_bytes == pytest.approx(tb.weight_bytes)  # fp32 safetensors = fp32 parameters
    assert v.score_actions([], []) == []
    with pytest.raises(ValueError, match="2 prompts but 1"):
        v.score_actions(PROMPTS[:2], CANDS[:1])


def test_prefix_cache_changes_no_score(engines):
    """A prompt scored alone (no prefill pass) and among others scores the same."""
    v = engines[0]
    alone = v.score_actions(PROMPTS[2:3], [CANDS[2][:1]])[0].sum_logprobs[0]
    batched = v.score_actions(PROMPTS, CANDS)[2].sum_logprobs[0]
    assert alone == pytest.approx(batched, abs=1e-4)


def test_cache_hit_inside_a_candidate_is_rescored(engines):
    """Scoring a long candidate twice: the second call's prefix-cache hit covers whole blocks of the
    candidate itself (vLLM then leaves those prompt log-probs unset); the row is rescored with the
    cache off and matches the first call and the transformers backend."""
    v, _, tb, _ = engines
    block = v.llm.llm_engine.vllm_config.cache_config.block_size
    long = " ".join(f"go to cabinet {i} and open it" for i in range(block // 4))
    first = v.score_actions(PROMPTS[:1], [[long]])[0].sum_logprobs[0]
    before = v.recomputed_rows
    second = v.score_actions(PROMPTS[:1], [[long, "look"]])[0].sum_logprobs
    assert v.recomputed_rows == before + 1
    assert second[0] == pytest.approx(first, abs=1e-4)
    np.testing.assert_allclose(second, tb.score_actions(PROMPTS[:1], [[long, "look"]])[0].sum_logprobs, atol=2e-2)


def test_token_distributions_topk_full_and_tail(engines):
    v, _, tb, _ = engines
    conts = ["take mug 1", "the kitchen", "", "look"]
    top, full = v.token_distributions(PROMPTS, conts, top_k=5), v.token_distributions(PROMPTS, conts, top_k=0)
    ref = tb.token_distributions(PROMPTS, conts, top_k=5)
    for t, f, r in zip(top, full, ref):
        n = r.target_logprobs.shape[0]
        assert t.logprobs.shape == (n, 6) and t.token_ids.shape == (n, 5) and f.logprobs.shape[0] == n
        np.testing.assert_allclose(t.logprobs, r.logprobs, atol=1e-3)
        np.testing.assert_array_equal(t.token_ids, r.token_ids)
        np.testing.assert_allclose(t.target_logprobs, r.target_logprobs, atol=1e-3)
        np.testing.assert_allclose(np.exp(f.logprobs[:, :-1]).sum(-1), 1.0, atol=1e-4)
        assert np.all(np.isneginf(f.logprobs[:, -1]))
    with pytest.raises(ValueError, match="continuations"):
        v.token_distributions(PROMPTS, conts[:1])


def test_generate_greedy_matches_transformers_and_stops(engines):
    v, _, tb, _ = engines
    sp = SamplingParams(max_new_tokens=8, temperature=0.0, stop=())
    for g, r in zip(v.generate(PROMPTS[:3], sp), tb.generate(PROMPTS[:3], sp)):
        assert g.token_ids == r.token_ids and g.text == r.text
        np.testing.assert_allclose(g.logprobs, r.logprobs, atol=1e-3)
    free = v.generate(PROMPTS[:1], sp)[0]
    stop = free.text.split()[1] if len(free.text.split()) > 1 else free.text[-1]
    cut = v.generate(PROMPTS[:1], SamplingParams(max_new_tokens=8, stop=(stop,)))[0]
    ref = tb.generate(PROMPTS[:1], SamplingParams(max_new_tokens=8, stop=(stop,)))[0]
    assert stop not in cut.text and free.text.startswith(cut.text)
    assert (cut.text, cut.token_ids) == (ref.text, ref.token_ids)
    sampled = SamplingParams(max_new_tokens=6, temperature=1.0, stop=(), seed=7)
    assert v.generate(PROMPTS, sampled)[1].token_ids == v.generate(PROMPTS, sampled)[1].token_ids


def test_no_hidden_states_and_no_kernel_errors(engines):
    with pytest.raises(ModelError, match="does not expose hidden states.*transformers"):
        engines[0].prompt_hidden(PROMPTS)
    lp2 = agent_dir("alfworld") / "lp-awq-w2g32"  # the shipped 2-bit copy: no vLLM CPU kernel
    with pytest.raises(ModelError, match="no CPU kernel for 2-bit weights"):
        load_backend({"model_path": str(lp2), "backend": "vllm"})
    with pytest.raises(ModelError, match="built for 'cpu'"):
        load_backend({"model_path": AGENT, "backend": "vllm", "device": "cuda"})


@pytest.fixture(scope="module")
def recorded_steps(engines, tmp_path_factory):
    """(prompt, admissible) of every step of HP episodes on generated ALFWorld games, played by
    the shipped agent through a rollout worker (its own prompt format)."""
    from environments.alfworld.generator import generate
    from dmr_rl.config import DMRConfig
    from dmr_rl.rollout.group import worker_kwargs_from_config
    from dmr_rl.rollout.records import TrajectoryStore
    from dmr_rl.rollout.worker import RolloutWorker
    from dmr_rl.serving.clients import LocalTierClient

    data = tmp_path_factory.mktemp("alf")
    generate(str(data), n=24, seed=0)
    cfg = DMRConfig()
    cfg.env.data_dir, cfg.env.max_steps = str(data), 12
    shards = tmp_path_factory.mktemp("shards")
    kw = worker_kwargs_from_config(cfg, shards, envs_per_worker=4, split="valid_unseen")
    kw["router"] = {"name": "hp_only", "kwargs": {}}
    tb = engines[2]
    w = RolloutWorker(0, {"hp": LocalTierClient("hp", tb), "lp": LocalTierClient("lp", tb)}, **kw)
    w.run_episodes(list(range(8)), method="hp")
    steps = [(s.prompt, list(s.admissible)) for e in TrajectoryStore.read(shards) for s in e.steps]
    assert len(steps) >= 40
    return steps


def test_greedy_actions_agree_on_recorded_alfworld_prompts(engines, recorded_steps):
    """bf16 vLLM vs the transformers backend on the agent's own prompts: log-probs within bf16
    tolerance, greedy action identical on >= 99% of steps."""
    _, vb, tb, tbb = engines
    prompts, cands = [p for p, _ in recorded_steps], [a for _, a in recorded_steps]
    norm = bool(read_agent_config(AGENT).get("length_normalised", False))
    got, ref, ref16 = vb.score_actions(prompts, cands), tb.score_actions(prompts, cands), tbb.score_actions(prompts, cands)
    agree = agree16 = 0
    for g, r, r16 in zip(got, ref, ref16):
        np.testing.assert_allclose(g.sum_logprobs, r.sum_logprobs, atol=0.25, rtol=0.05)
        a = int(np.argmax(action_logits(g, norm)))
        agree += a == int(np.argmax(action_logits(r, norm)))
        agree16 += a == int(np.argmax(action_logits(r16, norm)))
    n = len(recorded_steps)
    assert agree / n >= 0.99, f"greedy action agrees with transformers fp32 on {agree}/{n} steps"
    assert agree16 / n >= 0.99, f"greedy action agrees with transformers bf16 on {agree16}/{n} steps"


def test_four_bit_copy_needs_avx512_on_cpu(tmp_path, monkeypatch):
    """On a CPU without AVX-512, vLLM-CPU has no int4 GEMM: a one-line ModelError before any load."""
    import json
    import shutil

    from dmr_rl.models.backends import vllm_backend

    d = tmp_path / "w4"
    shutil.copytree(AGENT, d, ignore=shutil.ignore_patterns("lp-*"))
    cfg = json.loads((d / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "compressed-tensors", "format": "pack-quantized",
                                  "config_groups": {"group_0": {"weights": {"num_bits": 4, "group_size": 32}}}}
    (d / "config.json").write_text(json.dumps(cfg))
    monkeypatch.setattr(vllm_backend, "cpu_has_avx512", lambda: False)
    with pytest.raises(ModelError, match="needs AVX-512"):
        load_backend({"model_path": str(d), "backend": "vllm"})
    cfg["quantization_config"]["quant_method"] = "awq"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="quant_method='awq'"):
        load_backend({"model_path": str(d), "backend": "vllm"})
