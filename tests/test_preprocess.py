"""Sessionization, filters, prefix samples and the two split protocols (synthetic; real data when present)."""

import collections
import dataclasses
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from llm4sbr_jax import dataset, preprocess, raw

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data (real raw data) is absent")


def _raw(rows, names=None):
  """RawData from (key, item, time) rows in file order."""
  keys, items, times = zip(*rows)
  return raw.RawData(keys=np.asarray(keys, str), items=np.asarray(items, str), times=np.asarray(times, np.int64),
                     order=np.arange(len(rows), dtype=np.int64), names=names or {})


def _random_log(seed=0, users=60, items=25, clicks=900):
  rng = np.random.default_rng(seed)
  rows = [(f"u{rng.integers(users)}", f"i{rng.zipf(1.6) % items}", int(rng.integers(0, 10**6))) for _ in range(clicks)]
  return _raw(rows)


def _raw_sequences(ds, split):
  """Samples of a split as (prefix raw ids, target raw id)."""
  s, ids = ds.splits[split], np.asarray(ds.raw_item_ids)
  return [(ids[s.prefix(i)].tolist(), ids[s.targets[i]]) for i in range(len(s))]


def test_sessionize_orders_by_time_keeps_tie_order_and_splits_at_gaps():
  keys = np.array(["b", "a", "a", "a", "a", "b"])
  times = np.array([50, 700, 100, 100, 701 + 600, 0])
  order = np.arange(6)
  perm, offsets = preprocess.sessionize(keys, times, order)
  # One session per key, sessions by start time: b (t=0) then a (t=100); a's tied clicks 2, 3 keep file order.
  assert [perm[offsets[i]:offsets[i + 1]].tolist() for i in range(2)] == [[5, 0], [2, 3, 1, 4]]
  perm, offsets = preprocess.sessionize(keys, times, order, gap_minutes=10)
  # a: 100 -> 700 is exactly 600 s (not split), 700 -> 1301 is 601 s (split); b: 0 -> 50 stays together.
  assert [perm[offsets[i]:offsets[i + 1]].tolist() for i in range(3)] == [[5, 0], [2, 3, 1], [4]]


def test_filters_count_items_after_dropping_length1_sessions():
  # Item x occurs 5 times, once in a length-1 session: counted after that session is dropped it has 4 < 5.
  rows = [("s0", "x", 0)] + [(f"s{k}", i, t) for k in range(1, 5) for t, i in enumerate(["x", "y"])]
  rows += [(f"t{k}", i, t) for k in range(5) for t, i in enumerate(["y", "z"])]
  ds = preprocess.preprocess(_raw(rows), "f", test_size=1, valid_size=0, min_item_count=5)
  assert sorted(ds.raw_item_ids[1:]) == ["y", "z"]  # x dropped; sessions s1..s4 are left with one click and go.
  assert ds.extra_stats["clicks"] == 10 and ds.extra_stats["sessions"] == 5
  everything = _raw_sequences(ds, "train") + _raw_sequences(ds, "test")
  assert everything == [(["y"], "z")] * 5
  # With min_item_count=4, x's 4 remaining occurrences suffice.
  kept = preprocess.preprocess(_raw(rows), "f", test_size=1, valid_size=0, min_item_count=4)
  assert "x" in kept.raw_item_ids


def test_prefix_augmentation_and_item_table():
  rows = [("u", "a", 10), ("u", "b", 20), ("u", "c", 30), ("v", "c", 5), ("v", "a", 6)]
  ds = preprocess.preprocess(_raw(rows, names={"a": "Apple"}), "p", test_size=0, valid_size=0, min_item_count=1)
  assert _raw_sequences(ds, "train") == [(["c"], "a"), (["a"], "b"), (["a", "b"], "c")]
  s = ds.splits["train"]
  assert s.times.tolist() == [6, 20, 30] and s.sessions.tolist() == [0, 1, 1]  # v starts first.
  # ids by first appearance in start-ordered sessions: c, a, b; row 0 is padding; missing names fall back.
  assert ds.raw_item_ids == ["", "c", "a", "b"]
  assert ds.item_names == [dataset.PAD_NAME, "Item c", "Apple", "Item b"]
  assert s.targets.dtype == np.int32 and s.items.min() >= 1


