"""Loading WebShop's real data files, building its human goals, and splitting them.

Files read from one data directory (WebShop's own names and fields):

* ``items_shuffle*.json`` -- a list of raw product records (``asin``, ``name``, ``full_description``,
  ``small_description``, ``pricing``, ``images``, ``category``, ``query``, ``product_category``,
  ``customization_options``; vendor fields are ignored).
* ``items_ins_v2*.json`` -- ``{asin: {"attributes", "instruction", "instruction_attributes"}}``.
* ``items_human_ins.json`` -- ``{asin: [{"instruction", "instruction_attributes",
  "instruction_options", ...}, ...]}``.

When several catalogs lie side by side (``items_shuffle_1000.json`` and ``items_shuffle.json``) the
``catalog`` argument picks one by its suffix; by default ``_1000`` is preferred, as WebShop does.

Loading rules kept from WebShop: asins that are ``"nan"`` or longer than 10 characters are skipped,
duplicates keep the first record; pricing ``"$10.99 to $15.99"`` -> ``[10.99, 15.99]`` (missing ->
``[100.0]``); option names and values lower-cased, values stripped with ``/`` -> `` | ``; attributes
from ``items_ins_v2`` or ``["DUMMY_ATTR"]``; human goals skip annotations without attributes and get
``price_upper`` from the multiples of 10 above the price; the goal list is shuffled with seed 233.

Deviation (documented): WebShop draws each product's price inside a range and each goal's
``price_upper`` from Python's unseeded global RNG, so they change from run to run. Here both come from
``random.Random(price_seed)`` (default 233) in catalog order, so a data directory always yields the
same goals.

Goals: human goals (``items_human_ins.json``) by default, as WebShop's text environment uses;
``human_goals_only=False`` builds WebShop's synthetic goals from ``items_ins_v2`` instead (one per
combination of option values over the sorted option names; ``goal_options`` is ``{name: value}`` and
the reward matches its pairs; weights as WebShop's, see ``synthetic_goals``). Products without an
``items_ins_v2`` entry have no instruction and give no synthetic goal (WebShop's loader stops with a
KeyError on them).

Splits (WebShop's convention over the shuffled goals): ``test`` = goals[:500], ``eval`` =
goals[500:1500], ``train`` = the rest. With fewer than 3,000 goals (generated data) the boundaries are
scaled to quarters: test = first 25 %, eval = next 25 %, train = the remaining 50 %.
Aliases: ``valid``/``valid_seen`` -> ``eval``; ``valid_unseen`` -> ``test`` (the CLI's default split).
"""
from __future__ import annotations

import glob
import json
import os
import random
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from environments.errors import DataError, UnknownSplitError

PRODUCT_REQUIRED = ("asin", "name", "full_description", "small_description", "images", "category",
                    "query", "product_category")
HUMAN_REQUIRED = ("instruction", "instruction_attributes", "instruction_options")
SPLITS = ("train", "eval", "test")
SPLIT_ALIASES = {"valid": "eval", "valid_seen": "eval", "dev": "eval", "valid_unseen": "test"}
GOAL_SHUFFLE_SEED = 233
REAL_SPLIT_BOUNDS = (500, 1500)
SMALL_DATA_GOALS = 3000


@dataclass
class Product:
    """One catalog entry after WebShop's loading rules."""

    asin: str
    title: str
    description: str
    bullet_points: list[str]
    price_values: list[float]
    price_tag: str
    main_image: str
    category: str
    query: str
    product_category: str
    options: dict[str, list[str]]
    attributes: list[str]
    instruction: Optional[str] = None
    instruction_attributes: list[str] = field(default_factory=list)
    reviews: list[Any] = field(default_factory=list)


@dataclass
class Goal:
    """One task: an instruction about a target product, scored by ``reward.get_reward``."""

    asin: str
    category: str
    query: str
    name: str
    product_category: str
    instruction_text: str
    attributes: list[str]
    goal_options: Union[list[str], dict[str, str]]  # human goals: values; synthetic goals: {name: value}
    price_upper: float
    weight: float = 1.0


