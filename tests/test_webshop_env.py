"""WebShop text environment: pages, pagination, search ranking, invalid actions, the oracle."""
from __future__ import annotations

import statistics

import numpy as np
import pytest

from environments import make_env
from environments.policies import ExpertPolicy
from environments.runner import evaluate_policy
from environments.webshop.data import cached_data
from environments.webshop.env import WebShopEnv, instruction_query
from environments.webshop.search import SEARCH_BACKENDS, SearchBackendError, make_backend, tokenize


@pytest.fixture
def env(webshop_data):
    return make_env("webshop", webshop_data, "train")


def test_search_page_and_info(env):
    obs, info = env.reset(options={"task_index": 0})
    goal = env.goal
    assert obs == f"WebShop [SEP] Instruction: [SEP] {goal.instruction_text} [SEP] Search"
    assert info["admissible_commands"] == [f"search[{instruction_query(goal)}]"]
    assert info["task"] == goal.instruction_text and info["task_type"] == goal.category
    assert info["step"] == 0 and not info["won"] and info["score"] == 0.0
    assert env.max_steps == 15 and isinstance(env, WebShopEnv) and env.name == "webshop"


def test_pagination(env):
    env.reset(options={"task_index": 0})
    obs, _, _, _, info = env.step("search[and]")  # every generated description holds "and"
    assert obs.startswith("Back to Search [SEP] Page 1 (Total results: 50) [SEP] Next > [SEP] ")
    assert "< Prev" not in obs and "click[next >]" in info["admissible_commands"]
    first_page = [c for c in info["admissible_commands"] if c.startswith("click[b0")]
    assert len(first_page) == 10
    obs, _, _, _, info = env.step("click[next >]")
    assert "Page 2 (Total results: 50) [SEP] < Prev [SEP] Next >" in obs
    second_page = [c for c in info["admissible_commands"] if c.startswith("click[b0")]
    assert len(second_page) == 10 and not set(first_page) & set(second_page)
    expected = [env.data.products[i].asin.lower() for i in env.results[10:20]]
    assert second_page == [f"click[{a}]" for a in expected]
    for _ in range(3):
        obs, _, _, _, info = env.step("click[next >]")
    assert "Page 5" in obs and "Next >" not in obs and "click[next >]" not in info["admissible_commands"]
    obs, _, _, _, info = env.step("click[next >]")
    assert info["invalid"] and obs.startswith("Invalid action!") and "Page 5" in obs
    obs, _, _, _, info = env.step("click[< prev]")
    assert "Page 4" in obs and not info["invalid"] and info["step"] == 7


def test_item_page_options_subpages_and_back(env):
    env.reset(options={"task_index": 0})
    env.step(f"search[{env.expert_query()}]")
    target = env.data.product(env.goal.asin)
    obs, _, _, _, info = env.step(f"click[{target.asin.lower()}]")
    assert obs.startswith("Back to Search [SEP] < Prev [SEP] ")
    assert obs.endswith(f"{target.title} [SEP] Price: {target.price_tag} [SEP] Rating: N.A. [SEP] Description "
                        "[SEP] Features [SEP] Reviews [SEP] Buy Now")
    for name, values in target.options.items():
        assert " [SEP] ".join([name] + values) in obs
        assert all(f"click[{v}]" in info["admissible_commands"] for v in values)
    obs, _, _, _, info = env.step("click[Description]")  # clicks are lower-cased
    assert obs == f"Back to Search [SEP] < Prev [SEP] {target.description}" and info["page"] == "description"
    obs, _, _, _, info = env.step("click[features]")  # a sub-page only links back
    assert info["invalid"] and "cannot be clicked" in obs
    env.step("click[< prev]")
    obs, _, _, _, info = env.step("click[features]")
    assert obs == " [SEP] ".join(["Back to Search", "< Prev"] + target.bullet_points) and not info["invalid"]
    obs, _, _, _, info = env.step("click[< prev]")
    assert info["page"] == "item" and obs.endswith("Buy Now")
    obs, _, _, _, info = env.step("click[< prev]")
    assert info["page"] == "results"
    obs, _, _, _, info = env.step("click[back to search]")
    assert obs.startswith("WebShop [SEP] Instruction:") and info["admissible_commands"][0].startswith("search[")


def test_invalid_actions_count_and_never_crash(env):
    env.reset(options={"task_index": 1})
    cases = ["jump around", "click[buy now]", "search[]", "click[]", "search[x", ""]
    for k, cmd in enumerate(cases, 1):
        obs, reward, term, trunc, info = env.step(cmd)
        assert info["invalid"] and obs.startswith("Invalid action!") and reward == 0.0 and not term
        assert info["step"] == k and info["page"] == "search"
    env.step("search[shirt]")
    obs, _, _, _, info = env.step("search[again]")  # no search bar on the results page
    assert info["invalid"] and "no search bar" in obs
    obs, _, _, _, info = env.step("click[b0notthere]")
    assert info["invalid"] and "cannot be clicked" in obs


def test_step_cap_truncates_at_15(env):
    env.reset(options={"task_index": 2})
    for k in range(15):
        _, _, term, trunc, info = env.step("click[nothing]")
    assert trunc and not term and info["step"] == 15 and not info["won"]
    with pytest.raises(RuntimeError):
        env.step("click[nothing]")