def test_resolve_size():
  assert preprocess.resolve_size(0.1, 53_121, "t") == 5_313  # rounded up, as sklearn (paper's ML-1M test count)
  assert preprocess.resolve_size(18_000, 176_139, "t") == 18_000
  assert preprocess.resolve_size(0.0, 10, "v") == 0
  for bad in (1.0, -1, 10, "5", True):
    with pytest.raises(ValueError, match="t"):
      preprocess.resolve_size(bad, 10, "t")


def test_paper_split_is_seeded_disjoint_and_test_independent_of_valid_size():
  data = _random_log()
  a = preprocess.preprocess(data, "r", protocol="paper", test_size=0.2, valid_size=0.25, seed=3, min_item_count=2)
  b = preprocess.preprocess(data, "r", protocol="paper", test_size=0.2, valid_size=0.25, seed=3, min_item_count=2)
  c = preprocess.preprocess(data, "r", protocol="paper", test_size=0.2, valid_size=0.25, seed=4, min_item_count=2)
  d = preprocess.preprocess(data, "r", protocol="paper", test_size=0.2, valid_size=0, seed=3, min_item_count=2)
  assert a.fingerprint == b.fingerprint != c.fingerprint
  n = sum(len(s) for s in a.splits.values())
  assert n == a.extra_stats["clicks"] - a.extra_stats["sessions"]
  assert len(a.splits["test"]) == int(np.ceil(0.2 * n))
  assert len(a.splits["valid"]) == int(np.ceil(0.25 * (n - len(a.splits["test"]))))
  assert len(d.splits["valid"]) == 0 and _raw_sequences(d, "test") == _raw_sequences(a, "test")
  # Every (session, target time) sample lands in exactly one split.
  key = lambda ds, k: {(int(x), int(t)) for x, t in zip(ds.splits[k].sessions, ds.splits[k].times)}
  parts = [key(a, k) for k in dataset.SPLITS]
  assert sum(map(len, parts)) == n == len(set().union(*parts))
  assert a.protocol["seed"] == 3 and a.protocol["test_size"] == 0.2 and a.protocol["min_item_count"] == 2


def test_temporal_split_holds_out_latest_and_removes_unseen_items():
  rows = [("u1", "a", 1), ("u1", "b", 2), ("u1", "a", 3),  # early
          ("u2", "b", 4), ("u2", "new", 5), ("u2", "a", 6),  # late: "new" only ever in the test part
          ("u3", "new", 7), ("u3", "b", 8)]
  ds = preprocess.preprocess(_raw(rows), "t", protocol="temporal", test_size=2, valid_size=0, min_item_count=1)
  # Train saw "new" as a target, so the two latest samples stay as they are.
  assert _raw_sequences(ds, "train") == [(["a"], "b"), (["a", "b"], "a"), (["b"], "new")]
  assert _raw_sequences(ds, "test") == [(["b", "new"], "a"), (["new"], "b")]
  ds = preprocess.preprocess(_raw(rows), "t", protocol="temporal", test_size=3, valid_size=0, min_item_count=1)
  # Now (b)->new is in test too: its target is unseen in train -> dropped; "new" is removed from the prefixes, and
  # u3's prefix [new] becomes empty -> dropped.
  assert _raw_sequences(ds, "train") == [(["a"], "b"), (["a", "b"], "a")]
  assert _raw_sequences(ds, "test") == [(["b"], "a")]
  assert ds.extra_stats["test_samples_dropped"] == 2 and ds.extra_stats["test_prefix_items_removed"] == 2
  assert "new" not in ds.raw_item_ids


def test_temporal_split_orders_train_valid_test_by_time():
  data = _random_log(seed=1, clicks=1500)
  ds = preprocess.preprocess(data, "r", protocol="temporal", test_size=0.15, valid_size=0.15, session_gap_minutes=3000,
                             min_item_count=2)
  train, valid, test = (ds.splits[k] for k in dataset.SPLITS)
  assert len(valid) and len(test)
  # Globally, train <= valid <= test by target time.
  assert train.times.max() <= valid.times.min() and valid.times.max() <= test.times.min()
  known = set(train.items.tolist()) | set(train.targets.tolist())
  assert set(valid.items.tolist()) | set(valid.targets.tolist()) <= known
  assert ds.protocol["seed"] is None and ds.protocol["session_gap_minutes"] == 3000


