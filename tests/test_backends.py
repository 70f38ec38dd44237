"""Backends on tiny random-init Llama and Qwen3 checkpoints (CPU, no network)."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from dmr_rl.errors import ModelError  # noqa: E402
from dmr_rl.models import BACKENDS, backend_class, load_backend  # noqa: E402
from dmr_rl.models.backends.base import SamplingParams  # noqa: E402
from dmr_rl.models.checkpoints import make_tiny_checkpoint  # noqa: E402

PROMPTS = ["You are in the kitchen. Your task is to: put a mug in the fridge.\n> ",
           "go to",
           "Observation: you see a drawer 1, a cabinet 2, and a countertop 1.\nAction: "]
CANDS = [["take mug 1", "go to fridge 1", "open fridge 1", "look", "inventory"],
         ["the kitchen", " table 1"],
         ["open drawer 1", "go to countertop 1", "examine cabinet 2"]]


@pytest.fixture(scope="module", params=["llama", "qwen3"])
def tiny(request, tmp_path_factory):
    d = make_tiny_checkpoint(tmp_path_factory.mktemp(request.param), arch=request.param, seed=1)
    return str(d)


def naive_logprob(model, ids_prompt, ids_cand):
    ids = torch.tensor([ids_prompt + ids_cand])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    L = len(ids_prompt)
    return sum(float(logp[L - 1 + t, tok]) for t, tok in enumerate(ids_cand))


def test_score_actions_matches_naive_loop(tiny):
    be = load_backend({"model_path": tiny, "backend": "transformers", "dtype": "float32"})
    scores = be.score_actions(PROMPTS, CANDS)
    tok = be.tokenizer
    for p, cands, sc in zip(PROMPTS, CANDS, scores):
        assert sc.sum_logprobs.shape == (len(cands),)
        for j, c in enumerate(cands):
            ids_c = tok(c, add_special_tokens=False)["input_ids"]
            assert sc.num_tokens[j] == len(ids_c)
            ref = naive_logprob(be.model, tok(p)["input_ids"], ids_c)
            assert sc.sum_logprobs[j] == pytest.approx(ref, abs=2e-4)
    snap = be.cost.snapshot()
    assert snap["calls"] == 1 and snap["by_call"] == {"score": 1}
    assert snap["weight_bytes_read"] == pytest.approx(3 * be.weight_bytes)  # packed engine: one forward per prompt
    batched = load_backend({"model_path": tiny, "dtype": "float32"}, engine="batched")
    for a, b in zip(scores, batched.score_actions(PROMPTS, CANDS)):
        np.testing.assert_allclose(a.sum_logprobs, b.sum_logprobs, atol=2e-4)
    assert batched.cost.weight_bytes_read == pytest.approx(2 * be.weight_bytes)  # two batched forwards


def test_prompt_hidden_stops_at_a_decoder_layer_and_charges_that_share(tiny):
    """prompt_hidden(layer=k) is the output of decoder layer k at each prompt's last token (what
    output_hidden_states gives at index k), the layers above k never run, and the cost meter
    counts k / n_layers of a forward; layer 0 is the last layer after the final norm."""
    from dmr_rl.errors import ModelError

    be = load_backend({"model_path": tiny, "backend": "transformers", "dtype": "float32"})
    n = be.num_layers
    assert n >= 2 and be.info()["num_layers"] == n
    ran = []
    handles = [m.register_forward_hook(lambda mod, i, o, k=k: ran.append(k)) for k, m in enumerate(be.model.model.layers)]
    before = be.cost.snapshot()["weight_bytes_read"]
    got = be.prompt_hidden(PROMPTS, layer=1)
    for h in handles:
        h.remove()
    assert ran == [0]  # only the first decoder layer ran
    assert be.cost.snapshot()["weight_bytes_read"] - before == pytest.approx(be.weight_bytes / n)
    tok = be.tokenizer
    for p, g in zip(PROMPTS, got):
        with torch.no_grad():
            out = be.model(input_ids=torch.tensor([tok(p)["input_ids"]]), output_hidden_states=True)
        np.testing.assert_allclose(g, out.hidden_states[1][0, -1].numpy(), atol=1e-4)
        np.testing.assert_allclose(be.prompt_hidden([p])[0], out.hidden_states[-1][0, -1].numpy(), atol=1e-4)
    with pytest.raises(ModelError, match=f"layer {n + 1} is not a decoder layer"):
        be.prompt_hidden(PROMPTS, layer=n + 1)


def test_score_actions_chunks_agree(tiny, monkeypatch):
    """Splitting the candidate rows into several forwards changes nothing."""
    import dmr_rl.models.backends.transformers_backend as tb

    be = load_backend(model_path=tiny, engine="batched")
    full = be.score_actions(PROMPTS, CANDS)
    monkeypatch.setattr(tb, "MAX_LOGIT_ELEMENTS", 1)
    chunked = be.score_actions(PROMPTS, CANDS)
    for a, b in zip(full, chunked):
        np.testing.assert_allclose(a.sum_logprobs, b.sum_logprobs, atol=1e-4)


def test_token_distributions_topk_and_tail(tiny):
    be = load_backend(model_path=tiny, dtype="float32")  # exact path equality is an fp32 property: auto is bf16 on AMX / AVX-512-BF16 CPUs
    conts = ["take mug 1", "the kitchen", ""]
    full = be.token_distributions(PROMPTS, conts, top_k=0)
    top = be.token_distributions(PROMPTS, conts, top_k=5)
    for f, t, c in zip(full, top, conts):
        n = len(be.tokenizer(c, add_special_tokens=False)["input_ids"])
        assert t.logprobs.shape == (n, 6) and t.token_ids.shape == (n, 5)
        np.testing.assert_allclose(np.exp(t.logprobs).sum(-1), 1.0, atol=1e-5)
        np.testing.assert_allclose(np.exp(f.logprobs[:, :-1]).sum(-1), 1.0, atol=1e-5)
        assert np.all(np.isneginf(f.logprobs[:, -1]))
        np.testing.assert_allclose(f.target_logprobs, t.target_logprobs, atol=1e-5)
        for r in range(n):  # the top-k are the k largest of the full distribution
            np.testing.assert_allclose(np.sort(f.logprobs[r, :-1])[::-1][:5], t.logprobs[r, :5], atol=1e-5)
    sc = be.score_actions(PROMPTS[:2], [["take mug 1"], ["the kitchen"]])
    assert sc[0].sum_logprobs[0] == pytest.approx(full[0].target_logprobs.sum(), abs=1e-4)


def test_generate_greedy_batched_equals_single(tiny):
    be = load_backend(model_path=tiny)
    sp = SamplingParams(max_new_tokens=6, temperature=0.0, stop=())
    batch = be.generate(PROMPTS, sp)
    for p, g in zip(PROMPTS, batch):
        single = be.generate([p], sp)[0]
        assert g.token_ids == single.token_ids
        assert len(g.logprobs) == len(g.token_ids) and all(lp <= 0 for lp in g.logprobs)
        # the reported log-probs are the model's own: compare with a teacher-forced pass
        if g.token_ids:
            ref = be.token_distributions([p], [be.tokenizer.decode(g.token_ids)], top_k=1)[0]
            if len(ref.target_logprobs) == len(g.logprobs):
                np.testing.assert_allclose(ref.target_logprobs, g.logprobs, atol=1e-3)
    assert be.cost.generated_tokens > 0 and be.cost.by_call["generate"] == 1 + len(PROMPTS)


def test_generate_stop_string_cuts_text(tiny):
    be = load_backend(model_path=tiny)
    free = be.generate(PROMPTS[:1], SamplingParams(max_new_tokens=12, stop=()))[0]
    if len(free.text) < 2:
        pytest.skip("random model produced too little text")
    stop = free.text[len(free.text) // 2]
    cut = be.generate(PROMPTS[:1], SamplingParams(max_new_tokens=12, stop=(stop,)))[0]
    assert stop not in cut.text and free.text.startswith(cut.text)
    assert len(cut.token_ids) <= len(free.token_ids) and len(cut.logprobs) == len(cut.token_ids)


def test_sampling_seed_reproducible(tiny):
    be = load_backend(model_path=tiny)
    sp = SamplingParams(max_new_tokens=5, temperature=1.0, stop=(), seed=7)
    assert be.generate(PROMPTS, sp)[1].token_ids == be.generate(PROMPTS, sp)[1].token_ids


def test_bf16_tier_close_to_fp32_and_half_bytes(tiny):
    fp = load_backend(model_path=tiny, dtype="float32")
    bf = load_backend(model_path=tiny, dtype="bfloat16")
    assert bf.weight_bytes == pytest.approx(fp.weight_bytes / 2)
    a = fp.score_actions(PROMPTS, CANDS)
    b = bf.score_actions(PROMPTS, CANDS)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x.sum_logprobs, y.sum_logprobs, rtol=0.05, atol=0.2)


def test_registry_names():
    assert {"transformers", "compressed", "quanto", "autoawq"} <= set(BACKENDS)
    with pytest.raises(ModelError, match="unknown backend 'nope'"):
        backend_class("nope")


def test_bad_model_paths(tmp_path, tiny):
    with pytest.raises(ModelError, match="does not exist"):
        load_backend(model_path=str(tmp_path / "missing"))
    with pytest.raises(ModelError, match="empty"):
        load_backend(model_path="")
    (tmp_path / "noconf").mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        load_backend(model_path=str(tmp_path / "noconf"))
    bad = tmp_path / "badjson"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        load_backend(model_path=str(bad))
    # a checkpoint whose weights are garbage
    import shutil

    corrupt = tmp_path / "corrupt"
    shutil.copytree(tiny, corrupt)
    (corrupt / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ModelError, match="corrupt checkpoint"):
        load_backend(model_path=str(corrupt))
    with pytest.raises(ModelError, match="unknown dtype"):
        load_backend(model_path=tiny, dtype="int3")
    cfg = json.loads((corrupt / "config.json").read_text())
    assert cfg["model_type"] in ("llama", "qwen3")


def test_load_backend_from_tier_config(tiny):
    from dmr_rl.config import TierConfig

    be = load_backend(TierConfig(model_path=tiny, dtype="bfloat16"))
    assert be.name == "transformers" and next(be.model.parameters()).dtype == torch.bfloat16
    with pytest.raises(ModelError, match="unknown backend 'vllm2'"):
        load_backend(TierConfig(model_path=tiny, backend="vllm2"))
