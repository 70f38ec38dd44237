"""WebShop's reward at "Buy Now", from its published definition.

    reward = r_type * (A + O + P) / (len(goal.attributes) + len(goal.goal_options) + 1)

* A: goal attributes matched -- fuzzy ``token_set_ratio > 85`` against one of the product's
  ``Attributes``, else the goal attribute (as written) is a substring of the lower-cased title, the
  lower-cased bullet points joined by spaces, or the lower-cased description.
* O: goal options matched -- both sides go through :func:`normalize_color`; a goal option matches when
  a purchased option value has ``token_set_ratio > 85`` with it.
* P: 1 if the product's (sampled) price <= ``price_upper``.
* r_type: 1.0; 0.5 when neither the query, the breadcrumbs (>= 2 shared segments) nor the title nouns
  (score > 0.2) match; then 0.1 if title_score < 0.1; then 0.0 if title_score == 0.

Fuzzy matching is rapidfuzz's ``token_set_ratio`` with thefuzz's defaults (lower-case, strip
non-alphanumerics, score rounded to an integer), so thresholds behave as in WebShop.

Nouns for the title score: WebShop tags titles with spaCy ``en_core_web_sm`` (NOUN/PROPN). That model
cannot be installed offline here, so :func:`title_nouns` uses it when it is importable and otherwise
falls back to :func:`fallback_nouns`: lower-cased word tokens minus a fixed list of English function
words and numbers. The fallback keeps adjectives ("wireless", "red"), so its
title scores are higher than spaCy's for partial overlaps; for identical or disjoint titles the two
agree. Which extractor ran is reported in ``details["noun_extractor"]``.
"""
from __future__ import annotations

import re
from typing import Callable, Iterable, Optional

from rapidfuzz import fuzz
from rapidfuzz.utils import default_process

FUZZY_THRESHOLD = 85

# WebShop's colour vocabulary, in its (alphabetical) order: the first entry found as a substring wins.
COLOR_WORDS = (
    "alabaster apricot aqua ash asphalt azure banana beige black blue blush bordeaux bronze brown "
    "burgundy camel camo caramel champagne charcoal cheetah chestnut chocolate christmas coffee cognac "
    "copper coral cranberry cream crystal dark denim eggplant elephant espresso fuchsia gold granite "
    "grape graphite grass gray green grey heather indigo ivory ivy khaki lavender lemon leopard light "
    "lilac lime magenta maroon mauve merlot midnight mint mocha multicolor mushroom mustard natural navy "
    "nude olive orange peach pewter pink plum purple rainbow red rose royal rust sand sapphire seashell "
    "silver skull slate steel stone stonewash sunflower tan taupe teal tiger turquoise violet walnut "
    "wheat white wine yellow"
).split()

FUNCTION_WORDS = frozenset(
    "a an the and or but nor for of in on at to from by with without into onto over under up down out "
    "off about as per via vs than then so too very is are be been being was were has have had do does "
    "it its this that these those all any both each every no not only own same some such other more "
    "most less few many much i you he she we they me him her us them my your his our their what which "
    "who whom whose when where why how can will just also".split()
)


def fuzzy_score(a: str, b: str) -> int:
    """thefuzz-style ``token_set_ratio``: processed (lower-case, alphanumerics) and rounded."""
    return int(round(fuzz.token_set_ratio(str(a), str(b), processor=default_process)))


def normalize_color(text: str) -> str:
    """The first colour word of WebShop's list found in ``text``; ``text`` itself when none is."""
    for color in COLOR_WORDS:
        if color in text:
            return color
    return text


def fallback_nouns(text: str) -> list[str]:
    """Lower-cased content-word tokens (the stand-in for spaCy's NOUN/PROPN tags)."""
    tokens = re.findall(r"[a-z0-9]+(?:['-][a-z0-9]+)*", text.lower())
    return [t for t in tokens if t not in FUNCTION_WORDS and not re.fullmatch(r"[\d.'-]+", t) and len(t) > 1]


