"""Quantization to compressed-tensors checkpoints (llm-compressor AWQ / RTN) and loading them back.

CPU, tiny models built from configs, no network. The AWQ-vs-RTN check needs a model with what AWQ
exploits: a few input channels with much larger activations than the rest (the outlier channels
of trained LLMs). A random-init model has none, so :func:`outlier_checkpoint` scales 6 channels of
every RMSNorm weight by 50 (a real model property, put in by hand) and the check is then honest:
KL to the full-precision model on held-out prompts, AWQ and RTN at the same bits and group size.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("llmcompressor")

from dmr_rl.cli import main  # noqa: E402
from dmr_rl.errors import ModelError  # noqa: E402
from dmr_rl.models import load_backend  # noqa: E402
from dmr_rl.models.checkpoints import (load_causal_lm, load_tokenizer, make_tiny_checkpoint,  # noqa: E402
                                       safetensors_bytes)
from dmr_rl.models.quantize import (QUANT_INFO_FILE, linear_layers, quantize_checkpoint,  # noqa: E402
                                    quantize_model, read_calib_prompts, save_quantized)

CALIB = [f"go to the kitchen and take the apple {i} from the table, then open the fridge {i}" for i in range(8)]
HELD_OUT = ["open the fridge, put the apple in the fridge, close the fridge",
            "search[red shoes size 9] click[b0123] click[buy now]",
            "You pick up the mug 1 from the countertop 2. Your task is to: put a clean mug in the coffeemachine."]


def outlier_checkpoint(out_dir, arch="llama", factor=50.0):
    src = make_tiny_checkpoint(out_dir, arch=arch, hidden=64, layers=2, seed=0)
    model = load_causal_lm(src)
    channels = torch.randperm(64, generator=torch.Generator().manual_seed(0))[:6]
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layernorm.weight"):
                p[channels] *= factor
    model.save_pretrained(str(src))
    return str(src)


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    return outlier_checkpoint(tmp_path_factory.mktemp("outlier"))


def logits(model, tok, prompts):
    with torch.no_grad():
        return [model(input_ids=torch.tensor([tok(p)["input_ids"]])).logits[0].float() for p in prompts]


def mean_kl(ref, other):
    kls = []
    for a, b in zip(ref, other):
        la, lb = torch.log_softmax(a, -1), torch.log_softmax(b, -1)
        kls.append(float((la.exp() * (la - lb)).sum(-1).mean()))
    return float(np.mean(kls))


def linear_bytes_model(model, bits, group, scale_bytes=2):
    """Modelled packed bytes: packed ints + per-group scale and packed zero point for each Linear."""
    total = 0.0
    for lin in linear_layers(model).values():
        o, i = lin.out_features, lin.in_features
        total += o * i * bits / 8 + o * (i // group) * (scale_bytes + bits / 8)
    return total


@pytest.fixture(scope="module")
def awq_and_rtn(src, tmp_path_factory):
    """3-bit, group-32 AWQ and RTN of the outlier model, in memory and saved (float32 storage: exact reload)."""
    tok = load_tokenizer(src)
    out = {}
    for method in ("awq", "rtn"):
        model = quantize_model(load_causal_lm(src), tok, method, 3, 32, CALIB, n_grid=10)
        d = tmp_path_factory.mktemp(method)
        save_quantized(model, tok, d, {"method": method, "bits": 3, "group_size": 32})
        out[method] = (model, str(d))
    return out


def test_save_load_identical_to_in_memory(src, awq_and_rtn):
    tok = load_tokenizer(src)
    for method, (model, d) in awq_and_rtn.items():
        be = load_backend(model_path=d, dtype="float32")  # a transformers tier on a compressed checkpoint, fp32 like the in-memory one
        assert be.name == "compressed"
        for a, b in zip(logits(model, tok, HELD_OUT), logits(be.model, tok, HELD_OUT)):
            assert torch.equal(a, b), method


def test_awq_beats_rtn_on_held_out_prompts(src, awq_and_rtn):
    tok = load_tokenizer(src)
    ref = logits(load_causal_lm(src), tok, HELD_OUT)
    kl = {m: mean_kl(ref, logits(model, tok, HELD_OUT)) for m, (model, _) in awq_and_rtn.items()}
    assert kl["awq"] > 0 and kl["rtn"] > 0
    assert kl["awq"] < 0.9 * kl["rtn"], kl


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_rtn_bit_widths_pack_and_reload(src, tmp_path, bits):
    info = quantize_checkpoint(src, tmp_path / "q", "rtn", bits, 64, dtype="bfloat16")
    saved = json.loads((tmp_path / "q" / QUANT_INFO_FILE).read_text())
    assert saved == info and info["bits"] == bits and info["method"] == "rtn"
    assert info["packed_bytes"] == safetensors_bytes(tmp_path / "q")
    fp = load_causal_lm(src)
    bf16_total = info["source_bytes"] / 2  # the source is float32
    lin_bf16 = sum(m.weight.numel() * 2 for m in linear_layers(fp).values())
    expected = (bf16_total - lin_bf16) + linear_bytes_model(fp, bits, 64)
    assert info["packed_bytes"] == pytest.approx(expected, rel=0.02)
    assert info["packed_bytes"] < bf16_total * (bits / 16 + 0.06) + (bf16_total - lin_bf16)
    be = load_backend(model_path=str(tmp_path / "q"))
    assert be.weight_bytes == info["packed_bytes"]
    tok = load_tokenizer(src)
    kl = mean_kl(logits(fp, tok, HELD_OUT), logits(be.model, tok, HELD_OUT))
    assert 0 < kl < 5
    assert kl < 0.01 if bits == 8 else True


def test_error_shrinks_with_bits(src, tmp_path):
    tok = load_tokenizer(src)
    ref = logits(load_causal_lm(src), tok, HELD_OUT)
    kls = [mean_kl(ref, logits(quantize_model(load_causal_lm(src), tok, "rtn", b, 64), tok, HELD_OUT))
           for b in (2, 4, 8)]
    assert kls[0] > kls[1] > kls[2] > 0, kls


def test_qwen3_whole_path(tmp_path):
    d = make_tiny_checkpoint(tmp_path / "qwen3", arch="qwen3", hidden=64, layers=2, seed=3)
    info = quantize_checkpoint(d, tmp_path / "lp", "awq", 4, 32, CALIB, dtype="float32", n_grid=8)
    assert info["engine"] == "llmcompressor" and info["calib_prompts"] == len(CALIB)
    cfg = json.loads((tmp_path / "lp" / "config.json").read_text())
    assert cfg["model_type"] == "qwen3"
    qc = cfg["quantization_config"]
    assert qc["format"] == "pack-quantized" and qc["ignore"] == ["lm_head"]
    assert qc["config_groups"]["group_0"]["weights"]["num_bits"] == 4
    hp = load_backend(model_path=str(d), dtype="float32")  # the fp32 source: auto is bf16 on AMX / AVX-512-BF16 CPUs
    lp = load_backend(model_path=str(tmp_path / "lp"), backend="compressed")
    assert lp.weight_bytes < 0.6 * hp.weight_bytes
    prompts, cands = HELD_OUT[:2], [["look", "take apple 1"], ["click[buy now]", "search[x]"]]
    s_hp, s_lp = hp.score_actions(prompts, cands), lp.score_actions(prompts, cands)
    for a, b in zip(s_hp, s_lp):
        assert np.all(np.isfinite(b.sum_logprobs)) and np.array_equal(a.num_tokens, b.num_tokens)
        assert not np.allclose(a.sum_logprobs, b.sum_logprobs, atol=1e-6)  # the LP tier really differs
    g = lp.generate(prompts, __import__("dmr_rl.models.backends.base", fromlist=["x"]).SamplingParams(max_new_tokens=4, stop=()))
    assert all(len(x.token_ids) == len(x.logprobs) for x in g)
    td = lp.token_distributions(prompts, ["look", "x"], top_k=8)
    assert np.allclose(np.exp(td[0].logprobs).sum(-1), 1, atol=1e-5)
    assert lp.cost.calls == 3 and lp.cost.weight_bytes_read > 0


def test_quanto_tiers(src):
    fp = load_backend(model_path=src)
    tok = load_tokenizer(src)
    ref = logits(fp.model, tok, HELD_OUT)
    kls = {}
    for bits in (8, 4):
        be = load_backend(model_path=src, backend="quanto", bits=bits)
        assert be.weight_bytes < fp.weight_bytes
        kls[bits] = mean_kl(ref, logits(be.model, tok, HELD_OUT))
        sc = be.score_actions(HELD_OUT[:1], [["look", "go to fridge 1"]])[0]
        assert np.all(np.isfinite(sc.sum_logprobs))
    assert 0 <= kls[8] < kls[4]
    with pytest.raises(ModelError, match="unsupported bit width 3 for the quanto backend"):
        load_backend(model_path=src, backend="quanto", bits=3)


def test_autoawq_refuses_clearly_on_cpu(src, awq_and_rtn):
    with pytest.raises(ModelError, match="not an AutoAWQ checkpoint"):
        load_backend(model_path=src, backend="autoawq")
    d = awq_and_rtn["awq"][1]
    cfg_path = __import__("pathlib").Path(d) / "config.json"
    fake = cfg_path.parent.parent / "fake_awq"
    import shutil

    shutil.copytree(d, fake)
    cfg = json.loads((fake / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "awq", "bits": 4, "group_size": 64}
    (fake / "config.json").write_text(json.dumps(cfg))
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="needs a CUDA GPU"):
            load_backend(model_path=str(fake), backend="autoawq", device="cpu")


def test_bad_requests(src, tmp_path):
    with pytest.raises(ModelError, match="unknown quantization method 'gptq'"):
        quantize_checkpoint(src, tmp_path / "o", "gptq", 4, 64, CALIB)
    with pytest.raises(ModelError, match="unsupported bit width 5"):
        quantize_checkpoint(src, tmp_path / "o", "rtn", 5, 64, CALIB)
    with pytest.raises(ModelError, match="group size 48 does not divide"):
        quantize_checkpoint(src, tmp_path / "o", "rtn", 4, 48, CALIB)
    with pytest.raises(ModelError, match="does not exist"):
        quantize_checkpoint(tmp_path / "nowhere", tmp_path / "o", "rtn", 4, 64, CALIB)
    with pytest.raises(ModelError, match="AWQ needs calibration prompts"):
        quantize_checkpoint(src, tmp_path / "o", "awq", 4, 64, [])
    with pytest.raises(ModelError, match="not a compressed-tensors checkpoint"):
        load_backend(model_path=src, backend="compressed")


def test_corrupt_compressed_checkpoint(awq_and_rtn, tmp_path):
    import shutil

    d = tmp_path / "broken"
    shutil.copytree(awq_and_rtn["rtn"][1], d)
    blob = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(blob[: len(blob) // 3])
    with pytest.raises(ModelError, match="corrupt checkpoint"):
        load_backend(model_path=str(d))
    (d / QUANT_INFO_FILE).write_text("{oops")
    with pytest.raises(ModelError, match="dmr_quant.json is not valid JSON"):
        load_backend(model_path=str(d))


def test_calib_files(tmp_path):
    j = tmp_path / "p.jsonl"
    j.write_text('"first prompt"\n{"prompt": "second"}\n\n{"text": "third"}\n')
    assert read_calib_prompts(j) == ["first prompt", "second", "third"]
    t = tmp_path / "p.txt"
    t.write_text("block one\nline two\n\nblock two\n")
    assert read_calib_prompts(t) == ["block one\nline two", "block two"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('"ok"\n{"other": 1}\n')
    with pytest.raises(ModelError, match="bad.jsonl line 2"):
        read_calib_prompts(bad)
    with pytest.raises(ModelError, match="does not exist"):
        read_calib_prompts(tmp_path / "none.jsonl")


def test_cli_quantize(src, tmp_path, capsys):
    calib = tmp_path / "calib.jsonl"
    calib.write_text("\n".join(json.dumps(p) for p in CALIB))
    rc = main(["quantize", "--model", src, "--method", "rtn", "--bits", "4", "--group-size", "64",
               "--calib", str(calib), "--out", str(tmp_path / "cli")])
    assert rc == 0
    info = json.loads(capsys.readouterr().out)
    assert info["bits"] == 4 and (tmp_path / "cli" / QUANT_INFO_FILE).exists()
    assert main(["models", "info", str(tmp_path / "cli")]) == 0
    assert json.loads(capsys.readouterr().out)["quantization"] == "compressed-tensors"
    for argv, msg in ((["--method", "gptq"], "unknown quantization method 'gptq'"),
                      (["--bits", "6"], "unsupported bit width 6"),
                      (["--calib", str(tmp_path / "missing.jsonl")], "missing.jsonl' does not exist"),
                      (["--group-size-override", "layers.1"], "expected REGEX=G"),
                      (["--method", "rtn", "--group-size-override", r"layers\.7\.=16"], "match no quantized Linear")):
        rc = main(["quantize", "--model", src, "--out", str(tmp_path / "x")] + argv)
        assert rc == 2 and msg in capsys.readouterr().err
    assert main(["quantize", "--model", str(tmp_path / "nope"), "--method", "rtn", "--out", str(tmp_path / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err


# ---- the pure-torch AWQ scale search (engine="torch") ------------------------------------------
def test_group_fake_quant_matches_compressed_tensors(src):
    """Our simulated quantizer is the one llm-compressor packs: same dequantized weights."""
    from dmr_rl.models.awq_torch import group_fake_quant

    tok = load_tokenizer(src)
    for bits in (3, 4):
        model = load_causal_lm(src)
        w = model.model.layers[0].mlp.down_proj.weight.detach().clone()
        quantize_model(model, tok, "rtn", bits, 32)
        lin = model.model.layers[0].mlp.down_proj
        from compressed_tensors.quantization.lifecycle.forward import fake_quantize

        theirs = fake_quantize(w, lin.weight_scale, lin.weight_zero_point, lin.quantization_scheme.weights)
        ours = group_fake_quant(w, bits, 32)
        assert torch.allclose(ours, theirs, atol=1e-6), (bits, (ours - theirs).abs().max())
        assert len(torch.unique(ours[0, :32])) <= 2 ** bits


def test_awq_scales_preserve_the_function_and_help(src):
    from dmr_rl.models.awq_torch import apply_awq_scales

    tok = load_tokenizer(src)
    ref = logits(load_causal_lm(src), tok, HELD_OUT)
    model = load_causal_lm(src)
    report = apply_awq_scales(model, tok, CALIB, 3, 32, n_grid=10)
    for a, b in zip(ref, logits(model, tok, HELD_OUT)):  # folding the scales changes nothing
        assert torch.allclose(a, b, atol=1e-4)
    assert {r["group"] for r in report} == {"qkv", "gate_up", "down"}  # GQA model: no v->o scale
    assert all(r["err"] <= r["err_rtn"] + 1e-12 for r in report)
    assert any(r["alpha"] > 0 and r["err"] < 0.8 * r["err_rtn"] for r in report if r["group"] == "qkv")


def test_torch_engine_beats_rtn_and_writes_the_same_format(src, awq_and_rtn, tmp_path):
    tok = load_tokenizer(src)
    ref = logits(load_causal_lm(src), tok, HELD_OUT)
    info = quantize_checkpoint(src, tmp_path / "t", "awq", 3, 32, CALIB, dtype="float32", n_grid=10,
                               engine="torch")
    assert info["engine"] == "torch" and info["bits"] == 3
    be = load_backend(model_path=str(tmp_path / "t"))
    kl_torch = mean_kl(ref, logits(be.model, tok, HELD_OUT))
    kl_rtn = mean_kl(ref, logits(awq_and_rtn["rtn"][0], tok, HELD_OUT))
    assert kl_torch < 0.9 * kl_rtn, (kl_torch, kl_rtn)
    rtn_bytes = safetensors_bytes(awq_and_rtn["rtn"][1])
    assert info["packed_bytes"] == rtn_bytes  # same layout as the library's checkpoint
    with pytest.raises(ModelError, match="unknown quantization engine 'gpu'"):
        quantize_checkpoint(src, tmp_path / "x", "awq", 3, 32, CALIB, engine="gpu")


@pytest.mark.parametrize("engine", ["torch", "llmcompressor"])
def test_group_size_overrides_quantize_those_layers_finer(src, tmp_path, engine):
    """Layer 1 at group 16, layer 0 at 32: the packed scales and the config say so, the checkpoint
    reloads, and with the torch engine (the default agent's) the finer layer brings the copy closer
    to full precision than group 32 everywhere (llm-compressor's scale search, on this 2-layer random
    model, came out 1% worse: finer groups need not lower every model's KL)."""
    from safetensors import safe_open

    tok = load_tokenizer(src)
    ref = logits(load_causal_lm(src), tok, HELD_OUT)
    kl = {}
    for tag, over in (("plain", {}), ("mixed", {r"layers\.1\.": 16})):
        info = quantize_checkpoint(src, tmp_path / tag, "awq", 3, 32, CALIB, dtype="float32", n_grid=10,
                                   engine=engine, group_size_overrides=over)
        assert info["group_size_overrides"] == over
        be = load_backend(model_path=str(tmp_path / tag))
        assert be.label == "compressed:awq-w3g32" + ("".join(f" [{p}]g{g}" for p, g in over.items()))
        kl[tag] = mean_kl(ref, logits(be.model, tok, HELD_OUT))
        if over:
            cfg = json.loads((tmp_path / tag / "config.json").read_text())["quantization_config"]["config_groups"]
            by_size = {g["weights"]["group_size"]: g["targets"] for g in cfg.values()}
            assert by_size[32] == ["Linear"]
            assert by_size[16] and all(".layers.1." in t for t in by_size[16])
            assert len(by_size[16]) == len([n for n in linear_layers(be.model) if ".layers.1." in n])
            with safe_open(str(tmp_path / tag / "model.safetensors"), "pt") as f:
                for layer, groups in ((0, 64 // 32), (1, 64 // 16)):  # hidden 64: scales [out, in // g]
                    assert f.get_tensor(f"model.layers.{layer}.self_attn.q_proj.weight_scale").shape[1] == groups
    if engine == "torch":
        assert kl["mixed"] < kl["plain"], kl
    assert safetensors_bytes(tmp_path / "mixed") > safetensors_bytes(tmp_path / "plain")  # more scales


def test_group_size_overrides_refused_when_wrong(src, tmp_path):
    for over, msg in (({r"layers\.9\.": 16}, r"match no quantized Linear"),
                      ({"layers[": 16}, "is not a regular expression"),
                      ({r"layers\.1\.": 12}, "must be a positive multiple of 8"),
                      ({r"layers\.1\.": 48}, r"group size 48 does not divide")):
        with pytest.raises(ModelError, match=msg):
            quantize_checkpoint(src, tmp_path / "o", "rtn", 4, 32, CALIB, group_size_overrides=over)


def test_copy_dir_name_tells_recipes_apart():
    from dmr_rl.models.quantize import copy_dir_name

    assert copy_dir_name("awq", 3, 48) == copy_dir_name("awq", 3, 48, {}) == "lp-awq-w3g48"
    a = copy_dir_name("awq", 3, 48, {"x": 32, "y": 16})
    assert a.startswith("lp-awq-w3g48-mixed-") and a == copy_dir_name("awq", 3, 48, {"x": 32, "y": 16})
    assert a != copy_dir_name("awq", 3, 48, {"y": 16, "x": 32})  # first match wins: the order is the recipe
    assert a != copy_dir_name("awq", 3, 48, {"x": 32}) != copy_dir_name("awq", 3, 48, {"x": 16})


def test_quant_label_names_the_overrides_in_order():
    from dmr_rl.models.quantize import quant_label

    info = {"method": "awq", "bits": 3, "group_size": 48, "group_size_overrides": {r"layers\.1\.": 16, "mlp": 32}}
    assert quant_label("compressed", info) == r"compressed:awq-w3g48 [layers\.1\.]g16 [mlp]g32"
    assert quant_label("vllm", {"method": "awq", "group_size": 64}, bits=4) == "vllm:awq-w4g64"
