"""Stage-1 intents for stage 2: validated loading, intent localization (paper eq. 3-4) and the item-text baseline.

Stage 1 (`third_party_infer`, PyTorch) writes raw answer embeddings per perspective and the item-name embeddings;
its `manifest.json` names the processed dataset's fingerprint and lists every shard with its rows and checksum.
This module refuses any mismatch with a clear `IntentsError` (other fingerprint, missing or overlapping rows, wrong
dim, NaN/inf rows, unknown perspective, checksum mismatch) and localizes the answers:

    sim_j = cos(e_infer, e_item_j)                                    (eq. 3, over items 1..n, padding excluded)
    h_infer = sum_{j in top-f} softmax_j(sim_j) e_item_j              (eq. 4)

f = 0 keeps the raw answer embedding; f = 1 gives the nearest item's embedding. Results are cached per f on disk
(`<stage1_dir>/localized/`, keyed by split, perspective, f and the manifest hash), so an f sweep never reruns
stage 1. No torch here: numpy and jax only.

Answers that name an item by its id: a small LLM sometimes answers with a raw item id (an ASIN) or with
`name_rawid` as the prompt writes items, whose embedding lands on unrelated items. Stage 1 matches such answers
exactly against the catalog when it writes them (`<perspective>.items.npy` per shard, counted in the manifest's
`stats.named_item_answers`): there the prompt format and the raw answer are at hand, and the match is recorded next
to the answer. Stage 2 takes the named item's name embedding as the localized intent of those answers, for every f
(also f = 0), instead of eq. 3-4. Stage-1 outputs written before this matching have no such files and localize as
before.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from llm4sbr_jax import dataset as dataset_lib
from llm4sbr_jax.raw import file_digest

FORMAT_VERSION = 1
_LOG = logging.getLogger(__name__)
_MAX_SIM_ELEMENTS = 1 << 24  # similarity entries per localization chunk (64 MiB of float32)


class IntentsError(ValueError):
  """Stage-1 outputs do not match the processed dataset or the request."""


def _load(directory: str, entry_file: str, digest: str | None) -> np.ndarray:
  path = os.path.join(directory, entry_file)
  if not os.path.isfile(path):
    raise IntentsError(f"{path}: listed in manifest.json but missing")
  if digest is not None and file_digest(path, "sha256") != digest:
    raise IntentsError(f"{path}: checksum mismatch with manifest.json (file modified or truncated); "
                       "rerun stage 1 for this shard")
  try:
    return np.load(path, mmap_mode="r", allow_pickle=False)
  except (OSError, ValueError) as e:
    raise IntentsError(f"{path}: cannot load ({e})") from e


def _check_finite(path: str, array: np.ndarray, rows: np.ndarray) -> None:
  bad = ~np.isfinite(np.asarray(array, np.float32)).all(axis=1)
  if bad.any():
    raise IntentsError(f"{path}: {int(bad.sum())} row(s) with NaN/inf values, e.g. sample row {int(rows[bad][0])}")


@dataclasses.dataclass(frozen=True)
class Stage1:
  """A validated stage-1 output directory."""

  directory: str
  manifest: dict
  manifest_hash: str

  @property
  def perspectives(self) -> list[str]:
    return list(self.manifest["perspectives"])

  @property
  def dim(self) -> int:
    return int(self.manifest["dim"])

  def _shards(self, split: str, perspective: str) -> list[dict]:
    self.check_perspectives([perspective])
    shards = [s for s in self.manifest["shards"] if s["split"] == split and s["perspective"] == perspective]
    return sorted(shards, key=lambda s: s["row_start"])

  def check_perspectives(self, perspectives: Sequence[str]) -> None:
    """Raises IntentsError naming any perspective the manifest lacks."""
    unknown = [p for p in perspectives if p not in self.perspectives]
    if unknown:
      raise IntentsError(f"{self.directory}: perspective(s) {unknown} not in the stage-1 output "
                         f"(it has {self.perspectives})")

  def item_embeddings(self) -> np.ndarray:
    """Item-name embeddings [num_items + 1, dim], memory-mapped (checked by `open_stage1`)."""
    return np.load(os.path.join(self.directory, self.manifest["item_embeddings"]["file"]), mmap_mode="r",
                   allow_pickle=False)

  def rows(self, split: str, perspective: str) -> np.ndarray:
    """The split's sample indices covered for `perspective`, int64, in shard order (increasing for stage 1)."""
    parts = [np.load(os.path.join(self.directory, s["rows_file"]), allow_pickle=False)
             for s in self._shards(split, perspective)]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)

  def answers(self, split: str, perspective: str) -> np.ndarray:
    """Raw answer embeddings, float32 [len(rows(split, perspective)), dim], row-aligned with `rows`."""
    parts = [np.load(os.path.join(self.directory, s["file"]), mmap_mode="r", allow_pickle=False)
             for s in self._shards(split, perspective)]
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, self.dim), np.float32)

  def named_items(self, split: str, perspective: str) -> np.ndarray:
    """The item each answer names exactly (stage 1's id-answer match), int64 aligned with `rows`; 0 = none (also
    for every answer of a shard written before stage 1 matched ids)."""
    parts = [np.load(os.path.join(self.directory, s["items_file"]), allow_pickle=False) if "items_file" in s
             else np.zeros(s["num_rows"], np.int64) for s in self._shards(split, perspective)]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)

  def answer_records(self, split: str, perspective: str) -> dict[int, dict]:
    """row -> the answers.jsonl record (prompt, raw and cleaned answer) for `perspective`."""
    out = {}
    for path in dict.fromkeys(s["answers_file"] for s in self._shards(split, perspective)):
      with open(os.path.join(self.directory, path), encoding="utf-8") as f:
        for line in f:
          rec = json.loads(line)
          if rec["perspective"] == perspective:
            out[rec["row"]] = rec
    return out


