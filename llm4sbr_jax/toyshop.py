"""The toy shop: a small, seeded, generated session dataset for the offline demo.

A catalog of named products (e.g. "Apple iPhone 14 Pro", "Nike Pegasus running shoes", "Oatly oat milk barista")
is organised by *brand*, *category* and *product line* (one brand's products in one category). Each session is drawn
from two latent interests, in the spirit of the paper's iPhone / running shoes / milk example:

* a long-term interest: a brand (the user is an Apple fan), which drives the early clicks;
* a short-term interest: a category (today they shop for running shoes), which takes over towards the end of the
  session; with probability `line_prob` it is one of the brand's own categories, so the session circles one product
  line (Apple phones);
* noise clicks on random items.

The structure is built to reward text semantics: every product line has several items and each item is clicked only
a few times, so item-ID co-occurrence is sparse, while the names share words (brand, line, category noun) that a text
encoder and an LLM pick up at once.

`generate` returns the interaction log in the raw parsers' form; `build_toyshop` runs it through the standard
preprocessing (`llm4sbr_jax.preprocess.preprocess`: sessions, prefix samples, split) and writes a processed dataset
directory (`llm4sbr_jax.dataset`).

Split: `temporal` by default (the latest 20% of samples are the test set; targets unseen in training are dropped).
The paper's random split of prefix samples leaks here: a test sample `(s[:k], s[k])` has its successor
`(s[:k+1], s[k+1])` in training, so the test target sits in a training prefix right after the test prefix's last item.
Measured on the defaults (seed 0, HR@10 on test, no training): item-ID transition counts 0.69 with the random split
but 0.08 with the temporal one, while ranking by the cosine of MiniLM name embeddings to the prefix's mean gets 0.47
(temporal; 0.53-0.66 over seeds 0-2 at 80 sessions): the names carry the signal that IDs only learn slowly.

Sizing for the offline demo (SmolLM2-135M on 2 CPU threads, about 0.45 s per prompt at batch 8 with 24 new tokens on
an idle machine): stage 1 writes one prompt per prefix sample and perspective, 2 * (clicks - sessions) prompts. The
defaults (100 sessions of 3-6 clicks, 5 products per line: 240 products, 198 of them clicked) give 357 samples, about
714 prompts; 60 sessions give about 414.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from typing import Any, NamedTuple

import numpy as np

from llm4sbr_jax import dataset as dataset_lib
from llm4sbr_jax import preprocess as preprocess_lib
from llm4sbr_jax import raw as raw_lib

NAME = "toyshop"
START_TIME = 1_700_000_000  # unix seconds of the first session

_COLORS = ("black", "white", "red", "blue", "grey", "green")
# (brand, category, name pattern with {m} and {v}, models, variants): one product line each. The brand is prepended.
_LINES: tuple[tuple[str, str, str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("Apple", "phone", "iPhone {m}{v}", ("13", "14", "15", "16"), ("", " Pro", " Plus")),
    ("Apple", "laptop", "MacBook {m} {v}", ("Air", "Pro"), ("13-inch", "14-inch", "15-inch", "16-inch")),
    ("Apple", "headphones", "AirPods {m}{v}", ("2", "3", "Pro", "Max"), ("", " case")),
    ("Apple", "tablet", "iPad {m}{v}", ("Air", "Mini", "Pro"), ("", " 128GB", " 256GB")),
    ("Apple", "smartwatch", "Watch {m}{v}", ("Series 8", "Series 9", "SE", "Ultra"), ("", " GPS")),
    ("Samsung", "phone", "Galaxy S{m}{v}", ("22", "23", "24"), ("", " Plus", " Ultra")),
    ("Samsung", "tablet", "Galaxy Tab S{m}{v}", ("8", "9"), ("", " Plus", " Ultra", " FE")),
    ("Samsung", "headphones", "Galaxy Buds {m}{v}", ("2", "3", "FE", "Live"), ("", " Pro")),
    ("Samsung", "smartwatch", "Galaxy Watch {m}{v}", ("5", "6", "7"), ("", " Classic", " Pro")),
    ("Samsung", "tv", "{m}-inch QLED TV{v}", ("43", "55", "65"), ("", " 4K", " 8K")),
    ("Sony", "headphones", "{m} headphones{v}", ("WH-1000XM4", "WH-1000XM5", "WH-CH720N"), ("", " black", " silver")),
    ("Sony", "tv", "Bravia {m}-inch TV{v}", ("50", "55", "65"), ("", " OLED", " 4K")),
    ("Sony", "camera", "Alpha {m} camera{v}", ("7 IV", "6400", "7C"), ("", " kit", " body")),
    ("Sony", "game console", "PlayStation 5{m}{v}", ("", " Slim", " Digital"), (" console", " bundle", " Pro")),
    ("Lenovo", "laptop", "{m} laptop{v}", ("ThinkPad X1", "ThinkPad T14", "IdeaPad 5", "Yoga 7"), ("", " 16GB")),
    ("Lenovo", "tablet", "Tab {m}{v}", ("P11", "P12", "M10"), ("", " Plus", " Pro")),
    ("Nike", "running shoes", "{m} running shoes{v}", ("Pegasus", "Vomero", "Invincible"), ("", " women", " trail")),
    ("Nike", "t-shirt", "Dri-FIT t-shirt {m}{v}", _COLORS, ("",)),
    ("Nike", "shorts", "running shorts {m}{v}", _COLORS, ("",)),
    ("Nike", "backpack", "{m} backpack{v}", ("Brasilia", "Heritage", "Utility"), ("", " large")),
    ("Adidas", "running shoes", "{m} running shoes{v}", ("Ultraboost", "Adizero", "Supernova"),
     ("", " women", " light")),
    ("Adidas", "t-shirt", "training t-shirt {m}{v}", _COLORS, ("",)),
    ("Adidas", "shorts", "training shorts {m}{v}", _COLORS, ("",)),
    ("Adidas", "backpack", "{m} backpack{v}", ("Classic", "Power", "Linear"), ("", " large")),
    ("Asics", "running shoes", "Gel-{m} running shoes{v}", ("Kayano", "Nimbus", "Cumulus"), ("", " women", " wide")),
    ("Oatly", "milk", "oat milk {m}{v}", ("original", "barista", "chocolate", "light"), ("", " 1L")),
    ("Oatly", "ice cream", "oat ice cream {m}{v}", ("vanilla", "chocolate", "strawberry"), ("", " tub")),
    ("Oatly", "yogurt", "oatgurt {m}{v}", ("plain", "blueberry", "mango"), ("", " 4-pack")),
    ("Alpro", "milk", "{m} milk{v}", ("almond", "soy", "coconut", "rice"), ("", " unsweetened")),
    ("Alpro", "yogurt", "soy yogurt {m}{v}", ("plain", "vanilla", "peach"), ("", " 4-pack")),
    ("Danone", "yogurt", "Greek yogurt {m}{v}", ("plain", "honey", "strawberry"), ("", " 4-pack")),
    ("Nestle", "coffee", "Nescafe {m} coffee{v}", ("Gold", "Classic", "Azera"), ("", " 200g")),
    ("Nestle", "cereal", "{m} cereal{v}", ("Cheerios", "Fitness", "Shreddies"), ("", " family size")),
    ("Nestle", "chocolate", "KitKat {m}{v}", ("chunky", "dark", "white", "mint"), ("", " 4-pack")),
    ("Starbucks", "coffee", "{m} roast coffee beans{v}", ("Blonde", "Pike Place", "Espresso"), ("", " 1kg")),
    ("Lavazza", "coffee", "{m} coffee beans{v}", ("Crema e Gusto", "Qualita Oro", "Super Crema"), ("", " 1kg")),
    ("Kellogg's", "cereal", "{m}{v}", ("Corn Flakes", "Special K", "Frosties", "Rice Krispies"), ("", " family size")),
    ("Kellogg's", "snacks", "Pringles {m}{v}", ("original", "sour cream", "paprika", "salt and vinegar"), ("", " XL")),
    ("L'Oreal", "shampoo", "Elvive shampoo {m}{v}", ("color", "repair", "volume"), ("", " 400ml")),
    ("L'Oreal", "face cream", "Revitalift {m} cream{v}", ("day", "night", "eye"), ("", " 50ml")),
    ("L'Oreal", "lipstick", "Color Riche lipstick {m}{v}", ("red", "nude", "pink", "plum"), ("", " matte")),
    ("Nivea", "face cream", "{m} face cream{v}", ("Soft", "Q10", "Creme"), ("", " 100ml")),
    ("Nivea", "shampoo", "{m} shampoo{v}", ("men", "volume", "repair"), ("", " 400ml")),
    ("Nivea", "shower gel", "{m} shower gel{v}", ("fresh", "care", "men sport"), ("", " 500ml")),
    ("IKEA", "lamp", "{m} lamp{v}", ("Tertial", "Ranarp", "Hektar"), (" desk", " floor")),
    ("IKEA", "mug", "{m} mug{v}", ("Fargrik", "Dinera", "Vardagen"), ("", " 4-pack")),
    ("IKEA", "pillow", "{m} pillow{v}", ("Fjallbrasken", "Rosenskarm", "Klubbsporre"), ("", " large")),
    ("LEGO", "toys", "{m} set{v}", ("City police", "Technic car", "Star Wars ship", "Friends house"), ("", " large")),
)


@dataclasses.dataclass(frozen=True)
class Catalog:
  """The toy shop's products (index i = product i; raw ids are `P001`, `P002`, ...)."""

  raw_ids: list[str]
  names: list[str]
  brands: list[str]
  categories: list[str]
  lines: list[str]  # product line: "<brand> <category>"

  def __len__(self) -> int:
    return len(self.names)


