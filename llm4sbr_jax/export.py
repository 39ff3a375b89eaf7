"""Export of a processed dataset in the SR-GNN reference format (`train.txt`, `valid.txt`, `test.txt`,
`all_train_seq.txt`).

Each file is `pickle.dump((seqs, labels))`: `seqs` a list of prefixes (lists of 1-based item ids, click order) and
`labels` the list of next items, exactly the format that the official PyTorch code of SR-GNN, TAGNN, GCE-GNN and
S2-DHCN reads from `datasets/<name>/train.txt` and `test.txt`.

This is the one place the project writes pickle, and it never reads pickle: the export exists so that users can run
the official PyTorch implementations on the identical split (same samples, same item ids) and compare them with the
JAX models. Everything else in the project uses `.npy` and JSON.

`all_train_seq.txt` (read by the official GCE-GNN `build_graph.py`, and by S2-DHCN) is `pickle.dump(list of
sequences)`: the sequences our GCE-GNN builds its global graph from (`models/gcegnn.graph_sequences`: per session,
its longest training sample's prefix + target), so the official code builds the same graph.
"""

from __future__ import annotations

import os
import pickle

import numpy as np

from llm4sbr_jax.dataset import SPLITS, ProcessedDataset, Split, write_atomic
from llm4sbr_jax.models.gcegnn import graph_sequences


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


def export_srgnn(ds: ProcessedDataset, out_dir: str) -> list[str]:
  """Writes `train.txt`, `test.txt`, `all_train_seq.txt` and, when the validation split is not empty, `valid.txt`.

  Files are written to a temporary name and renamed. Returns the written paths. The embedding table size the
  official code needs (`n_node`) is `ds.num_items + 1`.
  """
  os.makedirs(out_dir, exist_ok=True)
  written = []
  for name in SPLITS:
    split = ds.splits.get(name, Split.empty())
    path = os.path.join(out_dir, f"{name}.txt")
    if name == "valid" and not len(split):
      if os.path.exists(path):  # A stale file from an earlier export with a validation split.
        os.remove(path)
      continue
    written.append(_dump(srgnn_lists(split), path))
  written.append(_dump(_lists(*graph_sequences(ds.splits["train"])), os.path.join(out_dir, "all_train_seq.txt")))
  return written
