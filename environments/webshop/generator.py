"""A synthetic WebShop catalog in exactly the real file format (for tests, demos and CI).

``generate(out_dir, n_products, n_instructions, seed)`` writes

* ``items_shuffle_<n_products>.json``: raw product records with WebShop's scraped fields (``asin``,
  ``name``, ``full_description``, ``small_description`` (a list, sometimes a plain string),
  ``pricing`` (``"$12.99"``, ranges ``"$10.99 to $12.99"``, a few empty), ``images``, ``category``,
  ``query``, ``product_category`` (breadcrumbs joined by `` › ``), ``customization_options``
  (``{"Size": [{"value": "X-Large", "image": ...}]}``, raw capitalisation and ``/``), vendor fields),
  plus a few records the loader must drop (a duplicate asin, an asin ``"nan"``);
* ``items_ins_v2_<n_products>.json``: ``{asin: {attributes, instruction, instruction_attributes}}``
  for most products (the others fall back to ``DUMMY_ATTR``);
* ``items_human_ins.json``: ``{asin: [{instruction, instruction_attributes, instruction_options,
  attributes, assignment_id, worker_id}]}`` -- ``n_instructions`` annotations in all.

Five categories (beauty, electronics, fashion, food, furniture) with three product types each, every
type with its own attributes and options. Each annotated product gets confusable near-copies: the same
kind of title and brand with one goal attribute swapped out, the goal option values missing, or a
price above any budget the goal could get, so search, item choice and option clicks all matter.
Deterministic for a seed.
"""
from __future__ import annotations

import json
import os
import random
import string

