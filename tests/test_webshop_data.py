"""WebShop data: generator format and determinism, WebShop's loading rules, goals, splits, bad input."""
from __future__ import annotations

import filecmp
import json
import os
import random

import pytest

from environments.errors import DataError, UnknownSplitError
from environments.webshop import data as wsd
from environments.webshop.generator import generate


def _write(d, name, obj):
    with open(os.path.join(d, name), "w") as f:
        json.dump(obj, f)


def _record(asin, **kw):
    rec = {"asin": asin, "name": f"Product {asin}", "full_description": "A fine product.",
           "small_description": ["first bullet", "second bullet"], "pricing": "$12.99",
           "images": ["https://x/1.jpg"], "category": "fashion", "query": " Men's Shirts ",
           "product_category": "Clothing › Men › Shirts", "customization_options": None,
           "brand": "Vendor", "list_price": "$20.00"}
    rec.update(kw)
    return rec


@pytest.fixture
def hand_data(tmp_path):
    d = str(tmp_path)
    products = [
        _record("B000000001", pricing="$10.99 to $15.99", small_description="one string bullet",
                customization_options={"Color": [{"value": "Black/Grey", "image": None}, {"value": "Navy Blue"}],
                                       "Size": [{"value": " X-Large ", "image": "https://x/2.jpg"}]}),
        _record("B000000001", name="a duplicate that must be dropped"),
        _record("nan", name="asin nan"),
        _record("B0000000012", name="asin longer than 10 characters"),
        _record("B000000002", pricing=""),
        _record("B000000003", pricing="$1,299.00"),
        _record("B000000004", pricing="$34.50 to $45.00"),
    ]
    _write(d, "items_shuffle_1000.json", products)
    _write(d, "items_ins_v2_1000.json", {"B000000001": {"attributes": ["machine wash", "cotton"],
                                                        "instruction": "i need a shirt",
                                                        "instruction_attributes": ["machine wash"]}})
    _write(d, "items_human_ins.json", {
        "B000000001": [{"instruction": "i want a black grey shirt that is machine wash.",
                        "instruction_attributes": ["machine wash"], "instruction_options": ["black | grey"],
                        "assignment_id": "x", "worker_id": "y"},
                       {"instruction": "no attributes here", "instruction_attributes": [],
                        "instruction_options": []}],
        "B000000003": [{"instruction": "an expensive shirt", "instruction_attributes": ["cotton"],
                        "instruction_options": []}],
        "B999999999": [{"instruction": "not in the catalog", "instruction_attributes": ["x"],
                        "instruction_options": []}],
    })
    return d


def test_generator_is_deterministic_and_seed_dependent(tmp_path):
    a, b, c = (str(tmp_path / x) for x in "abc")
    sa = generate(a, n_products=120, n_instructions=30, seed=3)
    generate(b, n_products=120, n_instructions=30, seed=3)
    generate(c, n_products=120, n_instructions=30, seed=4)
    names = sorted(os.listdir(a))
    assert names == ["items_human_ins.json", "items_ins_v2_120.json", "items_shuffle_120.json"]
    assert all(filecmp.cmp(os.path.join(a, n), os.path.join(b, n), shallow=False) for n in names)
    assert not filecmp.cmp(os.path.join(a, names[2]), os.path.join(c, names[2]), shallow=False)
    assert sa["products"] == 120 and sa["instructions"] == 30


def test_generated_files_use_the_real_fields(webshop_data):
    files = wsd.find_files(webshop_data)
    products = json.load(open(files["products"]))
    for rec in products:
        assert set(wsd.PRODUCT_REQUIRED) <= set(rec) and "pricing" in rec and "customization_options" in rec
    assert len({r["category"] for r in products}) >= 5
    assert any(" to $" in r["pricing"] for r in products), "price ranges such as '$10.99 to $12.99'"
    assert any(r["customization_options"] and "/" in json.dumps(r["customization_options"]) for r in products)
    human = json.load(open(files["human"]))
    rows = [row for rows in human.values() for row in rows]
    assert len(rows) == 60
    assert all(set(wsd.HUMAN_REQUIRED) <= set(row) for row in rows)
    ins = json.load(open(files["attributes"]))
    assert all(set(v) == {"attributes", "instruction", "instruction_attributes"} for v in ins.values())


