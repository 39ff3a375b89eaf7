"""SR-GNN reference-format export: same split, 1-based plain-int lists; the project never reads pickle."""

import pickle
import re
from pathlib import Path

import numpy as np

from llm4sbr_jax import dataset, export, preprocess, raw

REPO = Path(__file__).resolve().parents[1]


def _dataset(valid_size):
  rng = np.random.default_rng(0)
  keys = np.asarray([f"u{k}" for k in rng.integers(0, 40, 600)])
  items = np.asarray([f"i{k}" for k in rng.integers(0, 30, 600)])
  data = raw.RawData(keys=keys, items=items, times=rng.integers(0, 10**6, 600), order=np.arange(600), names={})
  return preprocess.preprocess(data, "x", protocol="paper", test_size=0.2, valid_size=valid_size, min_item_count=2)


def _read(path):
  with open(path, "rb") as f:
    return pickle.load(f)  # The test reading back our own export; the library never loads pickle.


def test_export_round_trip_matches_the_splits(tmp_path):
  ds = _dataset(valid_size=0.1)
  paths = export.export_srgnn(ds, str(tmp_path))
  assert [Path(p).name for p in paths] == ["train.txt", "valid.txt", "test.txt", "all_train_seq.txt"]
  for name in dataset.SPLITS:
    seqs, labels = _read(tmp_path / f"{name}.txt")
    split = ds.splits[name]
    assert len(seqs) == len(labels) == len(split) > 0
    assert all(type(x) is int for seq in seqs[:50] for x in seq) and all(type(y) is int for y in labels)
    assert [seqs[i] for i in (0, len(seqs) - 1)] == [split.prefix(0).tolist(), split.prefix(len(split) - 1).tolist()]
    assert labels == split.targets.tolist()
    assert np.concatenate([np.asarray(s) for s in seqs]).tolist() == split.items.tolist()
    assert min(min(s) for s in seqs) >= 1 and max(labels) <= ds.num_items


def test_empty_valid_is_not_written_and_stale_valid_removed(tmp_path):
  export.export_srgnn(_dataset(valid_size=0.1), str(tmp_path))
  paths = export.export_srgnn(_dataset(valid_size=0), str(tmp_path))
  assert sorted(Path(p).name for p in paths) == ["all_train_seq.txt", "test.txt", "train.txt"]
  assert sorted(p.name for p in tmp_path.iterdir()) == ["all_train_seq.txt", "test.txt", "train.txt"]


def test_all_train_seq_is_one_full_training_sequence_per_session(tmp_path):
  ds = _dataset(valid_size=0)
  export.export_srgnn(ds, str(tmp_path))
  seqs = _read(tmp_path / "all_train_seq.txt")
  train = ds.splits["train"]
  assert len(seqs) == len(np.unique(train.sessions))
  longest = {}
  for i in range(len(train)):  # the longest training sample of each session, plus its target
    s = int(train.sessions[i])
    if s not in longest or len(train.prefix(i)) > len(longest[s]) - 1:
      longest[s] = train.prefix(i).tolist() + [int(train.targets[i])]
  assert sorted(seqs) == sorted(longest.values())
  assert all(type(x) is int for seq in seqs for x in seq)


def test_library_and_launchers_never_load_pickle():
  sources = list((REPO / "llm4sbr_jax").rglob("*.py")) + list((REPO / "experiments").rglob("*.py"))
  offenders = [str(p) for p in sources if re.search(r"pickle\.loads?\(|allow_pickle\s*=\s*True", p.read_text())]
  assert not offenders, f"pickle is loaded in {offenders}"
