"""Config: presets load, overrides apply, bad values are named."""
from __future__ import annotations

from pathlib import Path

import pytest

from dmr_rl.config import ConfigError, DMRConfig, field_help, load_config

PRESETS = sorted((Path(__file__).resolve().parents[1] / "experiments").glob("*.yaml"))


def test_defaults_validate():
    cfg = load_config()
    assert cfg.lp.quant_method == "awq" and cfg.lp.bits == 2
    assert cfg.hp.quant_method == "none" and cfg.hp.bits == 16


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.name)
def test_every_preset_loads(preset):
    cfg = load_config(str(preset))
    assert isinstance(cfg, DMRConfig)
    assert cfg.env.name in ("alfworld", "webshop")


def test_overrides_are_typed_and_nested():
    cfg = load_config(None, ["grpo.iterations=3", "eval.seeds=[4, 5, 6]", "lp.bits=4", "sft.soft_targets=true",
                             "hp.resources={hp_model: 1}"])
    assert cfg.grpo.iterations == 3 and cfg.eval.seeds == [4, 5, 6]
    assert cfg.lp.bits == 4 and cfg.lp.quant_method == "awq"  # untouched sibling field keeps its default
    assert cfg.sft.soft_targets is True and cfg.hp.resources == {"hp_model": 1}


@pytest.mark.parametrize("override, needle", [
    (["env.name=minecraft"], "env.name"),
    (["lp.bits=5"], "lp.bits"),
    (["grpo.iterations=0"], "grpo.iterations"),
    (["label.rho=1.5"], "label.rho"),
    (["grpo.iterations=two"], "grpo.iterations"),
    (["grpo.itterations=2"], "itterations"),
    (["hp.quant_method=awq"], "hp.quant_method"),
    (["eval.calibrated_baselines=[random]"], "eval.calibrated_baselines"),
    (["nonsense"], "section.field=value"),
    (["router.n_layers=0"], "router.n_layers=0"),
    (["router.n_layers=-1", "router.features=lp_hidden"], "router.n_layers=-1"),
    (["router.hidden_layer=-2", "router.features=lp_hidden"], "router.hidden_layer=-2"),
    (["router.hidden_layer=8"], "router.hidden_layer=8"),
    (["router.hp_first_steps=-1"], "router.hp_first_steps=-1"),
    (["env.generate_train_n=-1"], "env.generate_train_n=-1"),
    (["env.name=webshop", "env.generate_train_n=10"], "env.generate_train_n"),
    (["eval.routers=[sft, stage3]"], "eval.routers"),
])
def test_bad_values_are_named(override, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_config(None, override)


def test_bad_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("env: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(str(bad))


def test_every_field_is_documented():
    rows = field_help()
    assert len(rows) > 50
    undocumented = [name for name, help_text, _ in rows if not help_text.strip()]
    assert not undocumented


def test_stage_commands_use_the_run_directorys_own_config(tmp_path, capsys):
    """`dmr train grpo` (collect, label, train sft, eval) without --config on a run directory that
    `dmr run` made reads that run's config.yaml, not the built-in defaults; --set still applies and
    --config still wins; a directory without one gets the defaults."""
    import argparse

    from dmr_rl.cli import stage_config
    from dmr_rl.config import save_config

    run = tmp_path / "run"
    (tmp_path / "agent").mkdir()
    made = load_config(None, [f"run_dir={run}", "grpo.iterations=7", f"hp.model_path={tmp_path / 'agent'}"])
    save_config(made, run / "config.yaml")

    def args(config=None, *sets):
        return argparse.Namespace(config=config, overrides=[f"run_dir={run}", *sets])

    cfg = stage_config(args())
    assert cfg.grpo.iterations == 7 and cfg.hp.model_path == str(tmp_path / "agent")
    assert str(run / "config.yaml") in capsys.readouterr().err
    assert stage_config(args(None, "grpo.iterations=3")).grpo.iterations == 3
    # an override checked against the run's own models, not against the built-in defaults' agent
    # (lp.group_size=48 does not divide the default tiny agent's width 128)
    with pytest.raises(ConfigError, match="group_size"):
        load_config(None, ["lp.group_size=48"])
    assert stage_config(args(None, "lp.group_size=48")).lp.group_size == 48
    preset = tmp_path / "p.yaml"
    preset.write_text(f"run_dir: {run}\n")
    assert stage_config(args(str(preset))).grpo.iterations == DMRConfig().grpo.iterations
    other = argparse.Namespace(config=None, overrides=[f"run_dir={tmp_path / 'new'}"])
    assert stage_config(other).grpo.iterations == DMRConfig().grpo.iterations


def test_group_size_overrides_checked_at_load():
    with pytest.raises(ConfigError, match=r"lp.group_size_overrides\['x'\]=12 must be a positive multiple of 8"):
        load_config(None, ["lp.quant_method=awq", "lp.bits=4", "lp.group_size_overrides={x: 12}"])
    with pytest.raises(ConfigError, match="is not a regular expression"):
        load_config(None, ["lp.quant_method=awq", "lp.bits=4", "lp.group_size_overrides={'layers[': 32}"])
    cfg = load_config(None, ["lp.quant_method=awq", "lp.bits=4", r"lp.group_size_overrides={'layers\.1\.': 32}"])
    assert cfg.lp.group_size_overrides == {r"layers\.1\.": 32}