def open_stage1(stage1_dir: str, dataset: dataset_lib.ProcessedDataset, verify: bool = True) -> Stage1:
  """Reads `manifest.json` and checks it against `dataset`.

  Args:
    stage1_dir: a stage-1 output directory.
    dataset: the processed dataset the training uses.
    verify: also check every file's sha256 and that no embedding row holds NaN/inf (reads all shards once).

  Raises:
    IntentsError: on any mismatch, naming the file and the problem.
  """
  path = os.path.join(stage1_dir, "manifest.json")
  if not os.path.isfile(path):
    raise IntentsError(f"{path}: not found; run `python -m third_party_infer` (its final step writes the manifest)")
  with open(path, "rb") as f:
    raw = f.read()
  try:
    manifest = json.loads(raw)
  except json.JSONDecodeError as e:
    raise IntentsError(f"{path}: not valid JSON ({e})") from e
  if manifest.get("format_version") != FORMAT_VERSION:
    raise IntentsError(f"{path}: format_version {manifest.get('format_version')}, expected {FORMAT_VERSION}")
  if manifest["dataset_fingerprint"] != dataset.fingerprint:
    raise IntentsError(f"{path}: made from dataset fingerprint {manifest['dataset_fingerprint'][:12]}, but the "
                       f"dataset {dataset.name!r} has fingerprint {dataset.fingerprint[:12]}; rerun stage 1 on it")
  s1 = Stage1(stage1_dir, manifest, hashlib.sha256(raw).hexdigest())
  dim = s1.dim
  entry = manifest["item_embeddings"]
  items = _load(stage1_dir, entry["file"], entry["sha256"] if verify else None)
  if items.shape != (dataset.num_items + 1, dim):
    raise IntentsError(f"{stage1_dir}/{entry['file']}: shape {items.shape}, expected "
                       f"({dataset.num_items + 1}, {dim}) = (num_items + 1, dim) (wrong dim or item count)")
  if verify:
    _check_finite(f"{stage1_dir}/{entry['file']}", items, np.arange(items.shape[0]))
  covered: dict[tuple[str, str], list[tuple[np.ndarray, str]]] = {}
  for shard in manifest["shards"]:
    split, perspective, file = shard["split"], shard["perspective"], shard["file"]
    if perspective not in s1.perspectives:
      raise IntentsError(f"{path}: shard {file} has perspective {perspective!r}, not listed in 'perspectives'")
    rows = _load(stage1_dir, shard["rows_file"], shard["rows_sha256"] if verify else None)
    n = len(dataset.splits.get(split, dataset_lib.Split.empty()))
    if rows.shape != (shard["num_rows"],) or (rows.size and (rows.min() < 0 or rows.max() >= n)):
      raise IntentsError(f"{stage1_dir}/{shard['rows_file']}: expected {shard['num_rows']} row indices in "
                         f"0..{n - 1} (split {split!r} has {n} samples)")
    covered.setdefault((split, perspective), []).append((np.asarray(rows), file))
    emb = _load(stage1_dir, file, shard["sha256"] if verify else None)
    if emb.ndim != 2 or emb.shape[1] != dim:
      raise IntentsError(f"{stage1_dir}/{file}: shape {emb.shape}, expected [rows, dim={dim}] (wrong dim)")
    if emb.shape[0] != rows.shape[0]:
      raise IntentsError(f"{stage1_dir}/{file}: {emb.shape[0]} rows but {shard['rows_file']} lists {rows.shape[0]}")
    if verify:
      _check_finite(f"{stage1_dir}/{file}", emb, rows)
    if "items_file" in shard:
      named = _load(stage1_dir, shard["items_file"], shard["items_sha256"] if verify else None)
      if (named.shape != rows.shape or not np.issubdtype(named.dtype, np.integer)
          or (named.size and (named.min() < 0 or named.max() > dataset.num_items))):
        raise IntentsError(f"{stage1_dir}/{shard['items_file']}: expected {rows.shape[0]} integer item ids in "
                           f"0..{dataset.num_items} (0 = the answer names no item), got {named.dtype} "
                           f"{named.shape}")
  for (split, perspective), parts in covered.items():
    rows = np.sort(np.concatenate([r for r, _ in parts]))
    dup = rows[1:][rows[1:] == rows[:-1]]
    if dup.size:
      files = [f for r, f in parts if np.isin(dup[0], r)]
      raise IntentsError(f"{path}: overlapping rows: {split} row {int(dup[0])} ({perspective}) is listed more than "
                         f"once (in {files})")
  return s1


