"""Early validation: what can be checked without a model fails at config load, naming the field."""
from __future__ import annotations

import json

import pytest

from dmr_rl.config import ConfigError, load_config


@pytest.mark.parametrize("sets, message", [
    (["lp.group_size=7"], r"lp.group_size=7 must be a positive multiple of 8"),
    (["lp.group_size=0"], r"lp.group_size=0 must be a positive multiple of 8"),
    (["lp.bits=5"], r"lp.bits=5 is not a supported bit width"),
    (["lp.quant_method=rtn", "lp.bits=16"], r"needs bits < 16"),
    (["hp.model_path=/no/such/model"], r"hp.model_path='/no/such/model' is not a directory"),
    (["env.data_dir=/no/such/data"], r"env.data_dir='/no/such/data' is not a directory"),
    (["ray.max_restarts=-1"], r"ray.max_restarts must be >= 0"),
])
def test_bad_values_fail_at_load(sets, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, sets)


def test_group_size_is_checked_against_the_widths_of_the_model_to_quantize(tmp_path):
    model = tmp_path / "hp"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"hidden_size": 96, "intermediate_size": 256,
                                                   "num_attention_heads": 3}))
    with pytest.raises(ConfigError, match=r"lp.group_size=64 does not divide the model's widths \[96\].*try \[32, 16, 8\]"):
        load_config(None, [f"hp.model_path={model}", "lp.group_size=64"])
    assert load_config(None, [f"hp.model_path={model}", "lp.group_size=32"]).lp.group_size == 32
    # an LP copy that already exists is not quantized again: its group size is not checked
    assert load_config(None, [f"hp.model_path={model}", f"lp.model_path={model}", "lp.group_size=64"])


def test_paths_on_other_machines_are_not_checked_when_joining_a_cluster():
    cfg = load_config(None, ["ray.address=auto", "hp.model_path=/models/Qwen3-8B", "hp.quant_method=none"])
    assert cfg.hp.model_path == "/models/Qwen3-8B"
