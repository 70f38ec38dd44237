"""The committed ALFWorld agent: it loads, its low-bit copy differs from it, it beats random play.

Random play over 6 games would win by luck far less often than the agent (it needs a
specific 5-10 step sequence among ~15 commands a step)."""
import json

import numpy as np
import pytest

from dmr_rl.models.agent import ASSETS, TRAINING_INFO, agent_dir, lp_checkpoint

AGENT = ASSETS / "alfworld"


def test_committed_agent_files():
    d = agent_dir("alfworld")
    assert json.loads((d / TRAINING_INFO).read_text())["lp"]["bits"] == 2  # the copy it asks for exists
    assert (d / lp_checkpoint(d, "alfworld").name / "dmr_quant.json").exists()
    size = sum(f.stat().st_size for f in AGENT.rglob("*") if f.is_file())
    assert size <= 25 * 2**20


def test_committed_agent_kl_between_tiers():
    from dmr_rl.models import load_backend
    from dmr_rl.models.agent import calibration_prompts
    from dmr_rl.models.kl import step_kl

    d = agent_dir("alfworld")
    texts = calibration_prompts(d, limit=12)
    prompts = [t[: t.rfind("\n>") + 2] for t in texts]
    actions = [t[t.rfind("\n>") + 2:] for t in texts]
    hp = load_backend(model_path=str(d))
    lp = load_backend(model_path=str(lp_checkpoint(d, "alfworld")))
    same = step_kl(hp, hp, prompts, actions, space="tokens")
    assert np.all(same["kl_sum"] == 0.0)
    diff = step_kl(hp, lp, prompts, actions, space="tokens", top_k=32)
    assert diff["kl_sum"].mean() > 1e-3 and np.all(diff["kl_sum"] >= 0)


@pytest.mark.slow
def test_committed_agent_beats_random_on_valid_unseen(alfworld_data):
    from types import SimpleNamespace

    from dmr_rl.models.agent import agent_policy_from_args
    from environments import make_env
    from environments.policies import RandomPolicy
    from environments.runner import evaluate_policy

    env = make_env("alfworld", alfworld_data, "valid_seen")
    n = min(6, env.num_tasks)
    agent = agent_policy_from_args(SimpleNamespace(model=str(AGENT), tier="hp", env="alfworld", seed=0), env)
    won_agent = evaluate_policy(env, agent, n)["success_rate"]
    won_random = evaluate_policy(env, RandomPolicy(seed=0), n)["success_rate"]
    # measured here, not read from training.json: the agent wins most of these unseen games
    assert won_agent >= 0.5 and won_agent > won_random


def test_bench_step_kl_on_expert_trajectories(alfworld_data):
    """experiments/bench_models.py's KL section: zero between a tier and itself, positive against
    the 2-bit copy, and the same expert steps in both runs."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "experiments"))
    import bench_models

    d = agent_dir("alfworld")
    same = bench_models.bench_step_kl(4, str(alfworld_data), agent=str(d), lp=str(d))
    low = bench_models.bench_step_kl(4, str(alfworld_data), agent=str(d))
    assert same["steps"] == low["steps"] >= 10
    assert same["kl_actions"]["max"] < 1e-6 and same["kl_tokens"]["max"] < 1e-6 and same["greedy_differs"] == 0
    for space in ("kl_actions", "kl_tokens"):
        k = low[space]
        assert k["mean"] > 1e-4 and k["p50"] <= k["p90"] <= k["p99"] <= k["max"] and 0.05 <= k["top5_share"] <= 1
    assert f"{low['steps']} expert steps" in bench_models.format_kl(low)
