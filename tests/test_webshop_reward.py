"""WebShop's reward on hand-computed cases: reward = r_type * (A + O + P) / (|attrs| + |options| + 1).

Every expected number below is worked out by hand in the comment beside it. The title-noun part
uses the documented fallback extractor (``fallback_nouns``) so the numbers do not depend on whether
a spaCy model is installed.
"""
from __future__ import annotations

import pytest

from environments.webshop.data import Goal, Product
from environments.webshop.reward import (fallback_nouns, fuzzy_score, get_reward, normalize_color,
                                         option_matches, type_reward)

TEE_CAT = "Clothing › Men › Clothing › Shirts › T-Shirts"


def product(title="Acme Soft Cotton Crew Neck Tee", attributes=("machine wash",), query="men's t-shirts",
            category=TEE_CAT, description="A tee.", bullets=("soft fabric",)):
    return Product(asin="B000000001", title=title, description=description, bullet_points=list(bullets),
                   price_values=[20.0], price_tag="$20.0", main_image="", category="fashion", query=query,
                   product_category=category, options={}, attributes=list(attributes))


def goal(attributes=("machine wash",), options=(), price_upper=30.0, name="Acme Soft Cotton Crew Neck Tee"):
    return Goal(asin="B000000001", category="fashion", query="men's t-shirts", name=name,
                product_category=TEE_CAT, instruction_text="i need a tee", attributes=list(attributes),
                goal_options=list(options), price_upper=price_upper)


def reward(p, g, price, options):
    return get_reward(p, g, price, options, nouns=fallback_nouns)


def test_full_match_is_one():
    # A=2, O=2, P=1 (20 <= 30), r_type=1 (same query) -> 1 * 5/5
    p = product(attributes=["machine wash", "short sleeve", "cotton"])
    g = goal(attributes=["machine wash", "short sleeve"], options=["navy blue", "x-large"])
    r, d = reward(p, g, 20.0, {"color": "navy blue", "size": "x-large"})
    assert r == 1.0 and d["denominator"] == 5


def test_partial_attributes_options_and_title_substring():
    # goal attrs: "machine wash" (attribute list), "cotton spandex" (substring of the lower-cased title),
    # "short sleeve" (nowhere) -> A=2; options: "black" clicked, "x-large" not -> O=1; 25 <= 30 -> P=1
    # r_type 1 (same query, same title) -> (2+1+1)/(3+2+1) = 4/6
    p = product(title="Acme Tee, Cotton Spandex", attributes=["machine wash", "regular fit"])
    g = goal(attributes=["machine wash", "cotton spandex", "short sleeve"], options=["black", "x-large"],
             name="Acme Tee, Cotton Spandex")
    r, d = reward(p, g, 25.0, {"color": "black"})
    assert (d["attribute_matches"], d["option_matches"], d["price_ok"]) == (2, 1, True)
    assert r == pytest.approx(4 / 6)


def test_attribute_found_in_bullets_or_description():
    # "gluten free" is in the bullets, "non gmo" in the description -> A=2, P=1 -> 3/3
    p = product(attributes=["DUMMY_ATTR"], bullets=["GLUTEN FREE snack"], description="Certified Non GMO.")
    r, _ = reward(p, goal(attributes=["gluten free", "non gmo"]), 5.0, {})
    assert r == 1.0


def test_price_over_budget():
    # A=1, O=1, P=0 (35 > 30) -> (1+1+0)/(1+1+1) = 2/3
    r, d = reward(product(), goal(options=["black"]), 35.0, {"color": "black"})
    assert not d["price_ok"] and r == pytest.approx(2 / 3)


def test_unclicked_goal_options_still_count():
    # A=1, O=0 (nothing clicked), P=1 -> 2/(1+2+1) = 0.5
    r, _ = reward(product(), goal(options=["black", "large"]), 10.0, {})
    assert r == pytest.approx(0.5)


def test_colour_normaliser_and_fuzzy_options():
    assert normalize_color("navy blue") == "blue" and normalize_color("wine red") == "red"
    assert normalize_color("dark roast") == "dark" and normalize_color("x-large") == "x-large"
    assert option_matches(["royal blue"], ["navy blue"]) == 1  # both normalise to "blue"
    assert option_matches(["medium roast"], ["dark roast"]) == 0  # "medium roast" vs "dark"
    assert option_matches(["large"], ["x-large"]) == 1  # token set of one side contains the other
    assert fuzzy_score("34w x 32l", "32w x 32l") == 89 and fuzzy_score("1 count", "3 count") == 86
    assert fuzzy_score("Black", "black") == 100


def test_r_type_half_when_only_weak_title_overlap():
    # goal nouns (fallback): acme soft cotton crew neck tee = 6; purchased: zeta cotton hoodie
    # overlap {cotton} -> 1/6 = 0.167: not > 0.2, not < 0.1; other query, 1 shared breadcrumb -> 0.5
    # A=1, P=1 -> 0.5 * 2/2 = 0.5
    p = product(title="Zeta Cotton Hoodie", query="hoodies", category="Clothing › Hoodies")
    r, d = reward(p, goal(), 20.0, {})
    assert d["title_score"] == pytest.approx(1 / 6) and d["r_type"] == 0.5 and r == pytest.approx(0.5)


def test_r_type_category_match_restores_one():
    # same weak title overlap (1/6) but breadcrumbs share "Clothing" and "Men" -> category match -> 1.0
    p = product(title="Zeta Cotton Hoodie", query="hoodies", category="Clothing › Men › Hoodies")
    r, d = reward(p, goal(), 20.0, {})
    assert d["category_match"] and d["r_type"] == 1.0 and r == 1.0


def test_r_type_tenth_and_zero_even_with_query_match():
    # 11 goal nouns, overlap {cotton} -> 1/11 = 0.0909 < 0.1 -> r_type 0.1 although the query matches
    # A=1, P=1 -> 0.1 * 2/2 = 0.1
    long_name = "Acme Soft Cotton Crew Neck Tee Shirt Summer Beach Party Outfit"
    p = product(title="Zeta Cotton Hoodie")
    r, d = reward(p, goal(name=long_name), 20.0, {})
    assert d["query_match"] and d["r_type"] == 0.1 and r == pytest.approx(0.1)
    # no shared noun at all -> title_score 0 -> r_type 0 -> reward 0
    r, d = reward(product(title="Zeta Wool Hoodie"), goal(), 20.0, {})
    assert d["title_score"] == 0.0 and r == 0.0


def test_goal_name_without_nouns_scores_point_two():
    # the fallback finds no content word in "the and of" -> title_score 0.2 -> with query match r_type 1
    rt = type_reward(product(), goal(name="the and of"), nouns=fallback_nouns)
    assert rt["title_score"] == 0.2 and rt["r_type"] == 1.0
