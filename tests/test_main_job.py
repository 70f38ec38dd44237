"""The main job end to end on a tiny setting: every stage runs, the report's numbers come from
the run directory, stage markers make a second call resume instead of redoing work."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from dmr_rl.config import load_config
from dmr_rl.models.agent import ASSETS

pytestmark = pytest.mark.skipif(not (ASSETS / "alfworld" / "config.json").exists(),
                                reason="needs the committed ALFWorld agent")

TINY = ["env.generate_n=18", "env.max_steps=6", "collect.episodes=4", "collect.num_workers=1",
        "collect.envs_per_worker=4", "grpo.iterations=1", "grpo.tasks_per_iter=2", "grpo.group_size=2",
        "sft.epochs=2", "eval.episodes=2", "eval.seeds=[0]", "eval.target_hp_ratios=[0.5]",
        "eval.calib_episodes=2", "grpo.lambda_sweep=[1.0]",
        "eval.baselines=[hp_only, lp_only, random]", "eval.baseline_sweeps={random: [0.5]}",
        "eval.causal_episodes=0", "eval.bootstrap=50", "lp.bits=4"]


def test_main_job_runs_every_stage_and_resumes(ray_session, alfworld_data, tmp_path):
    from dmr_rl.pipeline import run as main_job

    run_dir = tmp_path / "run"
    cfg = load_config(None, TINY + [f"run_dir={run_dir}", f"env.data_dir={alfworld_data}"])
    report = main_job.run(cfg, progress=False)

    assert report == run_dir / "report" / "report.md" and report.is_file()
    stages = json.loads((run_dir / "stages.json").read_text())
    assert list(stages) == list(main_job.STAGES)
    lp_dir = Path(stages["quantize"]["lp_model"])
    assert lp_dir.parent == run_dir / "models" and (lp_dir / "dmr_quant.json").is_file()
    assert json.loads((lp_dir / "dmr_quant.json").read_text())["bits"] == 4
    assert (run_dir / "labels" / "steps.jsonl").is_file()
    assert (run_dir / "router_sft" / "router.json").is_file()
    assert (run_dir / "router_grpo" / "router" / "router.json").is_file()
    results = json.loads((run_dir / "report" / "results.json").read_text())
    text = json.dumps(results)
    for method in ("hp_only", "lp_only", "random", "sft", "grpo", "grpo_l1"):
        assert method in text
    assert (run_dir / "router_grpo_l1" / "router" / "router.json").is_file()
    for name in ("grpo", "grpo_l1"):  # each GRPO router's rollouts and scalars in their own folders
        assert any((run_dir / "tb" / name).glob("events.out.tfevents.*"))
        assert any((run_dir / "trajectories" / name).iterdir())
    calibration = json.loads((run_dir / "eval" / "calibration.json").read_text())
    assert set(calibration) == {"sft", "grpo"} and calibration["grpo"]["split"] == "valid_seen"
    timings = json.loads((run_dir / "timings.json").read_text())
    assert set(main_job.STAGES) <= set(timings) and timings["collect"] > 0

    # a second call finds every stage done and redoes none of them
    again = main_job.run(load_config(None, TINY + [f"run_dir={run_dir}", f"env.data_dir={alfworld_data}"]),
                         progress=False)
    assert again == report
    resumed = json.loads((run_dir / "timings.json").read_text())
    assert resumed["collect"] == timings["collect"]  # kept from the first call, not redone
    assert resumed["this_call"] < timings["this_call"] / 5


def test_fresh_run_dir_never_overwrites(tmp_path):
    from dmr_rl.pipeline.run import fresh_run_dir

    used = tmp_path / "r"
    used.mkdir()
    (used / "x").write_text("keep")
    assert fresh_run_dir(str(tmp_path / "unused")) == str(tmp_path / "unused")
    assert fresh_run_dir(str(used)) == str(tmp_path / "r-2")


def test_main_job_with_an_lp_hidden_router(ray_session, alfworld_data, tmp_path):
    """router.features=lp_hidden end to end, set up as the default sets it up (a linear probe on an
    inner LP layer, KL recorded during collection, only GRPO's router evaluated, no sampled point):
    collection records the LP model's prompt state, the labels carry it, stage 1 sizes the router
    by it, GRPO and evaluation route with it, paying the partial LP pass on HP's steps."""
    from dmr_rl.pipeline import run as main_job
    from dmr_rl.rollout.records import HP, LP, TrajectoryStore
    from dmr_rl.router.transformer import TransformerRouter

    run_dir = tmp_path / "run"
    cfg = load_config(None, TINY + [f"run_dir={run_dir}", f"env.data_dir={alfworld_data}",
                                    "router.features=lp_hidden", "router.hidden_layer=1", "router.n_layers=0",
                                    "collect.record_kl=true", "eval.routers=[grpo]", "eval.sampled=false",
                                    "eval.baselines=[hp_only]"])
    main_job.run(cfg, progress=False)
    hidden_size = json.loads((ASSETS / "alfworld" / "config.json").read_text())["hidden_size"]
    rows = [json.loads(line) for line in (run_dir / "labels" / "steps.jsonl").read_text().splitlines()]
    assert rows and all(len(r["lp_hidden"]) == hidden_size for r in rows)
    for stage in ("router_sft", "router_grpo/router"):
        router = TransformerRouter.load(run_dir / stage)
        assert router.needs_lp_hidden and router.features.hidden_dim == hidden_size
    grpo_steps = [s for e in TrajectoryStore.read(run_dir / "trajectories" / "grpo") for s in e.steps]
    assert grpo_steps and all(len(s.extra["lp_hidden"]) == hidden_size for s in grpo_steps)
    for s in grpo_steps:  # LP acted (its pass paid), or HP did and the layer-1 read cost 1/3 of an LP call
        assert (s.extra["paid"] == ["lp"]) if s.tier == LP else s.extra["lp_part"] == pytest.approx(1 / 3)
    assert {s.tier for s in grpo_steps} == {HP, LP}
    label_stats = json.loads((run_dir / "labels" / "label_stats.json").read_text())
    assert label_stats["kl_source"] == "recorded at collection"
    results = json.loads((run_dir / "report" / "results.json").read_text())
    assert {"grpo", "hp_only"} <= set(results["methods"]) and "sft" not in results["methods"]
    assert list(results["methods"]["grpo"]) == ["r0.50"]
