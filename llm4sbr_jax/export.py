"""Export of a processed dataset for other code: the official backbones' files and RecBole atomic files.

Official code (`export_official`): `train.txt`, `valid.txt` (when not empty), `test.txt` and `all_train_seq.txt`.
Each split file is `pickle.dump((seqs, labels))`: `seqs` a list of prefixes (lists of 1-based item ids, click order)
and `labels` the list of next items, exactly the format that the official PyTorch code of SR-GNN, TAGNN, GCE-GNN and
S2-DHCN reads from `datasets/<name>/train.txt` and `test.txt`. `all_train_seq.txt` (read by the official GCE-GNN
`build_graph.py`) is `pickle.dump(list of sequences)`: the sequences our GCE-GNN builds its global graph from
(`models/gcegnn.graph_sequences`: per session, its longest training sample's prefix + target), so the official code
builds the same graph. This is the one place the project writes pickle, and it never reads pickle: the files exist
only so that users can run the official implementations on the identical split (same samples, same item ids).

RecBole (`export_recbole`), tab-separated with RecBole's typed headers, items as their raw ids (tokens), files named
after the output directory `<token>` (RecBole reads `<data_path>/<token>/<token>.<suffix>`):

    <token>.inter        session_id:token  item_id:token  timestamp:float   the sessions, one click per row
    <token>.item         item_id:token  title:token_seq                     the item names (tabs, line breaks ->
                                                                            spaces)
    <token>.train.inter  session_id:token  item_id_list:token_seq  item_id:token   one sample per row: our exact
    <token>.valid.inter  (when the validation split is not empty)                  split, for RecBole's
    <token>.test.inter                                                             `benchmark_filename`
    <token>.yaml         the RecBole settings that read the split files

A session's `.inter` sequence is its longest sample's prefix followed by that sample's target: the whole processed
session (under the temporal protocol, a session whose longest sample is a test or validation sample lacks the prefix
items that protocol removed). A click's timestamp is its time where the dataset stores one (a sample's target
time), otherwise the earliest time stored for a later click of the session (a session's first click: its second
click's time); rows are in click order and both RecBole and `raw.read_recbole` keep file order among equal times.
"""

from __future__ import annotations

import csv
import io
import os
import pickle
import re

import numpy as np

from llm4sbr_jax.dataset import SPLITS, ProcessedDataset, Split, offsets_from_counts, write_atomic
from llm4sbr_jax.models.gcegnn import graph_sequences

FORMATS = ("official", "recbole")
_LINE_BREAKS = re.compile(r"[\t\r\n]")  # a name's tabs and line breaks become spaces in the one-line .item rows


class ExportError(ValueError):
  """A processed dataset cannot be written in the asked format."""


def _lists(items: np.ndarray, offsets: np.ndarray) -> list[list[int]]:
  """CSR sequences as plain Python lists of ints."""
  items, offsets = np.asarray(items, np.int64), np.asarray(offsets, np.int64)
  return [p.tolist() for p in np.split(items, offsets[1:-1])] if len(offsets) > 1 else []


def srgnn_lists(split: Split) -> tuple[list[list[int]], list[int]]:
  """A split as SR-GNN's `(seqs, labels)`: plain Python lists of ints."""
  return _lists(split.items, split.offsets), np.asarray(split.targets, np.int64).tolist()


def _dump(obj, path: str) -> str:
  write_atomic(path, pickle.dumps(obj, protocol=4))  # Readable by every Python 3 the official code runs on.
  return path


def _remove_stale(path: str) -> None:
  """Removes a file left by an earlier export whose validation split was not empty."""
  if os.path.exists(path):
    os.remove(path)


def export_official(ds: ProcessedDataset, out_dir: str) -> list[str]:
  """Writes `train.txt`, `test.txt`, `all_train_seq.txt` and, when the validation split is not empty, `valid.txt`.

  Files are written to a temporary name and renamed. Returns the written paths. The embedding table size the
  official code needs (`n_node`) is `ds.num_items + 1` (S2-DHCN: `ds.num_items`).
  """
  os.makedirs(out_dir, exist_ok=True)
  written = []
  for name in SPLITS:
    split = ds.splits.get(name, Split.empty())
    path = os.path.join(out_dir, f"{name}.txt")
    if name == "valid" and not len(split):
      _remove_stale(path)
      continue
    written.append(_dump(srgnn_lists(split), path))
  written.append(_dump(_lists(*graph_sequences(ds.splits["train"])), os.path.join(out_dir, "all_train_seq.txt")))
  return written


# ----------------------------------------------------------------------------------------------------------------
# RecBole atomic files


