"""WebShop's reward on hand-computed cases: reward = r_type * (A + O + P) / (|attrs| + |options| + 1).

Every expected number below is worked out by hand in the comment beside it. The first tests force
the word-filter extractor (``fallback_nouns``) so their title scores are easy to count; the spaCy
tests at the end use the pipeline the install provides (the default).
"""
from __future__ import annotations

import pytest

from environments.webshop.data import Goal, Product
from environments.webshop.reward import (fallback_nouns, fuzzy_score, get_reward, normalize_color,
                                         noun_extractor_name, option_matches, spacy_nouns, thefuzz_process,
                                         type_reward)

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


# ---- thefuzz 0.19 preprocessing (force_ascii, "_" kept) -----------------------------------------
def test_fuzzy_score_drops_latin1_like_thefuzz_force_ascii():
    # "rosé" -> "ros" (U+00E9 dropped); ratio("ros", "rose") = 2*3/(3+4) = 85.7 -> 86 > 85
    # (rapidfuzz's own processor keeps "é": 2*3/(4+4) = 75, which fails the > 85 test)
    assert thefuzz_process("Rosé") == "ros" and fuzzy_score("rosé", "rose") == 86
    # "crème brûlée" -> "crme brle"; no shared token, so ratio("brle crme", "brulee creme") over the
    # sorted tokens: common subsequence "brle crme" = 9 chars -> 2*9/(9+12) = 85.7 -> 86
    assert fuzzy_score("crème brûlée", "creme brulee") == 86
    # only U+0080-U+00FF go: "ā" (U+0101) stays and is lower-cased after the non-word pass
    assert thefuzz_process("CaféĀ-Blend") == "cafā blend"


def test_fuzzy_score_keeps_underscore_inside_words():
    # "usb_c" is one token (\w includes "_") against {c, usb}: no shared token, so the best pair is
    # ratio("usb_c", "c usb") (tokens sorted): common subsequence "usb" -> 2*3/(5+5) = 60
    # (rapidfuzz's processor splits "_": {c, usb} both sides -> 100)
    assert thefuzz_process("USB_C") == "usb_c" and fuzzy_score("usb_c", "usb c") == 60


def test_fuzzy_score_reads_a_pair_as_its_text():
    # str(("size", "XL")) = "('size', 'XL')" -> "size    xl": token set {size, xl} contains {xl} -> 100
    assert thefuzz_process(("size", "XL")) == "size    xl" and fuzzy_score("xl", ("size", "XL")) == 100


# ---- synthetic goals: (name, value) pairs into the option reward --------------------------------
def test_option_pairs_of_synthetic_goals():
    # ("color", "black"): an element equals a colour word -> "black"; the click "black" matches
    assert normalize_color(("color", "black")) == "black"
    assert option_matches(["black"], {"color": "black"}) == 1
    # ("color", "navy blue") stays a pair (no element *equals* a colour word); the click "navy blue"
    # normalises to "blue", a token of "color navy blue" -> 100
    assert normalize_color(("color", "navy blue")) == ("color", "navy blue")
    assert option_matches(["navy blue"], {"color": "navy blue"}) == 1
    # "peppermint" contains the colour word "mint" -> the click becomes "mint"; the goal pair stays
    # ("flavor name", "peppermint"): no shared token, ratio("mint", "flavor name peppermint") =
    # 2*4/(4+22) = 31 -> no match, although the right value was clicked (as in WebShop) ...
    assert option_matches(["peppermint"], {"flavor name": "peppermint"}) == 0
    # ... while a human goal's plain value normalises on both sides ("mint" == "mint")
    assert option_matches(["peppermint"], ["peppermint"]) == 1


def test_synthetic_goal_reward_counts_pairs():
    # goal options {"flavor name": "peppermint", "size": "20 count"}: the size pair matches (tokens of
    # "20 count" within "size 20 count"), the flavour pair does not (above) -> O = 1
    # A = 1 ("machine wash" in Attributes), P = 1, same title -> r_type 1 -> (1+1+1)/(1+2+1) = 0.75
    g = goal(options=())
    g.goal_options = {"flavor name": "peppermint", "size": "20 count"}
    r, d = reward(product(), g, 20.0, {"flavor name": "peppermint", "size": "20 count"})
    assert d["option_matches"] == 1 and d["denominator"] == 4 and r == pytest.approx(0.75)


