"""The processed dataset directory: the one data contract shared by stage 1 and stage 2.

Layout of a processed dataset directory::

    dataset.json                 name, format_version, fingerprint, num_items, split sizes, protocol, source, stats
    items.json                   {"names": [...], "raw_ids": [...]}; index = item id, index 0 = padding ("<pad>", "")
    <split>/items.npy            int32 [T]   concatenated prefix item ids (1..num_items), in click order
    <split>/offsets.npy          int64 [N+1] sample i's prefix is items[offsets[i]:offsets[i+1]]
    <split>/targets.npy          int32 [N]   the next item (1..num_items)
    <split>/sessions.npy         int64 [N]   index of the session the sample was cut from
    <split>/times.npy            int64 [N]   unix time of the target click

Splits are `train`, `valid` (may be empty) and `test`. Every array is a plain `.npy` (no pickle) and loads with
`allow_pickle=False`, memory-mapped. The fingerprint is a sha256 over the item table, every split array and the
protocol, so any change of data or split changes it; stage-1 manifests name it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import shutil
from typing import Any, Mapping

import numpy as np

FORMAT_VERSION = 1
SPLITS = ("train", "valid", "test")
PAD_NAME = "<pad>"
_FIELDS = {"items": np.int32, "offsets": np.int64, "targets": np.int32, "sessions": np.int64, "times": np.int64}


def offsets_from_counts(counts: np.ndarray) -> np.ndarray:
  """CSR offsets [K + 1] (int64) from row lengths [K]."""
  offsets = np.zeros(len(counts) + 1, np.int64)
  np.cumsum(np.asarray(counts, np.int64), out=offsets[1:])
  return offsets


def write_atomic(path: str, data: bytes) -> None:
  """Writes `data` to `path` through a temporary sibling and a rename, so a kill never leaves a partial file."""
  with open(path + ".tmp", "wb") as f:
    f.write(data)
  os.replace(path + ".tmp", path)


def save_npy(path: str, array: np.ndarray) -> None:
  """Saves an array (no pickle) to `path` atomically."""
  buf = io.BytesIO()
  np.save(buf, array, allow_pickle=False)
  write_atomic(path, buf.getvalue())


def ragged_take(starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Positions of the slices `flat[starts[k]:starts[k] + lengths[k]]`, concatenated, and their CSR offsets.

  Args:
    starts: int [K] slice starts in a flat array.
    lengths: int [K] slice lengths.

  Returns:
    (positions into the flat array, int64 [sum(lengths)]; offsets, int64 [K + 1]).
  """
  lengths = np.asarray(lengths, np.int64)
  offsets = offsets_from_counts(lengths)
  gather = np.arange(offsets[-1], dtype=np.int64)
  gather += np.repeat(np.asarray(starts, np.int64) - offsets[:-1], lengths)  # in place: prefixes can total ~1e8
  return gather, offsets


class DatasetError(ValueError):
  """A processed dataset directory is missing, malformed or inconsistent."""


@dataclasses.dataclass(frozen=True)
class Split:
  """Prefix samples of one split, stored as a ragged (CSR) array of prefixes."""

  items: np.ndarray  # [T] int32
  offsets: np.ndarray  # [N + 1] int64
  targets: np.ndarray  # [N] int32
  sessions: np.ndarray  # [N] int64
  times: np.ndarray  # [N] int64

  def __len__(self) -> int:
    return int(self.targets.shape[0])

  @property
  def lengths(self) -> np.ndarray:
    """Prefix length of every sample, int64 [N]."""
    return np.diff(self.offsets)

  def prefix(self, i: int) -> np.ndarray:
    """The item ids of sample i's prefix, in click order."""
    return np.asarray(self.items[self.offsets[i]:self.offsets[i + 1]])

  def subset(self, index: np.ndarray) -> "Split":
    """A new split holding the samples `index` (in that order)."""
    index = np.asarray(index, dtype=np.int64)
    gather, offsets = ragged_take(self.offsets[:-1][index], self.lengths[index])
    return Split(items=np.asarray(self.items)[gather].astype(np.int32), offsets=offsets,
                 targets=np.asarray(self.targets)[index], sessions=np.asarray(self.sessions)[index],
                 times=np.asarray(self.times)[index])

  @classmethod
  def from_prefixes(cls, prefixes: list[np.ndarray] | list[list[int]], targets, sessions, times) -> "Split":
    """Builds a split from a list of prefixes (a convenience for small data and tests)."""
    offsets = offsets_from_counts(np.asarray([len(p) for p in prefixes], np.int64))
    items = np.concatenate([np.asarray(p, np.int32) for p in prefixes]) if prefixes else np.zeros(0, np.int32)
    return cls(items=items.astype(np.int32), offsets=offsets, targets=np.asarray(targets, np.int32),
               sessions=np.asarray(sessions, np.int64), times=np.asarray(times, np.int64))

  @classmethod
  def empty(cls) -> "Split":
    return cls.from_prefixes([], [], [], [])