def test_subset_sessions_keeps_whole_sessions_with_parent_ids():
  full = preprocess.preprocess(_random_log(), "r", protocol="paper", test_size=0.2, valid_size=0.2, seed=0,
                               min_item_count=2)
  sub = preprocess.subset_sessions(full, 10, seed=1)
  chosen = set(sub.protocol["subset_sessions"])
  assert len(chosen) == 10 and sub.protocol["subset_of"] == full.fingerprint
  assert sub.item_names == full.item_names
  for k in dataset.SPLITS:
    parent, child = full.splits[k], sub.splits[k]
    expected = [i for i in range(len(parent)) if int(parent.sessions[i]) in chosen]
    assert len(child) == len(expected)
    for j, i in enumerate(expected):
      np.testing.assert_array_equal(child.prefix(j), parent.prefix(i))
      assert child.targets[j] == parent.targets[i]
  with pytest.raises(ValueError, match="num_sessions"):
    preprocess.subset_sessions(full, 10**6)


def test_round_trip_through_save_and_load(tmp_path):
  ds = preprocess.preprocess(_random_log(), "r", protocol="paper", test_size=0.2, valid_size=0.1, min_item_count=2,
                             source={"dataset": "synthetic"})
  fp = dataset.save_dataset(ds, str(tmp_path / "ds"))
  back = dataset.load_dataset(str(tmp_path / "ds"), verify=True)
  assert back.fingerprint == fp and back.protocol["protocol"] == "paper" and back.source["dataset"] == "synthetic"


def test_empty_after_filtering_is_an_error():
  data = dataclasses.replace(_raw([("u", "a", 1), ("u", "b", 2), ("v", "b", 3)]), files={"ratings": {"file": "r.dat"}})
  with pytest.raises(preprocess.PreprocessError) as e:
    preprocess.preprocess(data, "e", test_size=0, valid_size=0)
  assert str(e.value) == ("e (r.dat): no session of length >= 2 is left after dropping length-1 sessions and items "
                          "seen < 5 times (3 interactions, 2 sessions); expected sessions of 2+ clicks on items seen "
                          "often enough (lower min_item_count?)")
  with pytest.raises(preprocess.PreprocessError, match="test_size: 2 samples requested out of 1; expected"):
    preprocess.preprocess(data, "e", test_size=2, valid_size=0, min_item_count=1)


def test_session_ids_are_never_split_at_gaps():
  data = dataclasses.replace(_raw([("s", "a", 0), ("s", "b", 10**6)]), sessions_given=True)
  with pytest.raises(preprocess.PreprocessError, match="the keys are session ids, each one session; a session gap "
                     r"\(10 minutes\) applies only to user ids"):
    preprocess.preprocess(data, "s", test_size=0, valid_size=0, min_item_count=1, session_gap_minutes=10)
  ds = preprocess.preprocess(data, "s", test_size=0, valid_size=0, min_item_count=1)
  assert _raw_sequences(ds, "train") == [(["a"], "b")] and ds.protocol["sessions"] == "per session id"


def test_last_click_gives_one_sample_per_session():
  rows = [("u", "a", 10), ("u", "b", 20), ("u", "c", 30), ("v", "c", 5), ("v", "a", 6), ("w", "b", 40), ("w", "a", 50)]
  ds = preprocess.preprocess(_raw(rows), "l", test_size=0, valid_size=0, min_item_count=1, samples="last")
  assert _raw_sequences(ds, "train") == [(["c"], "a"), (["a", "b"], "c"), (["b"], "a")]
  assert ds.splits["train"].times.tolist() == [6, 30, 50] and ds.protocol["samples"] == "last"
  every = preprocess.preprocess(_raw(rows), "l", test_size=0, valid_size=0, min_item_count=1)
  assert "samples" not in every.protocol  # the default leaves fingerprints of earlier datasets unchanged
  assert len(every.splits["train"]) == 4 != len(ds.splits["train"])
  assert every.fingerprint != ds.fingerprint and every.raw_item_ids == ds.raw_item_ids
  with pytest.raises(preprocess.PreprocessError, match="samples: expected one of"):
    preprocess.preprocess(_raw(rows), "l", samples="first")


def _ml1m_style_ratings(seed=0, users=40):
  """ratings.dat lines: bursts of clicks (gaps <= 600 s, exactly 600 included) separated by gaps > 600 s, with a
  Zipf-like item pool (rare items get filtered), lines shuffled (the official file is not in time order)."""
  rng = np.random.default_rng(seed)
  lines = []
  for user in range(1, users + 1):
    t = 978_300_000 + int(rng.integers(0, 10**6))
    for _ in range(int(rng.integers(1, 5))):
      for _ in range(int(rng.integers(1, 9))):
        lines.append(f"{user}::{1 + int(rng.zipf(1.5)) % 60}::{int(rng.integers(1, 6))}::{t}")
        t += int(rng.choice([0, 60, 300, 600]))
      t += 601 + int(rng.integers(0, 5000))
  rng.shuffle(lines)
  return lines