def _suffix_min(values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
  """Per segment `[offsets[k], offsets[k + 1])`, every position's minimum over itself and the positions after it."""
  levels, rank = np.unique(values, return_inverse=True)
  segment = np.repeat(np.arange(len(offsets) - 1, dtype=np.int64), np.diff(offsets))[::-1]
  # Reversed, every key of a segment lies below every key of the segments before it (their index is larger), so the
  # running minimum restarts at each segment's first (= last) position.
  key = segment * len(levels) + rank.reshape(-1)[::-1]
  return levels[(np.minimum.accumulate(key) - segment * len(levels))[::-1]]


def session_sequences(ds: ProcessedDataset) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """Every session of `ds` as its longest sample's prefix + target, with a timestamp per click (module docstring).

  Returns:
    (session ids int64 [K] ascending, items int64 [T], offsets int64 [K + 1], times int64 [T]).
  """
  splits = [ds.splits.get(k, Split.empty()) for k in SPLITS]
  pool = Split(items=np.concatenate([np.asarray(s.items, np.int32) for s in splits]),
               offsets=offsets_from_counts(np.concatenate([s.lengths for s in splits])),
               targets=np.concatenate([np.asarray(s.targets, np.int32) for s in splits]),
               sessions=np.concatenate([np.asarray(s.sessions, np.int64) for s in splits]),
               times=np.concatenate([np.asarray(s.times, np.int64) for s in splits]))
  items, offsets = graph_sequences(pool)
  sessions, which = np.unique(pool.sessions, return_inverse=True)
  # A sample's target sits at position len(prefix) of its session's sequence; unknown positions start at the latest
  # time, and each session's last position is always known (its longest sample's target).
  times = np.full(len(items), pool.times.max(initial=0), np.int64)
  np.minimum.at(times, offsets[which.reshape(-1)] + pool.lengths, pool.times)
  return sessions, items, offsets, _suffix_min(times, offsets)


def _check_tokens(ds: ProcessedDataset) -> None:
  for item, raw in enumerate(ds.raw_item_ids[1:], 1):
    if not raw or any(c.isspace() for c in raw):
      raise ExportError(f"{ds.name}: item {item} has the raw id {raw!r}; RecBole tokens must be non-empty and "
                        "free of whitespace (item_id_list:token_seq is space-separated)")


def _write_tsv(path: str, header: tuple[str, ...], rows) -> str:
  """A tab-separated file with RecBole's typed header; a field holding a double quote is quoted, as pandas reads it."""
  buf = io.StringIO()
  buf.write("\t".join(header) + "\n")
  csv.writer(buf, delimiter="\t", lineterminator="\n").writerows(rows)
  write_atomic(path, buf.getvalue().encode("utf-8"))
  return path


def recbole_config(ds: ProcessedDataset, token: str, split_names: list[str]) -> str:
  """RecBole settings (YAML) that run a sequential model on the exported split files."""
  return "\n".join([
      f"# RecBole settings for {token} (written by experiments/export_data.py from dataset fingerprint "
      f"{ds.fingerprint[:12]}): our exact split, one sample per row; RecBole neither filters nor re-splits it.",
      f"dataset: {token}",
      "USER_ID_FIELD: session_id",
      "ITEM_ID_FIELD: item_id",
      "load_col: ~",
      f"benchmark_filename: [{', '.join(split_names)}]",
      "alias_of_item_id: [item_id_list]",
      f"MAX_ITEM_LIST_LENGTH: {ds.longest_prefix}  # the longest prefix, so that no prefix is cut",
      "train_neg_sample_args: ~  # full softmax (CE loss), as the session-based backbones train",
      "metrics: [Hit, MRR, NDCG]  # every test row is one sample: Hit@k is our HR@k",
      "topk: [5, 10, 20]",
      "valid_metric: MRR@20",
      ""])


def export_recbole(ds: ProcessedDataset, out_dir: str) -> list[str]:
  """Writes the RecBole atomic files (module docstring) into `out_dir`, named after its last path component.

  Returns the written paths. Raises `ExportError` when a raw item id cannot be a RecBole token.
  """
  _check_tokens(ds)
  token = os.path.basename(os.path.normpath(out_dir))
  os.makedirs(out_dir, exist_ok=True)
  path = lambda suffix: os.path.join(out_dir, f"{token}.{suffix}")
  raw = np.asarray(ds.raw_item_ids, dtype=object)
  sessions, items, offsets, times = session_sequences(ds)
  session_of = np.repeat(sessions, np.diff(offsets))
  written = [
      _write_tsv(path("inter"), ("session_id:token", "item_id:token", "timestamp:float"),
                 zip(session_of.tolist(), raw[items].tolist(), times.tolist())),
      _write_tsv(path("item"), ("item_id:token", "title:token_seq"),
                 ((r, _LINE_BREAKS.sub(" ", n)) for r, n in zip(ds.raw_item_ids[1:], ds.item_names[1:])))]
  split_names = []
  for name in SPLITS:
    split = ds.splits.get(name, Split.empty())
    if name == "valid" and not len(split):
      _remove_stale(path("valid.inter"))
      continue
    prefixes = (" ".join(raw[p].tolist()) for p in _lists(split.items, split.offsets))
    written.append(_write_tsv(path(f"{name}.inter"), ("session_id:token", "item_id_list:token_seq", "item_id:token"),
                              zip(np.asarray(split.sessions).tolist(), prefixes, raw[split.targets].tolist())))
    split_names.append(name)
  write_atomic(path("yaml"), recbole_config(ds, token, split_names).encode("utf-8"))
  return written + [path("yaml")]