_SPACY: list = []  # [model or None], loaded once


def spacy_nouns(text: str) -> Optional[list[str]]:
    """NOUN/PROPN tokens by spaCy ``en_core_web_sm``; None when spaCy or the model is missing."""
    if not _SPACY:
        try:
            import importlib.util

            if importlib.util.find_spec("en_core_web_sm") is None:  # skip importing spaCy for nothing
                raise ImportError("en_core_web_sm is not installed")
            import spacy

            _SPACY.append(spacy.load("en_core_web_sm", disable=["ner", "parser", "lemmatizer"]))
        except Exception:  # spaCy or its model not installed
            _SPACY.append(None)
    nlp = _SPACY[0]
    if nlp is None:
        return None
    return [t.text.lower() for t in nlp(text) if t.pos_ in ("NOUN", "PROPN")]


def title_nouns(text: str) -> tuple[list[str], str]:
    """(nouns, extractor name): spaCy when available, else the function-word filter."""
    nouns = spacy_nouns(text)
    return (nouns, "spacy") if nouns is not None else (fallback_nouns(text), "fallback")


def type_reward(purchased, goal, nouns: Optional[Callable[[str], list[str]]] = None) -> dict:
    """r_type and its parts. ``purchased``: a ``data.Product``; ``goal``: a ``data.Goal``."""
    query_match = purchased.query == goal.query
    p_cat = {x.strip() for x in purchased.product_category.split("›")}
    g_cat = {x.strip() for x in goal.product_category.split("›")}
    category_match = len(p_cat & g_cat) >= 2
    if nouns is None:
        (p_nouns, extractor), (g_nouns, _) = title_nouns(purchased.title), title_nouns(goal.name)
    else:
        p_nouns, g_nouns, extractor = nouns(purchased.title), nouns(goal.name), "given"
    title_score = 0.2 if not g_nouns else len(set(p_nouns) & set(g_nouns)) / len(g_nouns)
    r_type = 1.0
    if not (query_match or category_match or title_score > 0.2):
        r_type = 0.5
    if title_score < 0.1:
        r_type = 0.1
    if title_score == 0.0:
        r_type = 0.0
    return {"r_type": r_type, "query_match": query_match, "category_match": category_match,
            "title_score": title_score, "noun_extractor": extractor}


def attribute_matches(purchased, goal_attributes: Iterable[str]) -> int:
    title = purchased.title.lower()
    bullets = " ".join(purchased.bullet_points).lower()
    description = purchased.description.lower()
    n = 0
    for g in goal_attributes:
        if any(fuzzy_score(p, g) > FUZZY_THRESHOLD for p in purchased.attributes):
            n += 1
        elif g in title or g in bullets or g in description:
            n += 1
    return n


def option_matches(purchased_values: Iterable[str], goal_options: Iterable[str]) -> int:
    values = [normalize_color(str(v)) for v in purchased_values]
    n = 0
    for g in goal_options:
        g = normalize_color(str(g))
        if any(fuzzy_score(v, g) > FUZZY_THRESHOLD for v in values):
            n += 1
    return n


def get_reward(purchased, goal, price: float, options: dict[str, str],
               nouns: Optional[Callable[[str], list[str]]] = None) -> tuple[float, dict]:
    """(reward in [0, 1], details) for buying ``purchased`` at ``price`` with ``options`` clicked.

    ``options``: {option name: value} as clicked; only the values count. ``nouns``: a noun extractor
    to force (tests pass :func:`fallback_nouns`); None picks spaCy when available.
    """
    rt = type_reward(purchased, goal, nouns)
    a = attribute_matches(purchased, goal.attributes)
    o = option_matches(list(options.values()), goal.goal_options)
    p = 1 if price <= goal.price_upper else 0
    denom = len(goal.attributes) + len(goal.goal_options) + 1
    reward = rt["r_type"] * (a + o + p) / denom
    details = dict(rt, attribute_matches=a, option_matches=o, price_ok=bool(p), denominator=denom)
    return float(reward), details
