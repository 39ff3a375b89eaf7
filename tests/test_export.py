"""Exports: the official backbones' pickles (same split, 1-based plain-int lists; the project never reads pickle) and
RecBole atomic files (typed headers, tab-separated, our exact split; they parse again with our own reader)."""

import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from llm4sbr_jax import dataset, export, preprocess, raw, train
from experiments.configs import default

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
  paths = export.export_official(ds, str(tmp_path))
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
  export.export_official(_dataset(valid_size=0.1), str(tmp_path))
  paths = export.export_official(_dataset(valid_size=0), str(tmp_path))
  assert sorted(Path(p).name for p in paths) == ["all_train_seq.txt", "test.txt", "train.txt"]
  assert sorted(p.name for p in tmp_path.iterdir()) == ["all_train_seq.txt", "test.txt", "train.txt"]


def test_all_train_seq_is_one_full_training_sequence_per_session(tmp_path):
  ds = _dataset(valid_size=0)
  export.export_official(ds, str(tmp_path))
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


# ---------------------------------------------------------------------------------------------------------------
# RecBole atomic files


def _raw_rows(rows, **kwargs):
  keys, items, times = zip(*rows)
  return raw.RawData(keys=np.asarray(keys), items=np.asarray(items), times=np.asarray(times, np.int64),
                     order=np.arange(len(rows)), names={}, **kwargs)


def test_session_sequences_carry_known_click_times():
  rows = [("u", "a", 10), ("u", "b", 20), ("u", "c", 30), ("v", "c", 5), ("v", "a", 6)]
  for samples, expected in (("all", [[6, 6], [20, 20, 30]]), ("last", [[6, 6], [30, 30, 30]])):
    ds = preprocess.preprocess(_raw_rows(rows), "t", protocol="paper", test_size=1, valid_size=0, min_item_count=1,
                               samples=samples)
    sessions, items, offsets, times = export.session_sequences(ds)
    ids = np.asarray(ds.raw_item_ids)
    assert sessions.tolist() == [0, 1]  # v starts first
    assert [ids[items[a:b]].tolist() for a, b in zip(offsets[:-1], offsets[1:])] == [["c", "a"], ["a", "b", "c"]]
    assert [times[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:])] == expected


def _benchmark_samples(path):
  atomic = raw.read_atomic(str(path))
  assert atomic.types == {"session_id": "token", "item_id_list": "token_seq", "item_id": "token"}
  return [(fields[1].split(" "), fields[2]) for _, fields in atomic.rows]


def _split_samples(ds, split):
  s, ids = ds.splits[split], np.asarray(ds.raw_item_ids)
  return [(ids[s.prefix(i)].tolist(), ids[s.targets[i]]) for i in range(len(s))]


def test_recbole_files_headers_and_split_files(tmp_path):
  out = tmp_path / "mine"
  ds = _dataset(valid_size=0.1)
  export.export_recbole(ds, str(out))
  assert sorted(p.name for p in out.iterdir()) == ["mine.inter", "mine.item", "mine.test.inter", "mine.train.inter",
                                                    "mine.valid.inter", "mine.yaml"]
  lines = (out / "mine.inter").read_text().splitlines()
  assert lines[0] == "session_id:token\titem_id:token\ttimestamp:float" and all(len(x.split("\t")) == 3 for x in lines)
  assert (out / "mine.item").read_text().splitlines()[:2] == ["item_id:token\ttitle:token_seq",
                                                                f"{ds.raw_item_ids[1]}\t{ds.item_names[1]}"]
  for split in dataset.SPLITS:
    assert _benchmark_samples(out / f"mine.{split}.inter") == _split_samples(ds, split)
  config = (out / "mine.yaml").read_text()
  assert "benchmark_filename: [train, valid, test]" in config and "USER_ID_FIELD: session_id" in config
  longest = max(int(ds.splits[k].lengths.max()) for k in dataset.SPLITS)
  assert f"MAX_ITEM_LIST_LENGTH: {longest} " in config
  # Re-exported without a validation split: the stale valid file goes, RecBole is told of two files.
  export.export_recbole(_dataset(valid_size=0), str(out))
  assert not (out / "mine.valid.inter").exists()
  assert "benchmark_filename: [train, test]" in (out / "mine.yaml").read_text()


def test_recbole_refuses_raw_ids_with_whitespace(tmp_path):
  rows = [("u", "a b", 1), ("u", "c", 2), ("v", "a b", 3), ("v", "c", 4)]
  ds = preprocess.preprocess(_raw_rows(rows), "w", test_size=1, valid_size=0, min_item_count=1)
  with pytest.raises(export.ExportError, match=r"w: item 1 has the raw id 'a b'; RecBole tokens must be non-empty "
                     "and free of whitespace"):
    export.export_recbole(ds, str(tmp_path / "w"))