def test_buying_the_target_without_options_follows_the_formula(env):
    # the target's attributes all match, the price is within budget, no option clicked:
    # reward = (|attrs| + 0 + 1) / (|attrs| + |options| + 1)
    for index in range(env.num_tasks):
        env.reset(options={"task_index": index})
        if env.goal.goal_options:
            break
    g = env.goal
    env.step(f"search[{env.data.product(g.asin).title}]")
    env.step(f"click[{g.asin.lower()}]")
    _, reward, term, _, info = env.step("click[buy now]")
    expected = (len(g.attributes) + 1) / (len(g.attributes) + len(g.goal_options) + 1)
    assert term and reward == pytest.approx(expected) and info["score"] == pytest.approx(expected)
    assert not info["won"] and info["purchased"] == g.asin


@pytest.mark.parametrize("split", ["train", "valid_seen", "valid_unseen"])
def test_oracle_wins(webshop_data, split):
    env = make_env("webshop", webshop_data, split)
    summary = evaluate_policy(env, ExpertPolicy(), env.num_tasks)
    assert summary["success_rate"] >= 0.9
    assert summary["mean_steps"] <= 10


def test_search_ranking_sanity(webshop_data):
    env = make_env("webshop", webshop_data, "train")
    data = env.data
    title_ranks, instruction_ranks = [], []
    for g in data.goals:
        target = data.index[g.asin]
        by_title = env.search.search(data.product(g.asin).title, 50)
        title_ranks.append(by_title.index(target) if target in by_title else 99)
        by_instruction = env.search.search(instruction_query(g), 50)
        instruction_ranks.append(by_instruction.index(target) if target in by_instruction else 99)
    assert max(title_ranks) <= 2, title_ranks  # its own title puts the product in the top 3
    assert statistics.median(instruction_ranks) < 10
    assert sum(r < 50 for r in instruction_ranks) >= 0.9 * len(instruction_ranks)


def test_bm25_scores_equal_rank_bm25(webshop_data):
    backend = make_backend("bm25", cached_data(webshop_data).products)
    for query in ["machine wash t-shirt navy blue", "gluten free ground coffee", "zzz unknown"]:
        ref = backend.bm25.get_scores(tokenize(query))
        assert np.allclose(backend.scores(query), ref)
        ranked = backend.search(query, 50)
        assert all(ref[a] >= ref[b] for a, b in zip(ranked, ranked[1:]))
    assert backend.search("zzz unknown", 50) == []
    assert set(SEARCH_BACKENDS) == {"bm25", "lucene"}
    with pytest.raises(ValueError, match="unknown search backend"):
        make_backend("solr", [])


def test_lucene_backend_reports_missing_pyserini(webshop_data):
    try:
        import pyserini  # noqa: F401
    except ImportError:
        with pytest.raises(SearchBackendError, match=r"pyserini and Java 21: pip install 'dmr-rl\[lucene\]'"):
            make_backend("lucene", cached_data(webshop_data).products)
    else:
        pytest.skip("pyserini is installed here; the error path cannot be exercised")


def test_options_persist_through_subpages_and_reach_the_reward(env):
    for index in range(env.num_tasks):
        env.reset(options={"task_index": index})
        if env.goal.goal_options:
            break
    env.step(f"search[{env.expert_query()}]")
    while not env.expert_action().startswith(f"click[{env.goal.asin.lower()}"):
        env.step(env.expert_action())
    env.step(env.expert_action())
    wanted = env.expert_options()
    for value in wanted.values():
        env.step(f"click[{value}]")
    env.step("click[reviews]")
    env.step("click[< prev]")
    _, reward, term, _, info = env.step("click[buy now]")
    assert term and info["purchased_options"] == wanted and info["won"] and reward == 1.0


def test_envs_sharing_data_keep_their_own_pages(webshop_data):
    a = make_env("webshop", webshop_data, "train")
    b = make_env("webshop", webshop_data, "train")
    assert a.data is b.data and a.search is b.search  # loaded and indexed once per data dir
    a.reset(options={"task_index": 0})
    b.reset(options={"task_index": 1})
    a.step("search[shirt]")
    _, _, _, _, info_b = b.step("click[back to search]")
    assert info_b["invalid"] and info_b["page"] == "search" and a.page == "results"


def test_synthetic_goals_from_items_ins_v2(webshop_data):
    data = cached_data(webshop_data, human_goals_only=False)
    with_options = [g for g in data.goals if g.goal_options]
    assert with_options and " with " in with_options[0].instruction_text
    env = make_env("webshop", webshop_data, "test", human_goals=False)
    scores, exact = [], 0
    for index in range(20):
        env.reset(options={"task_index": index})
        done = False
        while not done:
            _, reward, term, trunc, info = env.step(env.expert_action())
            done = term or trunc
        scores.append(reward)
        # the oracle buys the target with exactly the goal's {name: value}; a reward below 1 then comes
        # only from WebShop's pair matching (a value holding a colour word, e.g. "peppermint" -> "mint")
        exact += info["purchased"] == env.goal.asin and info["purchased_options"] == env.goal.goal_options
    assert exact == 20 and sum(scores) / 20 >= 0.9


def test_the_listed_search_is_the_instruction_and_any_typed_search_is_valid(env):
    _, info = env.reset(options={"task_index": 0})
    # "..., and price lower than 40.00 dollars" is cut: the listed search is the rest of the instruction
    text = env.goal.instruction_text
    assert ", and price lower than" in text
    assert info["admissible_commands"] == [f"search[{text[:text.index(', and price lower than')]}]"]
    assert info["admissible_commands"] == [f"search[{env.expert_query()}]"]  # what the oracle types first
    _, _, _, _, info = env.step("search[anything at all]")
    assert not info["invalid"] and info["page"] == "results"