class Interactions(NamedTuple):
  """An interaction log in the raw parsers' form (one entry per click)."""

  keys: np.ndarray  # int64 [M] session key
  items: np.ndarray  # str [M] raw item id
  times: np.ndarray  # int64 [M] unix seconds


def catalog(items_per_line: int = 5) -> Catalog:
  """The product catalog: `items_per_line` products (or all there are, if fewer) for each of the product lines.

  The catalog depends on `items_per_line` only (not on any seed), so item names are stable across datasets.
  """
  if items_per_line < 1:
    raise ValueError(f"items_per_line must be >= 1, got {items_per_line}")
  raw_ids, names, brands, categories, lines = [], [], [], [], []
  for brand, category, pattern, models, variants in _LINES:
    # Interleave models and variants so a small `items_per_line` still spans all the models.
    combos = sorted(itertools.product(range(len(models)), range(len(variants))), key=lambda mv: (mv[1], mv[0]))
    for m, v in combos[:items_per_line]:
      name = re.sub(r"\s+", " ", f"{brand} {pattern.format(m=models[m], v=variants[v])}").strip()
      raw_ids.append(f"P{len(raw_ids) + 1:03d}")
      names.append(name)
      brands.append(brand)
      categories.append(category)
      lines.append(f"{brand} {category}")
  if len(set(names)) != len(names):
    raise AssertionError("toy-shop catalog has duplicate names")  # a bug in _LINES, caught by the tests
  return Catalog(raw_ids, names, brands, categories, lines)


