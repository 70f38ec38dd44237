"""The WebShop agent path: `dmr train agent --env webshop` on a tiny generated catalog (tiny model).

The teacher (``TEACHERS["webshop"]``) is ``FirstMatchTeacher``: it reads the goal like the oracle but
buys the first listed product that earns a reward of 1. The agent acts in score mode over the listed
actions, which on the search page are one concrete search (the instruction without its price clause)
and elsewhere the page's clickables. This smoke test checks the plumbing -- every
page type gives labelled samples, the search included; the command trains and saves an agent that
plays valid actions -- not the agent's quality.
"""
from __future__ import annotations

import json

import pytest

from environments import make_env
from environments.webshop.env import instruction_query
from environments.webshop.generator import generate


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    root = tmp_path_factory.mktemp("webshop_agent")
    generate(str(root), n_products=40, n_instructions=16, seed=7)
    return str(root)


def test_teacher_buys_the_first_full_match_and_labels_every_page_type(catalog):
    from dmr_rl.models.bc_data import make_teacher, rollout_labelled
    from dmr_rl.models.prompting import PromptConfig

    env = make_env("webshop", catalog, "train")
    teacher = make_teacher("webshop")
    kinds, wins = set(), 0
    for i in range(env.num_tasks):
        samples, won = rollout_labelled(env, teacher, i, PromptConfig(history_window=2, show_admissible=False))
        wins += won
        first = samples[0]
        # the first step is the search page: its one listed action is the teacher's label
        assert first.admissible == [f"search[{instruction_query(env.goal)}]"] and first.target == 0
        for s in samples:
            label = s.admissible[s.target]
            kinds.add("search" if label.startswith("search[") else label if label in (
                "click[buy now]", "click[next >]", "click[< prev]") else "item" if label[6:8] == "b0" else "option")
    assert wins == env.num_tasks  # every purchase earns 1
    assert {"search", "item", "option", "click[buy now]"} <= kinds


def test_teacher_takes_the_first_full_match_on_the_page_and_leaves_a_wrong_item(catalog):
    from environments.webshop.teacher import FirstMatchTeacher

    env = make_env("webshop", catalog, "train")
    teacher = FirstMatchTeacher()
    for index in range(env.num_tasks):
        obs, info = env.reset(options={"task_index": index})
        teacher.reset(env)
        obs, _, _, _, info = env.step(teacher.act(obs, info))
        page = [env.data.products[i] for i in env._page_results()]
        scores = [teacher.score(p) for p in page]
        if 1.0 in scores and scores[0] < 1.0:
            break
    else:
        pytest.fail("no goal whose first result falls short of a reward of 1")
    # the first result does not earn 1: the teacher clicks the first one that does
    assert teacher.act(obs, info) == f"click[{page[scores.index(1.0)].asin.lower()}]"
    # on the first (wrong) result's page it goes back and never picks it again
    obs, _, _, _, info = env.step(f"click[{page[0].asin.lower()}]")
    assert teacher.act(obs, info) == "click[< prev]" and page[0].asin in teacher.rejected
    obs, _, _, _, info = env.step("click[< prev]")
    assert teacher.act(obs, info) == f"click[{page[scores.index(1.0)].asin.lower()}]"


def test_dmr_train_agent_webshop_trains_saves_and_acts(catalog, tmp_path):
    pytest.importorskip("transformers")
    from dmr_rl.cli import main
    from dmr_rl.models.agent import AgentPolicy, load_agent

    out = tmp_path / "agent"
    rc = main(["train", "agent", "--env", "webshop", "--data", catalog, "--out", str(out), "--minutes", "0.25",
               "--hidden", "32", "--layers", "1", "--heads", "2", "--vocab", "300", "--dagger-rounds", "0",
               "--val-games", "2"])
    assert rc == 0
    info = json.loads((out / "training.json").read_text())
    assert info["env"] == "webshop" and info["data"]["teacher"] == "environments.webshop.teacher:FirstMatchTeacher"
    assert info["data"]["samples"] > 0 and info["validation"]["games"] == 2
    assert json.loads((out / "agent_config.json").read_text())["action_mode"] == "score"
    # the saved agent plays an episode: its first action is the listed search, then only listed clicks
    env = make_env("webshop", catalog, "test")
    policy = AgentPolicy(load_agent(out), seed=0)
    obs, info = env.reset(options={"task_index": 0})
    policy.reset(env)
    actions, done = [], False
    while not done:
        action = policy.act(obs, info)
        assert action in info["admissible_commands"]
        actions.append(action)
        obs, _, term, trunc, info = env.step(action)
        done = term or trunc
        assert not info["invalid"]
    assert actions[0] == f"search[{instruction_query(env.goal)}]"


SHIPPED_NAME = "webshop-smollm2"


def _shipped():
    from dmr_rl.models.agent import ASSETS, is_adapter_dir

    return ASSETS / SHIPPED_NAME if is_adapter_dir(ASSETS / SHIPPED_NAME) else None


@pytest.mark.skipif(_shipped() is None, reason="the WebShop SmolLM2 agent is not committed")
def test_committed_webshop_agent_loads_and_acts(catalog):
    """The committed adapter: small, merged with SmolLM2 from its package, it plays listed actions on
    a generated goal (the listed search, then clicks); it is the default agent only if it met the bar."""
    from types import SimpleNamespace

    from dmr_rl.models.agent import DEFAULT_AGENTS, AgentPolicy, agent_policy_from_args, lp_spec

    shipped = _shipped()
    assert sum(f.stat().st_size for f in shipped.rglob("*") if f.is_file()) <= 25 * 2**20
    info = json.loads((shipped / "training.json").read_text())
    assert info["env"] == "webshop" and info["model"]["lora"]["rank"] > 0
    assert lp_spec(shipped)["bits"] in (2, 3, 4, 8)
    if DEFAULT_AGENTS.get("webshop") == SHIPPED_NAME:  # the default must meet the bar
        assert info["eval"]["hp"]["success"] >= 0.5
    env = make_env("webshop", catalog, "test")
    policy = agent_policy_from_args(SimpleNamespace(model=str(shipped), tier="hp", env="webshop", seed=0), env)
    assert isinstance(policy, AgentPolicy)
    obs, info = env.reset(options={"task_index": 0})
    policy.reset(env)
    actions = []
    for _ in range(3):
        action = policy.act(obs, info)
        assert action in info["admissible_commands"]
        assert policy.last_probs is not None and abs(policy.last_probs.sum() - 1) < 1e-4
        actions.append(action)
        obs, _, terminated, truncated, info = env.step(action)
        assert not info["invalid"]
        if terminated or truncated:
            break
    assert actions[0] == f"search[{instruction_query(env.goal)}]"
    assert len(actions) > 1 and actions[1].startswith("click[")