C = "›"
TYPES = [
    # category, query, breadcrumbs, noun, modifiers, attributes, {option: values}, price range
    ("fashion", "men's t-shirts", f"Clothing, Shoes & Jewelry {C} Men {C} Clothing {C} Shirts {C} T-Shirts", "T-Shirt",
     ["Classic Crew", "Heavyweight", "Performance", "Pocket", "Vintage Graphic"],
     ["machine wash", "short sleeve", "cotton spandex", "regular fit", "long sleeve", "slim fit", "moisture wicking"],
     {"Size": ["Small", "Medium", "Large", "X-Large", "XX-Large"],
      "Color": ["Black", "White", "Navy Blue", "Heather Grey", "Olive Green", "Red/Black"]}, (8, 35)),
    ("fashion", "women's running shoes", f"Clothing, Shoes & Jewelry {C} Women {C} Shoes {C} Athletic {C} Running",
     "Running Shoe", ["Lightweight", "Cushioned", "Trail", "Road", "Everyday"],
     ["rubber sole", "non slip", "lace up", "memory foam", "arch support", "breathable mesh"],
     {"Size": ["6", "6.5", "7", "7.5", "8", "9", "10"], "Color": ["Pink/White", "Black", "Grey", "Coral", "Teal"]},
     (30, 120)),
    ("fashion", "men's jeans", f"Clothing, Shoes & Jewelry {C} Men {C} Clothing {C} Jeans", "Jeans",
     ["Straight Fit", "Relaxed", "Athletic Taper", "Bootcut", "Carpenter"],
     ["button fly", "relaxed fit", "straight leg", "machine wash", "stretch denim", "zipper closure"],
     {"Size": ["30W x 30L", "32W x 32L", "34W x 32L", "36W x 34L", "38W x 30L"],
      "Color": ["Dark Wash", "Light Wash", "Black", "Stonewash"]}, (20, 70)),
    ("beauty", "sulfate free shampoo", f"Beauty & Personal Care {C} Hair Care {C} Shampoo & Conditioner {C} Shampoos",
     "Shampoo", ["Moisturizing", "Volumizing", "Clarifying", "Repair", "Daily"],
     ["sulfate free", "paraben free", "natural ingredients", "hair growth", "dry hair", "cruelty free"],
     {"Size": ["8.4 Fl Oz (Pack of 1)", "16.9 Fl Oz (Pack of 2)", "33.8 Fl Oz"],
      "Scent": ["Lavender", "Coconut", "Tea Tree", "Unscented"]}, (6, 40)),
    ("beauty", "matte lipstick", f"Beauty & Personal Care {C} Makeup {C} Lips {C} Lipstick", "Lipstick",
     ["Velvet Matte", "Liquid", "Satin", "Creamy", "Long Wear"],
     ["long lasting", "cruelty free", "vegan", "highly pigmented", "easy carry", "smudge proof"],
     {"Color": ["Ruby Red", "Nude Pink", "Berry", "Coral", "Plum"]}, (5, 30)),
    ("beauty", "vitamin c serum", f"Beauty & Personal Care {C} Skin Care {C} Face {C} Serums", "Face Serum",
     ["Brightening", "Hydrating", "Firming", "Overnight", "Daily"],
     ["anti aging", "fine lines", "dark spots", "hyaluronic acid", "dermatologist tested", "fragrance free"],
     {"Size": ["1 Fl Oz", "2 Fl Oz", "1 Fl Oz (Pack of 2)"]}, (10, 60)),
    ("electronics", "bluetooth earbuds", f"Electronics {C} Headphones, Earbuds & Accessories {C} Earbud Headphones",
     "Wireless Earbuds", ["True Wireless", "Sport", "Mini", "Pro", "Bass Boost"],
     ["noise cancelling", "wireless charging", "water resistant", "long battery life", "hands free", "touch control"],
     {"Color": ["Black", "White", "Rose Gold", "Midnight Blue"]}, (15, 150)),
    ("electronics", "hdmi cable 4k", f"Electronics {C} Computers & Accessories {C} Cables {C} HDMI Cables", "HDMI Cable",
     ["High Speed", "Ultra", "Braided", "Premium", "Slim"],
     ["high speed", "gold plated", "4k ultra hd", "plug and play", "braided nylon", "ethernet channel"],
     {"Size": ["3 Feet", "6 Feet", "10 Feet", "15 Feet"], "Style": ["Single Pack", "2 Pack", "5 Pack"]}, (5, 30)),
    ("electronics", "iphone 13 case", f"Electronics {C} Cell Phones & Accessories {C} Cases, Holsters & Sleeves {C} Basic Cases",
     "Phone Case", ["Slim Clear", "Rugged Armor", "Leather Wallet", "Silicone", "Magnetic"],
     ["shock absorbing", "wireless charging", "raised edges", "anti scratch", "easy install", "card holder"],
     {"Color": ["Clear", "Black", "Dark Green", "Lavender"], "Style": ["Slim", "Rugged", "Wallet"]}, (8, 40)),
    ("food", "ground coffee", f"Grocery & Gourmet Food {C} Beverages {C} Coffee, Tea & Cocoa {C} Coffee {C} Ground Coffee",
     "Ground Coffee", ["Colombian", "Breakfast Blend", "Espresso", "House Blend", "Single Origin"],
     ["gluten free", "non gmo", "usda organic", "fair trade", "kosher certified", "low acid"],
     {"Flavor Name": ["Dark Roast", "Medium Roast", "French Vanilla", "Hazelnut"],
      "Size": ["12 Ounce (Pack of 1)", "2 Pound (Pack of 1)", "12 Ounce (Pack of 3)"]}, (7, 45)),
    ("food", "protein bars", f"Grocery & Gourmet Food {C} Snack Foods {C} Bars {C} Protein Bars", "Protein Bars",
     ["Crispy", "Chewy", "Baked", "Nut Butter", "Layered"],
     ["low sugar", "high protein", "gluten free", "keto friendly", "plant based", "individually wrapped"],
     {"Flavor": ["Chocolate Peanut Butter", "Cookies and Cream", "Salted Caramel", "Birthday Cake"],
      "Size": ["12 Count", "24 Count"]}, (12, 50)),
    ("food", "herbal tea bags", f"Grocery & Gourmet Food {C} Beverages {C} Coffee, Tea & Cocoa {C} Tea {C} Herbal",
     "Herbal Tea", ["Calming", "Detox", "Sleep", "Immune", "Digestive"],
     ["caffeine free", "usda organic", "non gmo", "individually wrapped", "natural ingredients", "sugar free"],
     {"Flavor Name": ["Chamomile", "Peppermint", "Ginger Lemon", "Hibiscus"], "Size": ["20 Count", "100 Count"]},
     (4, 25)),
    ("furniture", "ergonomic office chair", f"Home & Kitchen {C} Furniture {C} Home Office Furniture {C} Home Office Chairs",
     "Office Chair", ["Mesh", "Executive", "Task", "Gaming", "High Back"],
     ["lumbar support", "height adjustable", "easy assemble", "high back", "breathable mesh", "swivel wheels"],
     {"Color": ["Black", "Grey", "White"], "Style": ["With Armrest", "Without Armrest"]}, (60, 300)),
    ("furniture", "5 tier bookshelf", f"Home & Kitchen {C} Furniture {C} Living Room Furniture {C} Bookcases",
     "Bookshelf", ["Industrial", "Ladder", "Corner", "Open", "Modern"],
     ["easy assemble", "space saving", "engineered wood", "living room", "storage space", "metal frame"],
     {"Color": ["Walnut", "White", "Espresso", "Oak"], "Size": ["3-Tier", "5-Tier"]}, (40, 200)),
    ("furniture", "area rug 5x7", f"Home & Kitchen {C} Home Décor {C} Area Rugs, Runners & Pads {C} Area Rugs", "Area Rug",
     ["Shag", "Moroccan", "Vintage", "Geometric", "Boho"],
     ["non slip", "machine washable", "living room", "low pile", "stain resistant", "pet friendly"],
     {"Color": ["Cream", "Navy", "Grey/Ivory", "Terracotta"], "Size": ["5' x 7'", "8' x 10'", "2' x 3'"]},
     (30, 250)),
]
BRANDS = ["Amazon Basics", "Northlake", "Veloria", "Kestrel", "Brightwood", "Solenne", "Harbor & Pine", "Tovani",
          "Lumen", "Crestline", "Oakridge", "Marisol", "Zephyr", "Aldenby", "Pinecrest", "Nuvira"]