def generate(seed: int = 0, num_sessions: int = 100, *, min_length: int = 3, max_length: int = 6,
             items_per_line: int = 5, noise: float = 0.1, line_prob: float = 0.6,
             return_catalog: bool = False) -> tuple[Any, ...]:
  """Draws the toy-shop sessions.

  Per session: a brand b (long-term interest, uniform over brands), a category c (short-term interest: one of b's
  categories with probability `line_prob`, else uniform over all categories) and a length uniform in
  [min_length, max_length]. Click t of L is a random product with probability `noise`; otherwise it comes from
  category c with probability 0.3 + 0.5 * t / (L - 1) (short-term interest grows towards the end of the session) and
  from brand b otherwise. Products do not repeat within a session. Sessions are 1 hour apart, clicks 30-120 s.

  Args:
    seed: the seed (same seed and arguments -> the same arrays).
    num_sessions: number of sessions.
    min_length: shortest session (>= 2).
    max_length: longest session.
    items_per_line: products per product line (see `catalog`).
    noise: probability that a click ignores both interests.
    line_prob: probability that the short-term category is one of the brand's own.
    return_catalog: also return the `Catalog` (brands, categories, lines of every product).

  Returns:
    (interactions, item_names[, catalog]): `Interactions` (session key int64, raw item id str, unix time int64),
    session by session in click order, and a dict raw item id -> name covering every product.
  """
  if not 2 <= min_length <= max_length:
    raise ValueError(f"expected 2 <= min_length <= max_length, got {min_length}, {max_length}")
  if num_sessions < 1:
    raise ValueError(f"num_sessions must be >= 1, got {num_sessions}")
  cat = catalog(items_per_line)
  rng = np.random.default_rng(seed)
  brand_names = sorted(set(cat.brands))
  category_names = sorted(set(cat.categories))
  by_brand = {b: np.flatnonzero(np.asarray(cat.brands) == b) for b in brand_names}
  by_category = {c: np.flatnonzero(np.asarray(cat.categories) == c) for c in category_names}
  brand_categories = {b: sorted({cat.categories[i] for i in by_brand[b]}) for b in brand_names}

  keys, items, times = [], [], []
  for s in range(num_sessions):
    brand = brand_names[rng.integers(len(brand_names))]
    own = brand_categories[brand]
    category = own[rng.integers(len(own))] if rng.random() < line_prob else category_names[
        rng.integers(len(category_names))]
    length = int(rng.integers(min_length, max_length + 1))
    used: set[int] = set()
    t = START_TIME + 3600 * s
    for k in range(length):
      u = rng.random()
      if u < noise:
        pool = np.arange(len(cat))
      elif rng.random() < 0.3 + 0.5 * k / (length - 1):
        pool = by_category[category]
      else:
        pool = by_brand[brand]
      free = [i for i in pool if i not in used] or [i for i in range(len(cat)) if i not in used]
      item = int(free[rng.integers(len(free))])
      used.add(item)
      t += int(rng.integers(30, 121))
      keys.append(s)
      items.append(cat.raw_ids[item])
      times.append(t)
  interactions = Interactions(np.asarray(keys, np.int64), np.asarray(items, dtype=str), np.asarray(times, np.int64))
  names = dict(zip(cat.raw_ids, cat.names))
  return (interactions, names, cat) if return_catalog else (interactions, names)


