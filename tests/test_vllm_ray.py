"""A rollout through Ray with the HP tier on vLLM (its model server in the vLLM side venv) and the
LP tier on transformers, driven from the base environment, which cannot import vLLM.

Needs the side venv (``python -m dmr_rl.models.vllm_env``): .ci/run's second step sets
``DMR_VLLM_PYTHON`` to its interpreter; without it the test is skipped.
"""
from __future__ import annotations

import os

import pytest

VLLM_PYTHON = os.environ.get("DMR_VLLM_PYTHON", "")
pytestmark = pytest.mark.skipif(not VLLM_PYTHON, reason="DMR_VLLM_PYTHON (the vLLM side venv's python) is not set")


def test_rollout_with_a_vllm_tier_and_a_transformers_tier(ray_session, alfworld_data, tmp_path):
    from dmr_rl.config import DMRConfig, TierConfig, validate
    from dmr_rl.rollout.records import HP, LP, TrajectoryStore
    from dmr_rl.serving.launcher import create_rollout_group, create_tier_clients, shutdown_all

    assert os.access(VLLM_PYTHON, os.X_OK), f"DMR_VLLM_PYTHON={VLLM_PYTHON!r} is not an interpreter"
    cfg = DMRConfig()
    cfg.env.data_dir, cfg.env.max_steps = alfworld_data, 4
    cfg.hp = TierConfig(backend="vllm", python=VLLM_PYTHON, dtype="float32", enforce_eager=True)
    validate(cfg)
    clients = create_tier_clients(cfg)
    group = None
    try:
        info = {t: c.ready()[0] for t, c in clients.items()}
        assert info["hp"]["backend"] == "vllm" and info["lp"]["backend"] in ("compressed", "transformers")
        assert info["hp"]["pid"] != info["lp"]["pid"] and info["hp"]["pid"] != os.getpid()
        group = create_rollout_group(cfg, clients, tmp_path, num_workers=1, envs_per_worker=2)
        summary = group.run_episodes([0, 1, 2], method="mixed", seed=0)
        assert summary["episodes"] == 3
        steps = [s for e in TrajectoryStore.read(tmp_path) for s in e.steps]
        tiers = {s.tier for s in steps}
        assert tiers == {HP, LP}, f"mixed routing used only {tiers}"
        for s in steps:
            assert s.action in s.admissible and s.latency_s > 0
            assert s.weight_bytes > 0
        cost = clients["hp"].cost()
        assert cost["calls"] >= 1 and cost["wall_time_s"] > 0
    finally:
        shutdown_all(group, clients)
