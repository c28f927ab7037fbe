"""The synthetic catalogue: categories, their items, and the words shoppers search with.

Input: a random stream and the number of categories. Output: one array per attribute,
one entry per category (popularity and its CDF, price level, item count, first item's
offset, successor, name) or per item (price, brand; the items of a category are
contiguous from ``offsets[c]``); and search text for search events.

- ``C`` categories with Zipf-like popularity, a lognormal price level per category
  (items priced around it), 30..3000 items per category, brands per category (about
  12 % of items have no brand), a noun per category (an adjective in front once the
  nouns run out).
- A successor map over categories (one cycle, no fixed points: think phone -> phone
  case), the sequential structure ``persona.demo.simulate`` plants.
"""

from __future__ import annotations

import numpy as np

_NOUNS = (
    "phone", "phone case", "laptop", "laptop bag", "headphones", "charger", "camera",
    "memory card", "tv", "tv stand", "sneakers", "socks", "dress", "belt", "jacket",
    "gloves", "coffee maker", "coffee beans", "tea", "mug", "lipstick", "mirror",
    "shampoo", "towel", "desk", "desk lamp", "chair", "cushion", "bike", "helmet",
    "tent", "sleeping bag", "watch", "watch strap", "backpack", "water bottle",
    "novel", "bookmark", "toy car", "batteries", "printer", "ink", "guitar", "strings",
    "yoga mat", "dumbbells", "cat food", "cat toy", "dog leash", "dog bed",
)
_SYLLABLES = ("ka", "vo", "lin", "tek", "zu", "mar", "ra", "no", "si", "pex", "lo", "do",
              "fi", "ber", "qu", "an", "mi", "tor", "ya", "gen")
_ADJECTIVES = ("cheap", "best", "new", "black", "white", "small", "large", "wireless",
               "organic", "kids", "pro", "mini", "leather", "red", "waterproof")


def catalogue(rng: np.random.Generator, C: int) -> dict:
    """The catalogue of ``C`` categories as a dict of arrays (see the module docstring)."""
    rank = rng.permutation(C)
    pop = 1.0 / (rank + 1.0) ** 0.8
    pop /= pop.sum()
    price_level = np.exp(rng.normal(3.3, 0.9, C))
    n_items = np.clip(np.exp(rng.normal(np.log(300), 0.6, C)), 30, 3000).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(n_items)[:-1]])
    n_total = int(n_items.sum())
    item_cat = np.repeat(np.arange(C), n_items)
    item_price = np.round(price_level[item_cat] * np.exp(rng.normal(0, 0.35, n_total)), 2)
    item_price = np.maximum(item_price, 0.01)
    n_brands = rng.integers(3, 26, C)
    item_brand_idx = np.floor(n_brands[item_cat] * rng.random(n_total) ** 2).astype(np.int64)
    syl = np.array(_SYLLABLES, dtype=object)
    picks = rng.integers(0, len(syl), (C * 26, 2))
    brand_names = np.array([(syl[x] + syl[y]).capitalize() for x, y in picks],
                           dtype=object).reshape(C, 26)
    item_brand = brand_names[item_cat, item_brand_idx]
    item_brand[rng.random(n_total) < 0.12] = None
    # One cycle through all categories: a successor map without fixed points.
    cyc = rng.permutation(C)
    succ = np.empty(C, dtype=np.int64)
    succ[cyc] = np.roll(cyc, -1)
    noun_idx = rng.permutation(C) % len(_NOUNS)
    names = np.array([
        _NOUNS[noun_idx[c]] if c < len(_NOUNS) else f"{_ADJECTIVES[c % len(_ADJECTIVES)]} {_NOUNS[noun_idx[c]]}"
        for c in range(C)
    ], dtype=object)
    return dict(pop=pop, pop_cdf=np.cumsum(pop), price_level=price_level, n_items=n_items,
                offsets=offsets, item_price=item_price, item_brand=item_brand, succ=succ, names=names)


def queries(rng, cats: np.ndarray, brands: np.ndarray, names: np.ndarray) -> np.ndarray:
    """Search text for searches in categories ``cats``: the category's noun, sometimes
    with an adjective or the clicked item's brand."""
    tpl = rng.integers(0, 4, len(cats))
    adj = rng.integers(0, len(_ADJECTIVES), len(cats))
    out = np.empty(len(cats), dtype=object)
    for i, (c, t, a, b) in enumerate(zip(cats, tpl, adj, brands)):
        noun = names[c]
        if t == 1:
            out[i] = f"{_ADJECTIVES[a]} {noun}"
        elif t == 2 and b is not None:
            out[i] = f"{b.lower()} {noun}"
        elif t == 3:
            out[i] = f"{noun} {_ADJECTIVES[a]}"
        else:
            out[i] = noun
    return out
