"""Interaction log -> `ProcessedDataset`: sessions, filters, prefix samples and a seeded split.

Pipeline (SR-GNN's `datasets/preprocess.py` order, as the paper follows it):

1. Sessions: the clicks of one key (user or session id), ordered by time with ties kept in file order, form one
   session; with `session_gap_minutes` a key's clicks are further split wherever consecutive clicks are more than
   that many minutes apart (the paper's ML-1M rule, 10 minutes; never for data whose keys are session ids).
   Sessions are numbered by start time.
2. Drop sessions of length 1, count item occurrences over the remaining clicks, drop items seen fewer than
   `min_item_count` times, then drop sessions left with fewer than 2 clicks (one pass, not iterated).
3. Samples (`samples`), each timed by its target click's timestamp:
   * `all` (prefix augmentation): a session `[i1, ..., in]` gives the n - 1 samples `([i1..ik], i(k+1))`,
     k = 1..n-1 (the paper's Beauty row);
   * `last`: one sample per session, `([i1..i(n-1)], in)` (the paper's ML-1M row: train + test = sessions).
4. Split (`protocol`):
   * `paper`: a seeded random split of the samples (the paper's Beauty counts 158,139 / 18,000 come out exactly);
   * `temporal`: the latest samples by target time are the test set; items never seen in train are removed from
     test prefixes and test samples whose target is unseen in train, or whose prefix becomes empty, are dropped
     (as in SR-GNN's preprocessing).
   The validation split is carved from the training samples by the same protocol (size 0 -> empty).
5. Item ids are renumbered 1..n in order of first appearance in the (start-time ordered) sessions, over the items
   that occur in some sample; id 0 is padding.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from llm4sbr_jax import raw as raw_lib
from llm4sbr_jax.dataset import PAD_NAME, ProcessedDataset, Split, offsets_from_counts, ragged_take

PROTOCOLS = ("paper", "temporal")
SAMPLES = ("all", "last")


class PreprocessError(ValueError):
  """The preprocessing parameters do not fit the data (nothing left after filtering, a split size too large...)."""


def sessionize(keys: np.ndarray, times: np.ndarray, order: np.ndarray,
               gap_minutes: float | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Groups interactions into time-ordered sessions.

  Args:
    keys: [M] user or session keys (any sortable dtype).
    times: int64 [M] unix seconds.
    order: int64 [M] original line order (breaks timestamp ties).
    gap_minutes: also split a key's clicks at gaps strictly longer than this; None keeps one session per key.

  Returns:
    (perm, offsets): `perm` int64 [M] lists the interactions session by session, each in click order;
    session s is `perm[offsets[s]:offsets[s + 1]]`. Sessions are ordered by start time (ties: by key).
  """
  key_index = np.unique(keys, return_inverse=True)[1].reshape(-1)
  perm = np.lexsort((order, times, key_index))
  k, t = key_index[perm], np.asarray(times, np.int64)[perm]
  starts = np.ones(len(perm), bool)
  starts[1:] = k[1:] != k[:-1]
  if gap_minutes is not None:
    starts[1:] |= np.diff(t) > gap_minutes * 60
  offsets = np.append(np.flatnonzero(starts), len(perm)).astype(np.int64)
  by_start = np.argsort(t[offsets[:-1]], kind="stable")
  gather, offsets = ragged_take(offsets[by_start], np.diff(offsets)[by_start])
  return perm[gather], offsets


def filter_sessions(items: np.ndarray, offsets: np.ndarray, min_item_count: int = 5) -> np.ndarray:
  """The paper's filters (length-1 sessions, rare items, sessions left shorter than 2); returns a click mask.

  Args:
    items: int [M] item codes, session by session.
    offsets: int64 [S + 1] session boundaries.
    min_item_count: items seen fewer times (after dropping length-1 sessions) are removed.
  """
  lengths = np.diff(offsets)
  session = np.repeat(np.arange(len(lengths)), lengths)
  keep = (lengths >= 2)[session]
  counts = np.bincount(items[keep], minlength=int(items.max(initial=-1)) + 1)
  keep &= counts[items] >= min_item_count
  left = np.bincount(session[keep], minlength=len(lengths))
  return keep & (left >= 2)[session]


def resolve_size(size: int | float, n: int, what: str) -> int:
  """A split size as a count: an int is a count, a float in [0, 1) a fraction rounded up (like sklearn)."""
  if isinstance(size, bool) or not isinstance(size, (int, float, np.integer, np.floating)):
    raise PreprocessError(f"{what}: expected an int count or a float fraction, got {size!r}")
  if isinstance(size, (float, np.floating)):
    if not 0.0 <= size < 1.0:
      raise PreprocessError(f"{what}: a fraction must lie in [0, 1), got {size}")
    count = math.ceil(size * n)
  else:
    count = int(size)
  if not 0 <= count < n:
    raise PreprocessError(f"{what}: {count} samples requested out of {n}; expected 0 <= count < {n}")
  return count