def _session_files(tmp_path, rng):
  """A RecBole session dataset (session ids, seconds, an extra column, lines shuffled) and its sessions."""
  sessions = {f"s{k}": [f"it{int(x)}" for x in rng.integers(0, 12, int(rng.integers(2, 7)))] for k in range(60)}
  lines = [f"{1_600_000_000 + 100 * k + j}\t{s}\t{item}\t{j % 5}"
           for k, (s, seq) in enumerate(sessions.items()) for j, item in enumerate(seq)]
  rng.shuffle(lines)
  (tmp_path / "shop.inter").write_text("timestamp:float\tsession_id:token\titem_id:token\trating:float\n" +
                                       "\n".join(lines) + "\n")
  return list(sessions.values())


def _user_files(tmp_path, rng):
  """A RecBole user dataset (user ids, millisecond timestamps; sessions 1 hour apart) and its 30-minute sessions."""
  lines, sessions = [], []
  for user in range(15):
    t = 1_650_000_000_000 + int(rng.integers(0, 10**9))
    for _ in range(int(rng.integers(2, 6))):
      seq = [f"it{int(x)}" for x in rng.integers(0, 12, int(rng.integers(2, 6)))]
      for item in seq:
        lines.append(f"u{user}\t{item}\t{t}")
        t += int(rng.integers(1, 300_000))  # under 5 minutes, millisecond resolution
      sessions.append(seq)
      t += 3_600_000
  (tmp_path / "shop.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\n" + "\n".join(lines) + "\n")
  return sessions


def _sequences(data):
  perm, offsets = preprocess.sessionize(data.keys, data.times, data.order)
  return sorted(data.items[perm[a:b]].tolist() for a, b in zip(offsets[:-1], offsets[1:]))


@pytest.mark.parametrize("shape", ["session", "user"])
def test_recbole_round_trip_prepares_trains_and_exports(tmp_path, shape):
  rng = np.random.default_rng(0)
  sessions = (_session_files if shape == "session" else _user_files)(tmp_path, rng)
  names = {f"it{k}": f"Thing number {k}" for k in range(12)}
  (tmp_path / "shop.item").write_text("item_id:token\tprice:float\ttitle:token_seq\n" +
                                      "".join(f"{i}\t{k}.5\t{n}\n" for k, (i, n) in enumerate(names.items())))
  valid = "5" if shape == "session" else "0"
  prepared = tmp_path / "prepared"
  gap = [] if shape == "session" else ["--session_gap_minutes", "30"]
  result = subprocess.run(
      [sys.executable, str(REPO / "experiments" / "prepare_data.py"), "--dataset", "recbole", "--inter",
       str(tmp_path / "shop.inter"), "--item", str(tmp_path / "shop.item"), "--min_item_count", "1",
       "--test_size", "0.2", "--valid_size", valid, "--out_dir", str(prepared)] + gap,
      capture_output=True, text=True, check=False)
  assert result.returncode == 0, result.stderr
  ds = dataset.load_dataset(str(prepared), verify=True)
  assert ds.source["files"]["inter"]["timestamp_unit"] == ("s" if shape == "session" else "ms")
  assert ds.extra_stats["sessions"] == len(sessions) and ds.item_names[1:] == [names[r] for r in ds.raw_item_ids[1:]]

  # One epoch of SR-GNN on it.
  c = default.get_config()
  c.dataset_dir, c.hidden, c.batch_size, c.num_epochs, c.progress = str(prepared), 16, 20, 1, False
  results = train.train_and_evaluate(c, str(tmp_path / "run"))
  assert results["epochs_run"] == 1 and 0 <= results["paper_protocol_best_test"]["metrics"]["hr@20"] <= 100

  # Exported back, the atomic files parse with our own reader to the same sessions, names and samples.
  out = tmp_path / "export" / "shop"
  result = subprocess.run([sys.executable, str(REPO / "experiments" / "export_data.py"), "--dataset_dir",
                           str(prepared), "--out_dir", str(out)], capture_output=True, text=True, check=False)
  assert result.returncode == 0, result.stderr
  assert f"data_path={out.parent}, dataset=shop" in result.stdout and f"n_node = {ds.num_items + 1}" in result.stdout
  back = raw.read_recbole(str(out / "shop.inter"), str(out / "shop.item"), "title")
  assert back.sessions_given and _sequences(back) == sorted(sessions)
  assert back.names == names
  for split in dataset.SPLITS:
    if len(ds.splits[split]):
      assert _benchmark_samples(out / f"shop.{split}.inter") == _split_samples(ds, split)
  assert (out / "shop.valid.inter").exists() == (valid != "0") and (out / "train.txt").exists()