def load_item_embeddings(stage1_dir: str, dataset: dataset_lib.ProcessedDataset,
                         verify: bool = True) -> np.ndarray:
  """Item-name embeddings [num_items + 1, dim] (memory-mapped; row i = item i, row 0 = padding), validated."""
  return open_stage1(stage1_dir, dataset, verify=verify).item_embeddings()


@functools.partial(jax.jit, static_argnames=("f",))
def _top_f_chunk(answers, items, items_unit, f):
  """Top-f items (0-based in `items`), their softmax weights and the weighted sums for one chunk of answers."""
  unit = answers / jnp.maximum(jnp.linalg.norm(answers, axis=-1, keepdims=True), 1e-12)
  sims = jnp.matmul(unit, items_unit.T, precision=jax.lax.Precision.HIGHEST)
  top, idx = jax.lax.top_k(sims, f)
  weights = jax.nn.softmax(top, axis=-1)
  return idx, weights, jnp.einsum("cf,cfd->cd", weights, items[idx], precision=jax.lax.Precision.HIGHEST)


def top_f(answers: np.ndarray, item_embeddings: np.ndarray, f: int,
          chunk_size: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Intent localization (eq. 3-4) for f >= 1.

  Args:
    answers: [N, d] answer embeddings.
    item_embeddings: [n + 1, d]; row 0 (padding) never takes part.
    f: items kept per answer (1..n).
    chunk_size: answers per chunk (default: as many as keep the [chunk, n] similarities within 16M entries);
      every chunk has the same shape (the last is padded), so it compiles once.

  Returns:
    item ids int64 [N, f] (1..n, most similar first), softmax weights float32 [N, f], localized float32 [N, d].
  """
  items = jnp.asarray(np.asarray(item_embeddings[1:], np.float32))
  n, d = items.shape
  if not 1 <= f <= n:
    raise ValueError(f"f={f} must lie in 1..{n} (the number of items)")
  items_unit = items / jnp.maximum(jnp.linalg.norm(items, axis=-1, keepdims=True), 1e-12)
  num = answers.shape[0]
  chunk = max(1, min(num, chunk_size or _MAX_SIM_ELEMENTS // n))
  ids = np.zeros((num, f), np.int64)
  weights = np.zeros((num, f), np.float32)
  out = np.zeros((num, d), np.float32)
  for start in range(0, num, chunk):
    block = np.asarray(answers[start:start + chunk], np.float32)
    m = block.shape[0]
    if m < chunk:
      block = np.concatenate([block, np.zeros((chunk - m, d), np.float32)])
    idx, w, loc = _top_f_chunk(jnp.asarray(block), items, items_unit, f)
    ids[start:start + m] = np.asarray(idx[:m]) + 1
    weights[start:start + m] = np.asarray(w[:m])
    out[start:start + m] = np.asarray(loc[:m])
  return ids, weights, out


def localize(answers: np.ndarray, item_embeddings: np.ndarray, f: int, chunk_size: int | None = None) -> np.ndarray:
  """Localized intents float32 [N, d]: f = 0 returns the answers unchanged (as float32); else see `top_f`."""
  if f == 0:
    return np.asarray(answers, np.float32).copy()
  return top_f(answers, item_embeddings, f, chunk_size)[2]


def _save_cache(path: str, array: np.ndarray) -> None:
  """Writes a cache file atomically; a read-only stage-1 directory just means no cache."""
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    dataset_lib.save_npy(path, array)
  except OSError:
    pass


def localized_intents(stage1_dir: str, dataset: dataset_lib.ProcessedDataset, split: str,
                      perspectives: Sequence[str] | None = None, f: int = 5, rows: Sequence[int] | None = None,
                      cache: bool = True, verify: bool = True, chunk_size: int | None = None) -> np.ndarray:
  """Localized intent embeddings for one split: float32 [N, P, d_text].

  Args:
    stage1_dir: a stage-1 output directory.
    dataset: the processed dataset (its fingerprint must match the manifest).
    split: "train", "valid" or "test".
    perspectives: perspective names in output order (default: the manifest's order).
    f: localization top-f (0 = raw answer embeddings); an answer that names an item by its id gets that item's
      embedding for every f (module docstring).
    rows: the split's sample indices to return (default: every sample, in order; all must be covered).
    cache: read/write the per-f cache under `<stage1_dir>/localized/`.
    verify: check checksums and finiteness of the stage-1 files (see `open_stage1`).
    chunk_size: localization chunk (see `top_f`).

  Raises:
    IntentsError: on a contract mismatch or a requested row that stage 1 did not cover.
  """
  s1 = open_stage1(stage1_dir, dataset, verify=verify)
  perspectives = list(perspectives) if perspectives is not None else s1.perspectives
  s1.check_perspectives(perspectives)
  if split not in dataset.splits:
    raise IntentsError(f"unknown split {split!r}")
  want = np.arange(len(dataset.splits[split]), dtype=np.int64) if rows is None else np.asarray(rows, np.int64)
  out = np.zeros((len(want), len(perspectives), s1.dim), np.float32)
  for k, p in enumerate(perspectives):
    covered = s1.rows(split, p)
    order = np.argsort(covered, kind="stable")
    pos = order[np.minimum(np.searchsorted(covered[order], want), max(len(covered) - 1, 0))]
    missing = want[covered[pos] != want] if len(covered) else want
    if missing.size:
      hint = "" if rows is not None else "; pass rows=... (e.g. Stage1.rows) to use the covered subset"
      raise IntentsError(f"{stage1_dir}: missing rows: {missing.size} of {len(want)} requested {split} samples "
                         f"(e.g. {missing[:5].tolist()}) have no {p!r} answer; stage 1 covered "
                         f"{len(covered)}{hint}")
    path = os.path.join(stage1_dir, "localized", f"{split}.{p}.f{f}.{s1.manifest_hash[:16]}.npy")
    if cache and os.path.isfile(path):
      loc = np.load(path, mmap_mode="r", allow_pickle=False)
    else:
      loc = localize(s1.answers(split, p), s1.item_embeddings(), f, chunk_size)
      if cache:
        _save_cache(path, loc)
    out[:, k] = loc[pos]
    hits = use_named_items(out[:, k], s1.named_items(split, p)[pos], s1.item_embeddings())
    if hits:
      _LOG.info("%s %s: %d of %d answers name an item by its id; their intent is that item's embedding", split, p,
                hits, len(pos))
  return out


def use_named_items(localized: np.ndarray, named: np.ndarray, item_embeddings: np.ndarray) -> int:
  """Sets the intent of every answer that names an item by its id (`named` > 0, same leading shape as `localized`
  [..., d]) to that item's embedding, in place (module docstring); returns how many did."""
  hit = named > 0
  localized[hit] = item_embeddings[named[hit]]
  return int(hit.sum())


ITEM_TEXT_PERSPECTIVES = ("long-term", "short-term")


def item_text_intents(item_embeddings: np.ndarray, split: dataset_lib.Split,
                      perspectives: Sequence[str] = ITEM_TEXT_PERSPECTIVES, chunk: int = 1024) -> np.ndarray:
  """The LLM-free "item text" baseline: float32 [N, P, d], P = len(perspectives).

  `long-term` is the mean of the prefix items' name embeddings; `short-term` is the last prefix item's name
  embedding. Only the requested perspectives are computed (no temporary of the full array).
  """
  unknown = set(perspectives) - set(ITEM_TEXT_PERSPECTIVES)
  if unknown:
    raise IntentsError(f"item-text intents offer the perspectives {ITEM_TEXT_PERSPECTIVES}, not {sorted(unknown)}")
  emb = np.asarray(item_embeddings, np.float32)
  n = len(split)
  out = np.zeros((n, len(perspectives), emb.shape[1]), np.float32)
  offsets, items = np.asarray(split.offsets), np.asarray(split.items)
  for a in range(0, n, chunk):  # chunks bound the temporaries
    b = min(a + chunk, n)
    for k, p in enumerate(perspectives):
      if p == "short-term":
        out[a:b, k] = emb[items[offsets[a + 1:b + 1] - 1]]
      else:
        sums = np.add.reduceat(emb[items[offsets[a]:offsets[b]]], offsets[a:b] - offsets[a], axis=0)
        out[a:b, k] = sums / np.diff(offsets[a:b + 1])[:, None]
  return out