def _cut(candidates: np.ndarray, size: int | float, protocol: str, rng: np.random.Generator,
         rank: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
  """Splits sample indices into (kept, held out) by `protocol`; both sorted."""
  count = resolve_size(size, len(candidates), what)
  if protocol == "paper":
    held = rng.permutation(candidates)[:count]
  else:  # The `count` latest samples by (target time, position in session).
    held = candidates[np.argsort(rank[candidates], kind="stable")[len(candidates) - count:]]
  held = np.sort(held)
  return np.setdiff1d(candidates, held, assume_unique=True), held


def _occurring(num_codes: int, *splits: Split) -> np.ndarray:
  """bool [num_codes]: which item codes occur in the splits' prefixes or targets."""
  mask = np.zeros(num_codes, bool)
  for split in splits:
    mask[split.items] = mask[split.targets] = True
  return mask


def _restrict(split: Split, known: np.ndarray) -> tuple[Split, int]:
  """Removes items outside `known` (bool per item code) from prefixes; drops samples left empty or with an unknown
  target. Returns the new split and the number of prefix items removed."""
  kept = known[split.items]
  sample = np.repeat(np.arange(len(split)), split.lengths)
  lengths = np.bincount(sample[kept], minlength=len(split))
  offsets = offsets_from_counts(lengths)
  restricted = Split(items=split.items[kept], offsets=offsets, targets=split.targets, sessions=split.sessions,
                     times=split.times)
  return restricted.subset(np.flatnonzero((lengths > 0) & known[split.targets])), int((~kept).sum())


def preprocess(data: raw_lib.RawData, name: str, *, protocol: str = "paper", test_size: int | float = 0.1,
               valid_size: int | float = 0.1, seed: int = 0, session_gap_minutes: float | None = None,
               min_item_count: int = 5, samples: str = "all", source: dict[str, Any] | None = None
               ) -> ProcessedDataset:
  """Builds the processed dataset (see the module docstring for every step).

  Args:
    data: the parsed interaction log.
    name: dataset name stored in `dataset.json`.
    protocol: `paper` (seeded random split of the samples) or `temporal` (latest samples are held out).
    test_size: test samples, an int count or a fraction of all samples.
    valid_size: validation samples, an int count or a fraction of the samples left after the test split; 0 -> empty.
    seed: the random split's seed (`paper` only).
    session_gap_minutes: split a key's clicks at gaps longer than this; None: one session per key.
    min_item_count: drop items seen fewer times.
    samples: `all` (every prefix of a session) or `last` (one sample per session: its last click the target).
    source: extra provenance for `ProcessedDataset.source` (the raw files' records are added).
  """
  if protocol not in PROTOCOLS:
    raise PreprocessError(f"protocol: expected one of {PROTOCOLS}, got {protocol!r}")
  if samples not in SAMPLES:
    raise PreprocessError(f"samples: expected one of {SAMPLES}, got {samples!r}")
  files = ", ".join(record.get("file", role) for role, record in data.files.items())
  where = f"{name} ({files})" if files else name
  if data.sessions_given and session_gap_minutes is not None:
    raise PreprocessError(f"{where}: the keys are session ids, each one session; a session gap "
                          f"({session_gap_minutes} minutes) applies only to user ids")
  # 1-2. Sessions and filters, on dense item codes.
  raw_ids, codes = np.unique(data.items, return_inverse=True)
  codes = codes.reshape(-1).astype(np.int32)
  perm, offsets = sessionize(data.keys, data.times, data.order, session_gap_minutes)
  items, times = codes[perm], np.asarray(data.times, np.int64)[perm]
  keep = filter_sessions(items, offsets, min_item_count)
  session = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))[keep]
  items, times = items[keep], times[keep]
  lengths = np.bincount(session, minlength=len(offsets) - 1)
  lengths = lengths[lengths > 0]
  if not len(lengths):
    raise PreprocessError(f"{where}: no session of length >= 2 is left after dropping length-1 sessions and items "
                          f"seen < {min_item_count} times ({len(data)} interactions, {len(offsets) - 1} sessions); "
                          "expected sessions of 2+ clicks on items seen often enough (lower min_item_count?)")
  offsets = offsets_from_counts(lengths)
  session = np.repeat(np.arange(len(lengths)), lengths)
  position = np.arange(len(items)) - offsets[session]

  # 3. Samples: every click at position >= 1 (`all`) or each session's last click (`last`) is a target; its prefix
  # is its session's clicks before it.
  targets = np.flatnonzero(position > 0 if samples == "all" else position == lengths[session] - 1)
  gather, sample_offsets = ragged_take(offsets[session[targets]], position[targets])
  pool = Split(items=items[gather], offsets=sample_offsets,
              targets=items[targets], sessions=session[targets], times=times[targets])

  # 4. Split: test first, then validation out of the rest, by the same protocol.
  rng = np.random.default_rng(seed)
  rank = np.empty(len(targets), np.int64)
  rank[np.lexsort((position[targets], times[targets]))] = np.arange(len(targets))
  train_valid, test = _cut(np.arange(len(targets)), test_size, protocol, rng, rank, "test_size")
  train, valid = _cut(train_valid, valid_size, protocol, rng, rank, "valid_size")
  splits = {"train": pool.subset(train), "valid": pool.subset(valid), "test": pool.subset(test)}
  dropped = {}
  if protocol == "temporal":
    # Test and validation keep only items the model trains on (the final train split), as the reference does.
    seen = _occurring(len(raw_ids), splits["train"])
    for split in ("test", "valid"):
      before = len(splits[split])
      splits[split], removed = _restrict(splits[split], seen)
      dropped[f"{split}_samples_dropped"] = before - len(splits[split])
      dropped[f"{split}_prefix_items_removed"] = removed

  # 5. Item ids 1..n by first appearance, over the items that occur in some sample.
  used = _occurring(len(raw_ids), *splits.values())
  first_seen = np.unique(items, return_index=True)  # (codes, first click index), codes ascending
  by_first = first_seen[0][np.argsort(first_seen[1])]
  by_first = by_first[used[by_first]]
  new_id = np.zeros(len(raw_ids), np.int32)
  new_id[by_first] = np.arange(1, len(by_first) + 1)
  splits = {k: Split(items=new_id[s.items], offsets=s.offsets, targets=new_id[s.targets], sessions=s.sessions,
                     times=s.times) for k, s in splits.items()}
  item_raw_ids = raw_ids[by_first].tolist()

  protocol_record = {"protocol": protocol, "seed": seed if protocol == "paper" else None,
                     "test_size": test_size, "valid_size": valid_size, "session_gap_minutes": session_gap_minutes,
                     "min_item_count": min_item_count, "min_session_length": 2,
                     "sessions": ("per session id" if data.sessions_given else "per key" if session_gap_minutes is None
                                  else "per key, split at gaps"),
                     "item_ids": "1..n by first appearance in start-time ordered sessions"}
  if samples != "all":  # absent means every prefix, so datasets prepared before this option keep their fingerprints
    protocol_record["samples"] = samples
  extra_stats = {"clicks": int(len(items)), "sessions": int(len(lengths)),
                 "avg_session_length": float(np.mean(lengths)), "max_session_length": int(np.max(lengths)),
                 "avg_prefix_length": float(np.mean(pool.lengths)),
                 "raw_interactions": len(data), "raw_keys": int(len(np.unique(data.keys))),
                 "raw_items": int(len(raw_ids)), **dropped}
  return ProcessedDataset(
      name=name, item_names=[PAD_NAME] + [raw_lib.item_name(data.names, r) for r in item_raw_ids],
      raw_item_ids=[""] + item_raw_ids, splits=splits, protocol=protocol_record,
      source={**(source or {}), "files": data.files}, extra_stats=extra_stats)