def test_pricing_parse_and_tag():
    assert wsd.parse_pricing("$12.99") == [12.99]
    assert wsd.parse_pricing("$10.99 to $15.99") == [10.99, 15.99]
    assert wsd.parse_pricing("$1,299.00") == [1299.0]
    assert wsd.parse_pricing("") == [100.0] and wsd.parse_pricing(None) == [100.0]
    assert wsd.price_tag([34.5, 45.0]) == "$34.5 to $45.0"
    assert wsd.price_tag([12.99]) == "$12.99"
    with pytest.raises(DataError, match="pricing"):
        wsd.parse_pricing("$abc", "f.json", "B1")


def test_price_upper_rule():
    rng = random.Random(0)
    seen = {wsd.price_upper_for(12.99, rng) for _ in range(200)}
    assert seen == {30.0, 40.0, 50.0}  # two of 20/30/40/50 drawn, the larger kept: never 20
    assert {wsd.price_upper_for(975.0, rng) for _ in range(20)} == {990.0}
    assert wsd.price_upper_for(985.0, rng) == 1_000_000.0


def test_loading_rules(hand_data):
    data = wsd.load_data(hand_data)
    assert [p.asin for p in data.products] == ["B000000001", "B000000002", "B000000003", "B000000004"]
    p1 = data.product("B000000001")
    assert p1.title == "Product B000000001"  # first record of a duplicate asin is kept
    assert p1.options == {"color": ["black | grey", "navy blue"], "size": ["x-large"]}
    assert p1.bullet_points == ["one string bullet"]
    assert p1.price_values == [10.99, 15.99] and p1.price_tag == "$10.99 to $15.99"
    assert 10.99 <= data.prices["B000000001"] <= 15.99
    assert p1.attributes == ["machine wash", "cotton"] and p1.query == "men's shirts"
    p2 = data.product("B000000002")
    assert p2.attributes == ["DUMMY_ATTR"] and p2.price_values == [100.0] and p2.options == {}
    assert data.product("B000000004").price_tag == "$34.5 to $45.0"


def test_human_goals(hand_data):
    data = wsd.load_data(hand_data)
    assert len(data.goals) == 2  # the annotation without attributes and the unknown asin are skipped
    by_asin = {g.asin: g for g in data.goals}
    g1 = by_asin["B000000001"]
    assert g1.price_upper in (20.0, 30.0, 40.0, 50.0) and g1.price_upper > data.prices["B000000001"]
    assert g1.instruction_text == (f"i want a black grey shirt that is machine wash, "
                                   f"and price lower than {g1.price_upper:.2f} dollars")
    assert g1.goal_options == ["black | grey"] and g1.attributes == ["machine wash"]
    assert (g1.query, g1.category, g1.name) == ("men's shirts", "fashion", "Product B000000001")
    g3 = by_asin["B000000003"]
    assert g3.price_upper == 1_000_000.0 and g3.instruction_text == "an expensive shirt"
    again = wsd.load_data(hand_data)  # seeded: same prices, same price_upper, same order
    assert [(g.asin, g.price_upper) for g in again.goals] == [(g.asin, g.price_upper) for g in data.goals]


def test_splits(webshop_data):
    data = wsd.load_data(webshop_data)
    assert len(data.goals) == 60
    test, ev, train = (data.split_indices(s) for s in ("test", "eval", "train"))
    assert (len(test), len(ev), len(train)) == (15, 15, 30)
    assert sorted(test + ev + train) == list(range(60))
    assert data.split_indices("valid_unseen") == test and data.split_indices("valid_seen") == ev
    assert wsd.split_bounds(12087) == (500, 1500)
    with pytest.raises(UnknownSplitError, match="nope"):
        data.split_indices("nope")


def test_missing_directory_names_the_path(tmp_path):
    missing = str(tmp_path / "no_such_dir")
    with pytest.raises(DataError) as e:
        wsd.load_data(missing)
    assert missing in str(e.value) and e.value.path == missing


def test_missing_product_field_names_file_and_field(hand_data):
    path = os.path.join(hand_data, "items_shuffle_1000.json")
    records = json.load(open(path))
    del records[4]["category"]
    _write(hand_data, "items_shuffle_1000.json", records)
    with pytest.raises(DataError) as e:
        wsd.load_data(hand_data)
    assert e.value.field == "category" and e.value.path == path
    assert "category" in str(e.value) and path in str(e.value)