# ---- field parsers ------------------------------------------------------------------------------
def parse_pricing(pricing: Any, path: str = "", asin: str = "") -> list[float]:
    """``"$12.99"`` -> [12.99]; ``"$10.99 to $15.99"`` -> [10.99, 15.99]; missing/empty -> [100.0].

    Each piece after a ``$`` keeps only its digits and dots (text between prices is ignored).
    """
    if pricing is None or (isinstance(pricing, str) and not pricing.strip()):
        return [100.0]
    if not isinstance(pricing, str):
        raise DataError(f"pricing of {asin} must be a string, got {type(pricing).__name__}", path, "pricing")
    values = []
    for piece in pricing.split("$")[1:]:
        digits = "".join(c for c in piece if c.isdigit() or c == ".")
        try:
            values.append(float(digits))
        except ValueError:
            raise DataError(f"unparseable pricing {pricing!r} of {asin}", path, "pricing") from None
    if not values:
        raise DataError(f"unparseable pricing {pricing!r} of {asin} (no '$' amount)", path, "pricing")
    return values


def price_tag(values: list[float]) -> str:
    """The displayed price, rebuilt from the floats as WebShop does (``$34.5 to $45.0``)."""
    return f"${values[0]}" if len(values) == 1 else f"${values[0]} to ${values[1]}"


def normalise_option_value(value: Any) -> str:
    return str(value).strip().replace("/", " | ").lower()


def parse_options(raw: Any, path: str = "", asin: str = "") -> dict[str, list[str]]:
    """``{name: [{"value": v, "image": ...}]}`` -> ``{name.lower(): [normalised v, ...]}``."""
    if not raw:
        return {}
    if not isinstance(raw, dict):
        raise DataError(f"customization_options of {asin} must be an object", path, "customization_options")
    options: dict[str, list[str]] = {}
    for name, entries in raw.items():
        if entries is None:  # WebShop skips an option whose contents are null
            continue
        values = []
        for entry in entries:
            if isinstance(entry, dict):
                if "value" not in entry:
                    raise DataError(f"option {name!r} of {asin} has an entry without 'value'", path,
                                    "customization_options.value")
                values.append(normalise_option_value(entry["value"]))
            else:
                values.append(normalise_option_value(entry))
        options[str(name).lower()] = values
    return options


def price_upper_for(price: float, rng: random.Random) -> float:
    """Two of the first four multiples of 10 (10..990) strictly above ``price``; keep the larger."""
    candidates = [p for p in range(10, 1000, 10) if p > price][:4]
    if len(candidates) < 2:
        return 1_000_000.0
    return float(max(rng.sample(candidates, 2)))


# ---- files ---------------------------------------------------------------------------------------
def _read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"malformed JSON ({e.msg} at line {e.lineno})", path) from None
    except OSError as e:
        raise DataError(f"cannot read file: {e.strerror}", path) from None


def find_files(data_dir: str, catalog: Optional[str] = None) -> dict[str, Optional[str]]:
    """Paths of the catalog, attribute and human-instruction files in ``data_dir``."""
    if not os.path.isdir(data_dir):
        raise DataError("WebShop data directory does not exist", data_dir)
    shuffles = sorted(glob.glob(os.path.join(data_dir, "items_shuffle*.json")))
    if not shuffles:
        raise DataError("no items_shuffle*.json catalog in the WebShop data directory", data_dir)
    by_suffix = {os.path.basename(p)[len("items_shuffle"):-len(".json")]: p for p in shuffles}
    if catalog is not None:
        key = "" if catalog in ("", "full") else (catalog if catalog.startswith("_") else f"_{catalog}")
        if key not in by_suffix:
            raise DataError(f"no catalog items_shuffle{key}.json (have {sorted(by_suffix)})", data_dir)
    else:
        key = "_1000" if "_1000" in by_suffix else ("" if "" in by_suffix else sorted(by_suffix)[0])
    attrs = os.path.join(data_dir, f"items_ins_v2{key}.json")
    if not os.path.exists(attrs):
        others = sorted(glob.glob(os.path.join(data_dir, "items_ins_v2*.json")))
        attrs = others[0] if len(others) == 1 else None
    human = os.path.join(data_dir, "items_human_ins.json")
    return {"products": by_suffix[key], "attributes": attrs,
            "human": human if os.path.exists(human) else None}