FILLER = ["Backed by a 30-day money back guarantee.", "Designed and tested in our own studio.",
          "A great gift for family and friends.", "Ships in recyclable packaging.",
          "Thousands of happy customers every month."]


def _asin(rng: random.Random, used: set) -> str:
    while True:
        a = "B0" + "".join(rng.choice(string.ascii_uppercase + string.digits) for _ in range(8))
        if a not in used:
            used.add(a)
            return a


def _pricing(rng: random.Random, lo: float, hi: float) -> str:
    low = round(rng.uniform(lo, hi)) + rng.choice([0.99, 0.49, 0.95, 0.0])
    r = rng.random()
    if r < 0.25:
        return f"${low:.2f} to ${low + round(rng.uniform(1, 0.3 * hi)) + 0.99:.2f}"
    return "" if r < 0.27 else f"${low:.2f}"


def _product(rng: random.Random, used: set, t: tuple, brand=None, mod=None, attrs=None, options=None,
             pricing=None) -> dict:
    category, query, crumbs, noun, mods, attr_pool, opt_pool, (lo, hi) = t
    brand = brand or rng.choice(BRANDS)
    mod = mod or rng.choice(mods)
    attrs = attrs or rng.sample(attr_pool, rng.randint(3, 4))
    if options is None:
        options = {name: sorted(rng.sample(vals, rng.randint(2, len(vals))), key=vals.index)
                   for name, vals in opt_pool.items() if rng.random() < 0.9}
    name = f"{brand} {mod} {noun}, {attrs[0].title()}, {attrs[1].title()}"
    description = (f"This {mod.lower()} {noun.lower()} from {brand} is {', '.join(attrs[:-1])} and {attrs[-1]}. "
                   + rng.choice(FILLER))
    bullets = [f"{a.upper()}: {rng.choice(FILLER)}" for a in attrs]
    img = "https://m.media-amazon.com/images/I/{}.jpg"
    return {
        "asin": _asin(rng, used), "name": name, "full_description": description,
        "small_description": " ".join(bullets) if rng.random() < 0.1 else bullets,
        "pricing": _pricing(rng, lo, hi) if pricing is None else pricing,
        "list_price": "", "brand": brand, "product_information": {"Manufacturer": brand},
        "images": [img.format("".join(rng.choice(string.ascii_letters) for _ in range(11)))],
        "category": category, "query": query, "product_category": crumbs,
        "customization_options": {n: [{"value": v, "image": None} for v in vals] for n, vals in options.items()},
        "_attrs": attrs, "_type": t, "_mod": mod, "_brand": brand,
    }


def _norm(v: str) -> str:
    return v.strip().replace("/", " | ").lower()


def _instruction(rng: random.Random, t: tuple, attrs: list, opts: dict) -> str:
    noun = t[3].lower()
    art = "an" if noun[0] in "aeiou" else "a"
    a = " and ".join(attrs)
    o = " and ".join(f"{v} {n.lower()}" if n.lower() in ("color", "size") else f"{n.lower()}: {v}"
                     for n, v in opts.items())
    templates = [f"i am looking for {art} {noun} that is {a}", f"i need {art} {a} {noun}",
                 f"find me {art} {noun} which is {a}", f"i want to buy {art} {noun}, it should be {a}"]
    text = rng.choice(templates)
    return text + (f", with {o}" if o else "")


