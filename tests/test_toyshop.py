"""The generated toy-shop dataset: determinism, names, latent structure, processed directory."""

import collections

import numpy as np
import pytest

from llm4sbr_jax import dataset as dataset_lib
from llm4sbr_jax import toyshop


def _sessions(interactions):
  keys = np.asarray(interactions.keys)
  return [np.asarray(interactions.items)[keys == k] for k in np.unique(keys)]


def test_generate_is_deterministic_and_in_raw_form():
  a, names_a = toyshop.generate(seed=3, num_sessions=40)
  b, names_b = toyshop.generate(seed=3, num_sessions=40)
  c, _ = toyshop.generate(seed=4, num_sessions=40)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  assert names_a == names_b
  assert not np.array_equal(a.items, c.items)
  assert a.keys.dtype == np.int64 and a.times.dtype == np.int64 and a.items.dtype.kind == "U"
  assert set(a.items.tolist()) <= set(names_a)
  for k in np.unique(a.keys):
    t = a.times[a.keys == k]
    assert np.all(np.diff(t) > 0)
    assert 3 <= len(t) <= 6
    assert len(set(a.items[a.keys == k].tolist())) == len(t)  # no repeated product within a session


@pytest.mark.parametrize("per_line", [1, 3, 5, 8])
def test_catalog_names_unique_and_short(per_line):
  cat = toyshop.catalog(per_line)
  assert len(set(cat.names)) == len(cat.names) and len(set(cat.raw_ids)) == len(cat.raw_ids)
  assert all(len(n) <= 50 for n in cat.names)
  assert all(n.startswith(b + " ") for n, b in zip(cat.names, cat.brands))
  counts = collections.Counter(cat.lines)
  assert min(counts.values()) >= min(per_line, 2)


def test_sessions_follow_latent_brand_and_category_far_above_chance():
  interactions, _, cat = toyshop.generate(seed=0, num_sessions=300, return_catalog=True)
  index = {r: i for i, r in enumerate(cat.raw_ids)}
  brand = np.asarray(cat.brands)
  category = np.asarray(cat.categories)
  related = []
  for items in _sessions(interactions):
    ids = [index[r] for r in items]
    related += [brand[i] == brand[j] or category[i] == category[j] for i, j in zip(ids[:-1], ids[1:])]
  within = float(np.mean(related))
  # Chance: two independent clicks drawn from the overall click distribution.
  clicks = np.asarray([index[r] for r in interactions.items])
  rng = np.random.default_rng(0)
  i, j = rng.choice(clicks, 20000), rng.choice(clicks, 20000)
  chance = float(np.mean((brand[i] == brand[j]) | (category[i] == category[j])))
  assert within > 0.5 and within > 4 * chance, (within, chance)  # measured ~0.63-0.66 vs ~0.08 (seeds 0-2)
  # Item IDs are sparse at the default size: a typical product is clicked only a couple of times.
  default, _ = toyshop.generate(seed=0)
  per_item = collections.Counter(default.items.tolist())
  assert np.median(list(per_item.values())) <= 3


def test_names_share_words_within_sessions():
  interactions, names = toyshop.generate(seed=1, num_sessions=200)
  words = lambda r: set(names[r].lower().split())
  within = [bool(words(a) & words(b)) for items in _sessions(interactions) for a, b in zip(items[:-1], items[1:])]
  rng = np.random.default_rng(0)
  all_items = np.asarray(interactions.items)
  random_pairs = [bool(words(a) & words(b)) for a, b in zip(rng.choice(all_items, 5000), rng.choice(all_items, 5000))]
  assert np.mean(within) > 3 * np.mean(random_pairs)


def test_build_toyshop_writes_a_loadable_dataset(tmp_path):
  out = tmp_path / "toyshop"
  ds = toyshop.build_toyshop(str(out), seed=0, num_sessions=60)
  loaded = dataset_lib.load_dataset(str(out), verify=True)
  assert loaded.fingerprint == ds.fingerprint == dataset_lib.read_metadata(str(out))["fingerprint"]
  assert loaded.name == "toyshop" and loaded.protocol["protocol"] == "temporal"
  assert set(loaded.item_names[1:]) <= set(toyshop.catalog().names)
  assert all(len(loaded.splits[k]) > 0 for k in ("train", "valid", "test"))
  assert max(int(np.max(s.lengths)) for s in loaded.splits.values() if len(s)) <= 5
  assert "test_samples_dropped" in loaded.extra_stats  # temporal: targets unseen before the test period dropped
  # Same seed, same dataset; another seed, another one.
  assert toyshop.make_toyshop(seed=0, num_sessions=60).fingerprint == ds.fingerprint
  assert toyshop.make_toyshop(seed=1, num_sessions=60).fingerprint != ds.fingerprint


def test_paper_protocol_keeps_every_sample():
  ds = toyshop.make_toyshop(seed=0, num_sessions=60, protocol="paper")
  interactions, _ = toyshop.generate(seed=0, num_sessions=60)
  assert sum(len(s) for s in ds.splits.values()) == len(interactions.keys) - 60  # a session gives len - 1 samples
  assert ds.num_items == len(set(interactions.items.tolist()))


def test_generate_rejects_bad_arguments():
  with pytest.raises(ValueError):
    toyshop.generate(num_sessions=0)
  with pytest.raises(ValueError):
    toyshop.generate(min_length=1)
  with pytest.raises(ValueError):
    toyshop.catalog(0)