def load_products(path: str, attributes: dict) -> list[Product]:
    """WebShop's ``load_products`` rules over one ``items_shuffle*.json`` file."""
    raw = _read_json(path)
    if not isinstance(raw, list):
        raise DataError("a product catalog must be a JSON list of records", path)
    products, seen = [], set()
    for i, rec in enumerate(raw):
        if not isinstance(rec, dict):
            raise DataError(f"record {i} is not an object", path)
        if "asin" not in rec:
            raise DataError(f"record {i} has no asin", path, "asin")
        asin = str(rec["asin"])
        if asin == "nan" or len(asin) > 10 or asin in seen:
            continue
        for name in PRODUCT_REQUIRED:
            if name not in rec:
                raise DataError(f"product {asin} (record {i}) lacks a required field", path, name)
        images = rec["images"]
        if not isinstance(images, list) or not images:
            raise DataError(f"product {asin} needs a non-empty images list", path, "images")
        bullets = rec["small_description"]
        bullets = [bullets] if isinstance(bullets, str) else list(bullets or [])
        prices = parse_pricing(rec.get("pricing"), path, asin)
        ins = attributes.get(asin) if isinstance(attributes.get(asin), dict) else {}
        seen.add(asin)
        products.append(Product(
            asin=asin, title=str(rec["name"]), description=str(rec["full_description"] or ""),
            bullet_points=[str(b) for b in bullets], price_values=prices, price_tag=price_tag(prices),
            main_image=str(images[0]), category=str(rec["category"]),
            query=str(rec["query"]).lower().strip(), product_category=str(rec["product_category"]),
            options=parse_options(rec.get("customization_options"), path, asin),
            attributes=list(ins["attributes"]) if "attributes" in ins else ["DUMMY_ATTR"],
            instruction=ins.get("instruction"), instruction_attributes=list(ins.get("instruction_attributes") or []),
            reviews=list(rec.get("reviews") or [])))
    return products


def sample_prices(products: list[Product], rng: random.Random) -> dict[str, float]:
    """One price per product: the single price, or uniform inside a range (seeded; see module doc)."""
    prices = {}
    for p in products:
        v = p.price_values
        prices[p.asin] = v[0] if len(v) == 1 else rng.uniform(v[0], v[1])
    return prices


def human_goals(products: list[Product], human: dict, prices: dict[str, float], rng: random.Random,
                path: str = "") -> list[Goal]:
    """One goal per annotation with attributes, in catalog order (WebShop's human goal builder)."""
    goals = []
    for p in products:
        rows = human.get(p.asin)
        if not rows:
            continue
        if not isinstance(rows, list):
            raise DataError(f"annotations of {p.asin} must be a list", path)
        for k, row in enumerate(rows):
            for name in HUMAN_REQUIRED:
                if not isinstance(row, dict) or name not in row:
                    raise DataError(f"annotation {k} of {p.asin} lacks a required field", path, name)
            if not row["instruction_attributes"]:
                continue
            upper = price_upper_for(prices[p.asin], rng)
            text = str(row["instruction"]).strip(".")
            if upper < 1_000_000:
                text += f", and price lower than {upper:.2f} dollars"
            goals.append(Goal(p.asin, p.category, p.query, p.title, p.product_category, text,
                              list(row["instruction_attributes"]), [str(o) for o in row["instruction_options"]],
                              upper))
    return goals