# ---- spaCy nouns (the default) -----------------------------------------------------------------
def test_spacy_pipeline_is_the_default():
    assert noun_extractor_name().startswith("spacy en_core_web_sm")
    # title-cased words come out PROPN, but "Free" after "Hands" is tagged ADJ and left out; repeats stay
    assert spacy_nouns("Kestrel True Wireless Wireless Earbuds, Noise Cancelling, Hands Free") == [
        "kestrel", "true", "wireless", "wireless", "earbuds", "noise", "cancelling", "hands"]
    _, d = get_reward(product(), goal(), 20.0, {})
    assert d["noun_extractor"].startswith("spacy")


def test_spacy_drops_the_adjective_the_word_filter_keeps():
    # goal: the earbuds above (8 spaCy nouns, 9 fallback tokens with "free"); bought: a lipstick with
    # "Free" in its title; other query, breadcrumbs share 1 segment ("Clothing").
    # spaCy: no shared noun -> title_score 0 -> r_type 0; fallback: {free} -> 1/9 = 0.11 -> r_type 0.5
    earbuds = "Kestrel True Wireless Wireless Earbuds, Noise Cancelling, Hands Free"
    lipstick = product(title="Veloria Velvet Matte Lipstick, Cruelty Free, Vegan", query="matte lipstick",
                       category="Clothing › Lips")
    rt = type_reward(lipstick, goal(name=earbuds))
    assert rt["title_score"] == 0.0 and rt["r_type"] == 0.0
    rt = type_reward(lipstick, goal(name=earbuds), nouns=fallback_nouns)
    assert rt["title_score"] == pytest.approx(1 / 9) and rt["r_type"] == 0.5


def test_webshop_own_get_reward_cases_with_spacy():
    # WebShop's tests/web-agent-site/engine/test_goal.py::test_get_reward, case by case
    shoe = "Mens D.O.N. Issue 2 Gca Basketball Sneakers Shoes Casual - Off White"
    p = Product(asin="B1", title=shoe, description="", bullet_points=[], price_values=[35.0], price_tag="",
                main_image="", category="", query="Query 1", product_category="a › b › c", options={},
                attributes=["tea tree", "essential oil", "natural ingredients"])
    g = Goal(asin="B1", category="", query="Query 1", name=shoe, product_category="a › b › c",
             instruction_text="", attributes=["tea tree", "essential oils", "natural ingredients"],
             goal_options={"color": "grey", "size": "XL"}, price_upper=40.0)
    clicked = {"color": "grey", "size": "XL"}
    assert get_reward(p, g, 35, clicked)[0] == 1.0  # A=3, O=2, P=1 over 6
    # attributes only in the description ("natural ingredients"); WebShop's bullet points are a plain
    # string there, whose ' '.join spaces out every letter, so "essential oils" is not found -> A=1
    p.attributes, p.bullet_points = [], list("This shampoo has essential oils and smells like lemons")
    p.description = "Best shampoo on the market, made with natural ingredients"
    assert get_reward(p, g, 35, clicked)[0] == pytest.approx(4 / 6)  # (1+2+1)/6
    g.goal_options = {"color": "grey", "size": "XL", "amount": "pack of 12"}
    assert get_reward(p, g, 35, clicked)[0] == pytest.approx(4 / 7)  # (1+2+1)/7 = 0.5714
    # a power cord bought for a soundbar cord: other query, 1 shared breadcrumb, a weak title overlap
    # (title_score in [0.1, 0.2]) -> r_type 0.5 -> 0.5 * 4/7 = 0.2857
    g.name = "Saireed UL Listed 2 Prong Power Cord for JBL Bar 3.1 Bar 2.1 Channel 4K Ultra HD Soundbar"
    p.title = ("BRST AC Power Cord Outlet Socket Cable Plug Lead for Panasonic SC-HT830V DVD/VCR Combo "
               "Home Theater System")
    p.query, p.product_category = "Query 2", "a › d › e"
    r, d = get_reward(p, g, 35, clicked)
    assert 0.1 <= d["title_score"] <= 0.2 and r == pytest.approx(0.5 * 4 / 7)


def test_word_filter_runs_only_when_spacy_is_absent_and_says_so(monkeypatch):
    from environments.webshop import reward as rw

    monkeypatch.setattr(rw, "SPACY_MODELS", ("no_such_spacy_model",))
    monkeypatch.setattr(rw, "_SPACY", {})
    with pytest.warns(RuntimeWarning, match="word-filter fallback"):
        _, d = get_reward(product(), goal(), 20.0, {})
    assert d["noun_extractor"] == "fallback (none of no_such_spacy_model is installed)"