def to_raw(interactions: Interactions, item_names: dict[str, str], **provenance: Any) -> raw_lib.RawData:
  """Wraps generated interactions as a `RawData` (what the real-data parsers return)."""
  return raw_lib.RawData(keys=np.asarray(interactions.keys).astype(str), items=np.asarray(interactions.items),
                         times=np.asarray(interactions.times, np.int64),
                         order=np.arange(len(interactions.times), dtype=np.int64), names=dict(item_names),
                         files={"generator": {"name": f"{__name__}.generate", **provenance}})


def make_toyshop(seed: int = 0, num_sessions: int = 100, *, test_size: int | float = 0.2,
                 valid_size: int | float = 0.1, protocol: str = "temporal",
                 **kwargs: Any) -> dataset_lib.ProcessedDataset:
  """The toy shop as a `ProcessedDataset` (standard preprocessing, every item kept: `min_item_count=1`).

  Args:
    seed: seeds both the generator and the split.
    num_sessions: number of sessions.
    test_size: test samples (count or fraction), as in `preprocess`.
    valid_size: validation samples (count or fraction of the rest).
    protocol: `temporal` (default: latest samples held out; see the module docstring for why) or `paper` (seeded
      random split of the samples).
    **kwargs: passed to `generate` (min_length, max_length, items_per_line, noise, line_prob).
  """
  interactions, names = generate(seed, num_sessions, **kwargs)
  settings = {"seed": seed, "num_sessions": num_sessions, **kwargs}
  data = to_raw(interactions, names, **settings)
  return preprocess_lib.preprocess(data, NAME, protocol=protocol, test_size=test_size, valid_size=valid_size,
                                   seed=seed, min_item_count=1, source={"generator": f"{__name__}", **settings})


def build_toyshop(out_dir: str, seed: int = 0, num_sessions: int = 100, **kwargs: Any) -> dataset_lib.ProcessedDataset:
  """Generates the toy shop and writes it as a processed dataset directory.

  Args:
    out_dir: the directory to write (replaced if it exists).
    seed: seeds the generator and the split.
    num_sessions: number of sessions.
    **kwargs: passed to `make_toyshop` (test_size, valid_size, protocol and `generate`'s options).

  Returns:
    The dataset that was written (its `fingerprint` is the one in `dataset.json`).
  """
  ds = make_toyshop(seed, num_sessions, **kwargs)
  dataset_lib.save_dataset(ds, out_dir)
  return ds