def synthetic_goals(products: list[Product], prices: dict[str, float], rng: random.Random,
                    path: str = "") -> list[Goal]:
    """WebShop's synthetic goals: ``items_ins_v2`` instructions, one goal per option combination.

    As in WebShop: option names in sorted order, the instruction kept as written (no ``.`` stripped)
    with ``" with name: value, and name: value"`` appended, ``goal_options`` = ``{name: value}`` (the
    reward matches its ``(name, value)`` pairs), and each goal's weight the mean over its attributes
    of 1 / (number of synthetic goals holding that attribute).
    """
    import itertools

    goals = []
    for p in products:
        if p.instruction is None:
            continue
        if not p.instruction_attributes:
            raise DataError(f"product {p.asin} has an instruction but no instruction_attributes", path,
                            "instruction_attributes")
        upper = price_upper_for(prices[p.asin], rng)
        names = sorted(p.options)
        for combo in itertools.product(*(p.options[n] for n in names)):
            goal_options = dict(zip(names, combo))
            text = str(p.instruction)
            if goal_options:
                text += " with " + ", and ".join(f"{n}: {v}" for n, v in goal_options.items())
            if upper < 1_000_000:
                text += f", and price lower than {upper:.2f} dollars"
            goals.append(Goal(p.asin, p.category, p.query, p.title, p.product_category, text,
                              list(p.instruction_attributes), goal_options, upper))
    counts: dict[str, int] = {}
    for g in goals:
        for a in g.attributes:
            counts[a] = counts.get(a, 0) + 1
    for g in goals:
        g.weight = sum(1.0 / counts[a] for a in g.attributes) / len(g.attributes)
    return goals


def split_bounds(n_goals: int) -> tuple[int, int]:
    """(end of test, end of eval) over the shuffled goal list; see the module docstring."""
    if n_goals >= SMALL_DATA_GOALS:
        return REAL_SPLIT_BOUNDS
    return n_goals // 4, n_goals // 2


def canonical_split(split: str) -> str:
    name = SPLIT_ALIASES.get(split, split)
    if name not in SPLITS:
        raise UnknownSplitError(f"unknown WebShop split {split!r}; known: {list(SPLITS) + sorted(SPLIT_ALIASES)}",
                                field="split")
    return name


@dataclass
class WebShopData:
    """Everything loaded from one data directory: products, sampled prices, shuffled goals."""

    data_dir: str
    files: dict[str, Optional[str]]
    products: list[Product]
    prices: dict[str, float]
    goals: list[Goal]
    index: dict[str, int] = field(default_factory=dict)
    search_cache: dict[str, Any] = field(default_factory=dict)

    def product(self, asin: str) -> Product:
        return self.products[self.index[asin]]

    def split_indices(self, split: str) -> list[int]:
        """Positions in ``goals`` that belong to ``split`` (an alias is accepted)."""
        name = canonical_split(split)
        a, b = split_bounds(len(self.goals))
        rng = {"test": range(0, a), "eval": range(a, b), "train": range(b, len(self.goals))}[name]
        return list(rng)


def load_data(data_dir: str, catalog: Optional[str] = None, human_goals_only: bool = True,
              price_seed: int = GOAL_SHUFFLE_SEED) -> WebShopData:
    """Read a WebShop data directory and build its goals (human goals by default)."""
    files = find_files(data_dir, catalog)
    attributes = {}
    if files["attributes"]:
        attributes = _read_json(files["attributes"])
        if not isinstance(attributes, dict):
            raise DataError("items_ins_v2 must be a JSON object keyed by asin", files["attributes"])
    products = load_products(files["products"], attributes)
    rng = random.Random(price_seed)
    prices = sample_prices(products, rng)
    if human_goals_only:
        if not files["human"]:
            raise DataError("human goals need items_human_ins.json", os.path.join(data_dir, "items_human_ins.json"))
        human = _read_json(files["human"])
        if not isinstance(human, dict):
            raise DataError("items_human_ins.json must be a JSON object keyed by asin", files["human"])
        goals = human_goals(products, human, prices, rng, files["human"])
    else:
        goals = synthetic_goals(products, prices, rng, files["attributes"] or "")
    random.Random(GOAL_SHUFFLE_SEED).shuffle(goals)
    return WebShopData(os.path.abspath(data_dir), files, products, prices, goals,
                       {p.asin: i for i, p in enumerate(products)})


_CACHE: dict[tuple, WebShopData] = {}


def cached_data(data_dir: str, catalog: Optional[str] = None, human_goals_only: bool = True) -> WebShopData:
    """``load_data`` memoised per directory, catalog and file modification times."""
    files = find_files(data_dir, catalog)
    stamp = tuple((p, os.path.getmtime(p)) for p in files.values() if p)
    key = (os.path.abspath(data_dir), catalog, human_goals_only, stamp)
    if key not in _CACHE:
        _CACHE[key] = load_data(data_dir, catalog, human_goals_only)
    return _CACHE[key]