@dataclasses.dataclass(frozen=True)
class ProcessedDataset:
  """Items with names plus prefix samples per split."""

  name: str
  item_names: list[str]  # [n + 1]; [0] = PAD_NAME
  raw_item_ids: list[str]  # [n + 1]; [0] = ""
  splits: Mapping[str, Split]
  protocol: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  source: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  extra_stats: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def num_items(self) -> int:
    """Number of real items (ids 1..num_items); the embedding table has num_items + 1 rows."""
    return len(self.item_names) - 1

  @property
  def fingerprint(self) -> str:
    return fingerprint(self)

  @property
  def longest_prefix(self) -> int:
    """The longest prefix of any split (1 for a dataset without samples): the session length its models are built
    for (position tables, serving's longest session)."""
    return max((int(s.lengths.max()) for s in self.splits.values() if len(s)), default=1)


def fingerprint(ds: ProcessedDataset) -> str:
  """sha256 over items, split arrays and protocol (hex)."""
  h = hashlib.sha256()
  h.update(json.dumps({"names": list(ds.item_names), "raw_ids": list(ds.raw_item_ids),
                       "protocol": dict(ds.protocol)}, sort_keys=True, ensure_ascii=False).encode())
  for split in SPLITS:
    s = ds.splits.get(split, Split.empty())
    for field, dtype in _FIELDS.items():
      arr = np.ascontiguousarray(np.asarray(getattr(s, field), dtype=dtype))
      h.update(f"{split}/{field}:{arr.shape}".encode())
      h.update(arr.tobytes())
  return h.hexdigest()


def statistics(ds: ProcessedDataset) -> dict[str, Any]:
  """Table-1-style statistics (the paper's columns plus a few more).

  `clicks` counts every click of the processed sessions. With every prefix as a sample (`samples` all), a session of
  length n contributes its n - 1 samples plus its first click, so clicks = samples + sessions (valid samples count
  as train); with last-click samples, samples = sessions.
  """
  stats: dict[str, Any] = {"items": ds.num_items}
  total, sessions = 0, set()
  for split in SPLITS:
    s = ds.splits.get(split, Split.empty())
    stats[split] = len(s)
    total += len(s)
    sessions.update(np.unique(np.asarray(s.sessions)).tolist())
    if len(s):
      stats[f"{split}_avg_prefix_len"] = float(np.mean(s.lengths))
      stats[f"{split}_max_prefix_len"] = int(np.max(s.lengths))
  stats["samples"] = total
  stats["sessions"] = len(sessions)
  stats.update(dict(ds.extra_stats))
  return stats


def save_dataset(ds: ProcessedDataset, directory: str) -> str:
  """Writes `ds` to `directory` atomically (a temporary sibling renamed at the end); returns the fingerprint."""
  _validate(ds, directory)
  directory = os.path.abspath(directory)
  tmp = directory + ".tmp"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  for split in SPLITS:
    s = ds.splits.get(split, Split.empty())
    os.makedirs(os.path.join(tmp, split))
    for field, dtype in _FIELDS.items():
      np.save(os.path.join(tmp, split, f"{field}.npy"), np.asarray(getattr(s, field), dtype=dtype),
              allow_pickle=False)
  with open(os.path.join(tmp, "items.json"), "w", encoding="utf-8") as f:
    json.dump({"names": list(ds.item_names), "raw_ids": list(ds.raw_item_ids)}, f, ensure_ascii=False)
  fp = fingerprint(ds)
  meta = {"name": ds.name, "format_version": FORMAT_VERSION, "fingerprint": fp, "num_items": ds.num_items,
          "splits": {k: len(ds.splits.get(k, Split.empty())) for k in SPLITS}, "protocol": dict(ds.protocol),
          "source": dict(ds.source), "extra_stats": dict(ds.extra_stats), "stats": statistics(ds)}
  with open(os.path.join(tmp, "dataset.json"), "w", encoding="utf-8") as f:
    json.dump(meta, f, indent=2, ensure_ascii=False)
  if os.path.exists(directory):
    shutil.rmtree(directory)
  os.replace(tmp, directory)
  return fp