def _sessions_by_hand(lines, gap_seconds, min_count):
  """An independent transcription of the paper's ML-1M sessions and filters, for the arithmetic test."""
  clicks = {}
  for number, line in enumerate(lines):
    user, item, _, t = line.split("::")
    clicks.setdefault(user, []).append((int(t), number, item))
  sessions = []
  for user_clicks in clicks.values():
    user_clicks.sort()
    current = [user_clicks[0]]
    for before, after in zip(user_clicks, user_clicks[1:]):
      if after[0] - before[0] > gap_seconds:
        sessions.append(current)
        current = []
      current.append(after)
    sessions.append(current)
  sessions = [[item for _, _, item in s] for s in sessions if len(s) >= 2]
  counts = collections.Counter(item for s in sessions for item in s)
  sessions = [[item for item in s if counts[item] >= min_count] for s in sessions]
  return [s for s in sessions if len(s) >= 2]


def test_ml1m_table1_arithmetic_on_synthetic_ratings(tmp_path):
  lines = _ml1m_style_ratings()
  (tmp_path / "ratings.dat").write_text("\n".join(lines) + "\n", encoding="latin-1")
  (tmp_path / "movies.dat").write_text("".join(f"{i}::Movie {i} (1999)::Drama\n" for i in range(1, 61)),
                                       encoding="latin-1")
  data = raw.read_movielens_1m(str(tmp_path / "ratings.dat"), str(tmp_path / "movies.dat"))
  ds = preprocess.preprocess(data, "ml-1m", protocol="paper", test_size=0.1, valid_size=0, session_gap_minutes=10,
                             samples="last")
  sessions = _sessions_by_hand(lines, 600, 5)
  stats = dataset.statistics(ds)
  # Table 1's ML-1M row: train + test = sessions, test = ceil(10% of sessions), clicks = all clicks of the
  # sessions, average length = clicks / sessions - 1 (the prefix; the last click is the target).
  assert 20 < len(sessions) == stats["train"] + stats["test"] == stats["sessions"]
  assert stats["test"] == math.ceil(0.1 * len(sessions)) and stats["valid"] == 0
  assert stats["clicks"] == sum(map(len, sessions)) and stats["items"] == len({i for s in sessions for i in s})
  prefix = np.concatenate([ds.splits[k].lengths for k in ("train", "test")])
  assert prefix.mean() == pytest.approx(stats["clicks"] / stats["sessions"] - 1)
  samples = _raw_sequences(ds, "train") + _raw_sequences(ds, "test")
  assert sorted(samples) == sorted((s[:-1], s[-1]) for s in sessions)


def test_launcher_on_generic_tsv(tmp_path):
  rows = [f"s{k % 7}\ti{(k * 3) % 5}\t{1000 + 60 * k}" for k in range(70)]
  (tmp_path / "log.tsv").write_text("session_id\titem_id\ttimestamp\n" + "\n".join(rows) + "\n")
  (tmp_path / "names.tsv").write_text("i0\tRed shoe\ni3\tBlue hat\n")
  out = tmp_path / "out"
  result = subprocess.run(
      [sys.executable, str(REPO / "experiments" / "prepare_data.py"), "--dataset", "generic", "--interactions",
       str(tmp_path / "log.tsv"), "--item_names", str(tmp_path / "names.tsv"), "--protocol", "temporal",
       "--test_size", "0.2", "--valid_size", "5", "--min_item_count", "1", "--out_dir", str(out)],
      capture_output=True, text=True, check=False)
  assert result.returncode == 0, result.stderr
  assert "| train | valid | test | clicks | items |" in result.stdout.replace("  ", " ").replace("  ", " ")
  ds = dataset.load_dataset(str(out), verify=True)
  assert len(ds.splits["valid"]) == 5 and ds.extra_stats["clicks"] == 70 and ds.extra_stats["sessions"] == 7
  assert ds.item_names[ds.raw_item_ids.index("i3")] == "Blue hat"
  assert ds.protocol["protocol"] == "temporal" and ds.protocol["session_gap_minutes"] is None