def subset_sessions(ds: ProcessedDataset, num_sessions: int, seed: int = 0) -> ProcessedDataset:
  """The samples of `num_sessions` sessions drawn at random (seeded), every split and item id kept as in `ds`.

  Used where a costly per-sample stage (LLM inference) can only cover part of a dataset: both models then train and
  test on exactly this subset. `protocol` records the parent fingerprint and the chosen session ids.
  """
  all_sessions = np.unique(np.concatenate([np.asarray(s.sessions) for s in ds.splits.values()]))
  if not 0 < num_sessions <= len(all_sessions):
    raise PreprocessError(f"num_sessions must lie in 1..{len(all_sessions)}, got {num_sessions}")
  chosen = np.sort(np.random.default_rng(seed).choice(all_sessions, size=num_sessions, replace=False))
  splits = {k: s.subset(np.flatnonzero(np.isin(np.asarray(s.sessions), chosen))) for k, s in ds.splits.items()}
  protocol = {**ds.protocol, "subset_of": ds.fingerprint, "subset_seed": seed, "subset_sessions": chosen.tolist()}
  return ProcessedDataset(name=f"{ds.name}-subset{num_sessions}", item_names=ds.item_names,
                          raw_item_ids=ds.raw_item_ids, splits=splits, protocol=protocol, source=ds.source,
                          extra_stats={"parent_samples": {k: len(s) for k, s in ds.splits.items()}})