def generate(out_dir: str, n_products: int, n_instructions: int, seed: int) -> dict:
    """Write the three WebShop files into ``out_dir``; returns a summary (files, counts)."""
    if n_products < 10 or n_instructions < 1:
        raise ValueError(f"need n_products >= 10 and n_instructions >= 1, got {n_products}, {n_instructions}")
    rng = random.Random(seed)
    used: set = set()
    n_targets = min(n_instructions, max(1, n_products // 3))
    records, human, k = [], {}, 0
    for i in range(n_targets):
        t = TYPES[i % len(TYPES)]
        target = _product(rng, used, t)
        n_ann = n_instructions // n_targets + (1 if i < n_instructions % n_targets else 0)
        rows = []
        for _ in range(n_ann):
            g_attrs = rng.sample(target["_attrs"], rng.randint(1, min(3, len(target["_attrs"]))))
            opt_names = [n for n in target["customization_options"] if rng.random() < 0.8]
            g_opts = {n: rng.choice(target["customization_options"][n])["value"] for n in opt_names}
            rows.append({"instruction": _instruction(rng, t, g_attrs, {n: _norm(v) for n, v in g_opts.items()}),
                         "instruction_attributes": g_attrs,
                         "instruction_options": [_norm(v) for v in g_opts.values()],
                         "attributes": list(target["_attrs"]),
                         "assignment_id": f"3{rng.getrandbits(40):X}", "worker_id": f"A{rng.getrandbits(36):X}"})
            k += 1
        human[target["asin"]] = rows
        records.append(target)
        # confusable near-copies: a swapped goal attribute / missing option values / over any budget
        first = rows[0]
        spare = [a for a in t[5] if a not in target["_attrs"]]
        swapped = [a if a != first["instruction_attributes"][0] else spare[0] for a in target["_attrs"]]
        records.append(_product(rng, used, t, target["_brand"], target["_mod"], attrs=swapped))
        if len(records) < n_products - 2 * (n_targets - i - 1):  # room left for the targets to come
            chosen = set(first["instruction_options"])
            opts = {n: [v["value"] for v in vals if _norm(v["value"]) not in chosen] or [t[6][n][0]]
                    for n, vals in target["customization_options"].items()}
            records.append(_product(rng, used, t, rng.choice(BRANDS), target["_mod"], attrs=list(target["_attrs"]),
                                    options=opts))
        if len(records) < n_products - 2 * (n_targets - i - 1):  # room left for the targets to come
            pricey = f"${round(t[7][1] * 2 + 200) + 0.99:.2f}"
            records.append(_product(rng, used, t, None, None, attrs=list(target["_attrs"]), pricing=pricey))
    while len(records) < n_products:
        records.append(_product(rng, used, TYPES[rng.randrange(len(TYPES))]))
    assert len(records) == n_products, "every annotated target and its swapped copy must fit"
    rng.shuffle(records)
    ins = {}
    for r in records:
        if r["asin"] in human or rng.random() < 0.95:
            a = r["_attrs"]
            ins[r["asin"]] = {"attributes": list(a), "instruction": _instruction(rng, r["_type"], a[:1], {}),
                              "instruction_attributes": a[:1]}
    clean = [{k2: v for k2, v in r.items() if not k2.startswith("_")} for r in records]
    dropped = []
    if n_products >= 50:  # records WebShop's loader drops: a duplicate asin and an asin "nan"
        dup = dict(clean[len(clean) // 2], name="DUPLICATE RECORD " + clean[len(clean) // 2]["name"])
        nan = dict(clean[0], asin="nan", name="RECORD WITHOUT ASIN")
        clean += [dup, nan]
        dropped = [dup["asin"], "nan"]
    os.makedirs(out_dir, exist_ok=True)
    files = {"products": f"items_shuffle_{n_products}.json", "attributes": f"items_ins_v2_{n_products}.json",
             "human": "items_human_ins.json"}
    for key, obj in (("products", clean), ("attributes", ins), ("human", human)):
        with open(os.path.join(out_dir, files[key]), "w", encoding="utf-8") as f:
            json.dump(obj, f, ensure_ascii=False)
    categories: dict[str, int] = {}
    for r in records:
        categories[r["category"]] = categories.get(r["category"], 0) + 1
    return {"out": os.path.abspath(out_dir), "files": {k2: os.path.join(out_dir, v) for k2, v in files.items()},
            "products": len(records), "extra_records_dropped_by_loader": dropped, "annotated_products": len(human),
            "instructions": k, "categories": categories, "seed": seed}