@needs_shared
def test_beauty_paper_protocol_matches_table_1():
  start = time.perf_counter()
  data = raw.load("beauty", raw_dir=str(SHARED / "beauty"), progress=False)
  ds = preprocess.preprocess(data, "beauty", protocol="paper", test_size=18_000, valid_size=0, seed=0)
  assert time.perf_counter() - start < 30
  stats = dataset.statistics(ds)
  assert (stats["clicks"], stats["items"], stats["samples"]) == (198_502, 12_101, 176_139)
  assert (stats["train"], stats["valid"], stats["test"]) == (158_139, 0, 18_000)
  assert round(ds.extra_stats["avg_prefix_length"], 2) == 8.67  # Table 1 says 8.66 (truncated, it seems)
  assert len(ds.item_names) == 12_102 and sum(n.startswith("Item ") for n in ds.item_names) == 7
  assert ds.source["files"]["reviews"]["sha256"] and ds.protocol["test_size"] == 18_000


@needs_shared
def test_ml100k_temporal_real():
  data = raw.load("ml-100k", raw_dir=str(SHARED / "ml-100k"), progress=False)
  ds = preprocess.preprocess(data, "ml-100k", protocol="temporal", test_size=0.1, valid_size=0.1,
                             session_gap_minutes=10)
  train, test = ds.splits["train"], ds.splits["test"]
  assert train.times.max() <= test.times.min()
  assert ds.extra_stats["raw_interactions"] == 100_000 and ds.extra_stats["sessions"] > 943


@needs_shared
def test_launcher_ml1m_paper_protocol_is_last_click(tmp_path):
  shutil.copy(SHARED / "ml-1m" / "movies.dat", tmp_path / "movies.dat")  # the official file passes its md5 check
  lines = _ml1m_style_ratings()
  (tmp_path / "ratings.dat").write_text("\n".join(lines) + "\n", encoding="latin-1")
  sessions = len(_sessions_by_hand(lines, 600, 5))
  launcher = [sys.executable, str(REPO / "experiments" / "prepare_data.py"), "--dataset", "ml-1m", "--raw_dir",
              str(tmp_path), "--protocol", "paper", "--valid_size", "0"]
  for extra, samples in (([], "last"), (["--samples", "all"], "all")):
    out = tmp_path / f"out_{samples}"
    result = subprocess.run(launcher + extra + ["--out_dir", str(out)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    ds = dataset.load_dataset(str(out), verify=True)
    stats = dataset.statistics(ds)
    assert ds.protocol.get("samples", "all") == samples and ds.protocol["session_gap_minutes"] == 10
    expected = sessions if samples == "last" else stats["clicks"] - sessions
    assert (stats["sessions"], stats["train"] + stats["test"]) == (sessions, expected)
    assert f"| {stats['train']:,} |" in result.stdout.replace("  ", " ").replace("  ", " ")


def test_last_click_training_split_feeds_the_graphs():
  from llm4sbr_jax.models import gcegnn, s2dhcn  # pylint: disable=g-import-not-at-top
  log = _random_log()
  last_only = [(f"z{k}", item, 2 * 10**6 + t) for k in range(3) for t, item in enumerate(("i1", "z"))]
  data = _raw(list(zip(log.keys.tolist(), log.items.tolist(), log.times.tolist())) + last_only)
  ds = preprocess.preprocess(data, "r", protocol="paper", test_size=0, valid_size=0, min_item_count=2, samples="last")
  train = ds.splits["train"]
  whole = {int(s): train.prefix(i).tolist() + [int(train.targets[i])] for i, s in enumerate(train.sessions)}
  # GCE-GNN's global graph reads every training session whole (the one sample's prefix + target), nothing else.
  items, offsets = gcegnn.graph_sequences(train)
  assert [items[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:])] == [whole[s] for s in sorted(whole)]
  # S2-DHCN: one hyperedge per training session, its clicks but the last; an item only ever last has no hyperedge.
  graph = s2dhcn.build_hypergraph(train, ds.num_items, "factored")
  assert graph.num_edges == len(whole) and graph.incidences == sum(len(set(p[:-1])) for p in whole.values())
  in_prefix = np.zeros(ds.num_items + 1, bool)
  in_prefix[np.asarray(train.items)] = True
  assert np.array_equal(graph.dinv > 0, in_prefix[1:]) and graph.dinv[ds.raw_item_ids.index("z") - 1] == 0