def read_metadata(directory: str) -> dict[str, Any]:
  """Reads and checks `dataset.json` only."""
  path = os.path.join(directory, "dataset.json")
  if not os.path.isfile(path):
    raise DatasetError(f"{path}: not found; expected a processed dataset directory "
                       "(run experiments/prepare_data.py first)")
  try:
    with open(path, encoding="utf-8") as f:
      meta = json.load(f)
  except json.JSONDecodeError as e:
    raise DatasetError(f"{path}: not valid JSON ({e})") from e
  for key in ("name", "format_version", "fingerprint", "num_items", "splits"):
    if key not in meta:
      raise DatasetError(f"{path}: missing field '{key}'")
  if meta["format_version"] != FORMAT_VERSION:
    raise DatasetError(f"{path}: format_version {meta['format_version']}, expected {FORMAT_VERSION}")
  return meta


def load_dataset(directory: str, mmap: bool = True, verify: bool = False) -> ProcessedDataset:
  """Loads a processed dataset directory (arrays memory-mapped unless `mmap=False`).

  Args:
    directory: the directory written by `save_dataset`.
    mmap: memory-map the arrays.
    verify: recompute the fingerprint and compare it with `dataset.json`.
  """
  meta = read_metadata(directory)
  items_path = os.path.join(directory, "items.json")
  try:
    with open(items_path, encoding="utf-8") as f:
      items = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise DatasetError(f"{items_path}: cannot read the item table ({e})") from e
  splits = {}
  for split in SPLITS:
    arrays = {}
    for field, dtype in _FIELDS.items():
      path = os.path.join(directory, split, f"{field}.npy")
      try:
        arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
      except (OSError, ValueError) as e:
        raise DatasetError(f"{path}: cannot load ({e})") from e
      if arr.dtype != dtype or arr.ndim != 1:
        raise DatasetError(f"{path}: expected a 1-d {np.dtype(dtype).name} array, got {arr.ndim}-d {arr.dtype}")
      arrays[field] = arr
    splits[split] = Split(**arrays)
  ds = ProcessedDataset(name=meta["name"], item_names=items["names"], raw_item_ids=items["raw_ids"], splits=splits,
                        protocol=meta.get("protocol", {}), source=meta.get("source", {}),
                        extra_stats=meta.get("extra_stats", {}))
  _validate(ds, directory)
  if ds.num_items != meta["num_items"]:
    raise DatasetError(f"{items_path}: {ds.num_items} items, dataset.json says {meta['num_items']}")
  if verify and ds.fingerprint != meta["fingerprint"]:
    raise DatasetError(f"{directory}: content fingerprint {ds.fingerprint[:12]} does not match dataset.json "
                       f"({meta['fingerprint'][:12]}); the directory was modified after it was written")
  return ds


def _validate(ds: ProcessedDataset, where: str) -> None:
  if len(ds.item_names) != len(ds.raw_item_ids):
    raise DatasetError(f"{where}: {len(ds.item_names)} item names but {len(ds.raw_item_ids)} raw ids")
  if not ds.item_names or ds.item_names[0] != PAD_NAME:
    raise DatasetError(f"{where}: item 0 must be the padding item named {PAD_NAME!r}")
  unknown = set(ds.splits) - set(SPLITS)
  if unknown:
    raise DatasetError(f"{where}: unknown split(s) {sorted(unknown)}; expected {SPLITS}")
  for name, s in ds.splits.items():
    n = len(s)
    if s.offsets.shape != (n + 1,) or s.sessions.shape != (n,) or s.times.shape != (n,):
      raise DatasetError(f"{where}/{name}: offsets/sessions/times do not match {n} targets")
    if n and (s.offsets[0] != 0 or s.offsets[-1] != s.items.shape[0] or np.any(np.diff(s.offsets) < 1)):
      raise DatasetError(f"{where}/{name}/offsets.npy: expected 0, increasing by >= 1, ending at len(items)")
    for field in ("items", "targets"):
      arr = np.asarray(getattr(s, field))
      if arr.size and (arr.min() < 1 or arr.max() > ds.num_items):
        raise DatasetError(f"{where}/{name}/{field}.npy: item ids must lie in 1..{ds.num_items}, "
                           f"found {arr.min()}..{arr.max()}")