def test_missing_annotation_field_names_file_and_field(hand_data):
    path = os.path.join(hand_data, "items_human_ins.json")
    human = json.load(open(path))
    del human["B000000001"][0]["instruction_options"]
    _write(hand_data, "items_human_ins.json", human)
    with pytest.raises(DataError) as e:
        wsd.load_data(hand_data)
    assert e.value.field == "instruction_options" and path in str(e.value)


def test_malformed_json_and_missing_catalog(tmp_path, hand_data):
    with open(os.path.join(hand_data, "items_ins_v2_1000.json"), "w") as f:
        f.write("{not json")
    with pytest.raises(DataError, match="items_ins_v2_1000.json"):
        wsd.load_data(hand_data)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="items_shuffle"):
        wsd.load_data(str(empty))


def test_unknown_split_through_make_env(webshop_data):
    from environments import make_env

    with pytest.raises(UnknownSplitError):
        make_env("webshop", webshop_data, "valid_unknown")


def test_synthetic_goals_as_webshop_builds_them(tmp_path):
    d = str(tmp_path)
    shirt_options = {"Size": [{"value": "Small"}, {"value": "Large"}], "Color": [{"value": "Black"}], "Fit": None}
    _write(d, "items_shuffle_1000.json", [
        _record("B000000001", customization_options=shirt_options),
        _record("B000000002", name="Mug"),
        _record("B000000003", name="no items_ins_v2 entry: no instruction")])
    _write(d, "items_ins_v2_1000.json", {
        "B000000001": {"attributes": ["cotton"], "instruction": "i need a shirt.",
                       "instruction_attributes": ["cotton", "machine wash"]},
        "B000000002": {"attributes": ["cotton"], "instruction": "i need a mug", "instruction_attributes": ["cotton"]}})
    data = wsd.load_data(d, human_goals_only=False)
    assert data.product("B000000001").options == {"size": ["small", "large"], "color": ["black"]}  # null "Fit" skipped
    shirts = sorted((g for g in data.goals if g.asin == "B000000001"), key=lambda g: g.instruction_text)
    mug, = [g for g in data.goals if g.asin == "B000000002"]
    assert len(data.goals) == 3  # 1 colour x 2 sizes for the shirt, 1 for the mug, none for B000000003
    # option names sorted (color before size, though the file lists Size first); the "." is kept;
    # goal_options are {name: value}
    up = shirts[0].price_upper
    assert up in (20.0, 30.0, 40.0, 50.0) and shirts[1].price_upper == up
    assert [g.instruction_text for g in shirts] == [
        f"i need a shirt. with color: black, and size: large, and price lower than {up:.2f} dollars",
        f"i need a shirt. with color: black, and size: small, and price lower than {up:.2f} dollars"]
    assert [g.goal_options for g in shirts] == [{"color": "black", "size": "large"},
                                                {"color": "black", "size": "small"}]
    assert mug.goal_options == {} and mug.instruction_text.startswith("i need a mug, and price lower than")
    # weights: "cotton" is in 3 goals, "machine wash" in 2 -> shirt (1/3 + 1/2)/2 = 5/12, mug 1/3
    assert [g.weight for g in shirts] == [pytest.approx(5 / 12)] * 2 and mug.weight == pytest.approx(1 / 3)


def test_synthetic_goal_without_attributes_is_a_data_error(tmp_path):
    d = str(tmp_path)
    _write(d, "items_shuffle_1000.json", [_record("B000000001")])
    _write(d, "items_ins_v2_1000.json", {"B000000001": {"attributes": [], "instruction": "i need a shirt",
                                                        "instruction_attributes": []}})
    with pytest.raises(DataError, match="B000000001 has an instruction but no instruction_attributes"):
        wsd.load_data(d, human_goals_only=False)


@pytest.mark.parametrize("products,instructions", [(100, 100), (30, 50), (10, 7), (1000, 100)])
def test_generator_gives_the_goals_asked_for(tmp_path, products, instructions):
    # each annotated target takes 2 records (itself and a near-copy); none may be cut to fit
    summary = generate(str(tmp_path), n_products=products, n_instructions=instructions, seed=0)
    data = wsd.load_data(str(tmp_path))
    assert summary["instructions"] == instructions and len(data.goals) == instructions
    assert len(data.products) == products
