"""Tests of llm4sbr_jax.intents: the stage-1 contract checks, intent localization and the item-text baseline."""

import os
import subprocess
import sys

import numpy as np
import pytest

import stage1_fixtures as fx
from conftest import REPO
from llm4sbr_jax import intents
from third_party_infer import manifest as manifest_lib


@pytest.fixture()
def setup(tmp_path):
  ds = fx.tiny_dataset(str(tmp_path / "ds"))
  out = str(tmp_path / "stage1")
  fx.fake_stage1(out, ds)
  return ds, out


def _manifest(out):
  return manifest_lib.read_json(os.path.join(out, "manifest.json"))


def _rewrite(out, file, array, update_checksum=True):
  """Replaces a shard file; with `update_checksum` the manifest is updated as if stage 1 had written it."""
  manifest_lib.save_npy(os.path.join(out, file), array)
  if update_checksum:
    m = _manifest(out)
    for s in m["shards"]:
      if s["file"] == file:
        s["sha256"] = manifest_lib.sha256_file(os.path.join(out, file))
    manifest_lib.write_json(os.path.join(out, "manifest.json"), m)


def test_loads_in_order(setup):
  ds, out = setup
  x = intents.localized_intents(out, ds, "test", f=0)
  s1 = intents.open_stage1(out, ds)
  assert x.shape == (len(ds.splits["test"]), 2, 8) and x.dtype == np.float32
  np.testing.assert_array_equal(x[:, 1], s1.answers("test", "short-term"))
  np.testing.assert_array_equal(s1.rows("test", "long-term"), np.arange(len(ds.splits["test"])))
  y = intents.localized_intents(out, ds, "test", perspectives=["short-term"], f=0)
  np.testing.assert_array_equal(y[:, 0], x[:, 1])


def test_other_fingerprint(setup, tmp_path):
  _, out = setup
  other = fx.tiny_dataset(str(tmp_path / "other"), seed=1)
  with pytest.raises(intents.IntentsError, match="fingerprint"):
    intents.localized_intents(out, other, "test")


def test_missing_rows(tmp_path):
  ds = fx.tiny_dataset(str(tmp_path / "ds"))
  out = str(tmp_path / "stage1")
  fx.fake_stage1(out, ds, rows=[1, 3, 4, 8])
  with pytest.raises(intents.IntentsError, match=r"missing rows: \d+ of \d+ .*pass rows="):
    intents.localized_intents(out, ds, "test", f=0)
  with pytest.raises(intents.IntentsError, match="missing rows: 1 of 2"):
    intents.localized_intents(out, ds, "test", f=0, rows=[3, 5])
  x = intents.localized_intents(out, ds, "test", f=0, rows=[8, 1])
  s1 = intents.open_stage1(out, ds)
  np.testing.assert_array_equal(x[:, 0], s1.answers("test", "long-term")[[3, 0]])


def test_missing_shard_file(setup):
  ds, out = setup
  os.remove(os.path.join(out, _manifest(out)["shards"][0]["file"]))
  with pytest.raises(intents.IntentsError, match="listed in manifest.json but missing"):
    intents.open_stage1(out, ds)


def test_overlapping_rows(setup):
  ds, out = setup
  m = _manifest(out)
  m["shards"].append(dict(m["shards"][0]))
  manifest_lib.write_json(os.path.join(out, "manifest.json"), m)
  with pytest.raises(intents.IntentsError, match="overlapping rows: test row 0"):
    intents.localized_intents(out, ds, "test")


def test_wrong_dim(setup):
  ds, out = setup
  file = _manifest(out)["shards"][0]["file"]
  _rewrite(out, file, np.zeros((4, 9), np.float32))
  with pytest.raises(intents.IntentsError, match=r"shape \(4, 9\), expected \[rows, dim=8\] \(wrong dim\)"):
    intents.localized_intents(out, ds, "test")


def test_nan_rows(setup):
  ds, out = setup
  file = _manifest(out)["shards"][2]["file"]  # shard 1 (rows 4..7), long-term
  emb = np.ones((4, 8), np.float32)
  emb[2, 3] = np.inf
  emb[3, 0] = np.nan
  _rewrite(out, file, emb)
  with pytest.raises(intents.IntentsError, match="2 row.s. with NaN/inf values, e.g. sample row 6"):
    intents.localized_intents(out, ds, "test")


def test_unknown_perspective(setup):
  ds, out = setup
  with pytest.raises(intents.IntentsError, match=r"perspective\(s\) \['mid-term'\] not in the stage-1 output"):
    intents.localized_intents(out, ds, "test", perspectives=["long-term", "mid-term"])


def test_checksum_mismatch(setup):
  ds, out = setup
  file = _manifest(out)["shards"][0]["file"]
  _rewrite(out, file, np.zeros((4, 8), np.float32), update_checksum=False)
  with pytest.raises(intents.IntentsError, match="checksum mismatch"):
    intents.localized_intents(out, ds, "test")
  assert intents.localized_intents(out, ds, "test", verify=False).shape[1] == 2


def test_item_embeddings_shape(setup):
  ds, out = setup
  m = _manifest(out)
  manifest_lib.save_npy(os.path.join(out, manifest_lib.ITEM_EMBEDDINGS), np.zeros((ds.num_items, 8), np.float32))
  m["item_embeddings"]["sha256"] = manifest_lib.sha256_file(os.path.join(out, manifest_lib.ITEM_EMBEDDINGS))
  manifest_lib.write_json(os.path.join(out, "manifest.json"), m)
  with pytest.raises(intents.IntentsError, match="wrong dim or item count"):
    intents.load_item_embeddings(out, ds)


def _reference(answers, items, f):
  """Brute-force eq. 3-4."""
  e = items[1:]
  sims = (answers / np.linalg.norm(answers, axis=1, keepdims=True)) @ (e / np.linalg.norm(e, axis=1,
                                                                                        keepdims=True)).T
  ids = np.argsort(-sims, axis=1)[:, :f]
  top = np.take_along_axis(sims, ids, 1)
  w = np.exp(top) / np.exp(top).sum(1, keepdims=True)
  return ids + 1, w, np.einsum("nf,nfd->nd", w, e[ids])


def test_localization_reference():
  rng = np.random.default_rng(0)
  items = rng.normal(size=(41, 6)).astype(np.float32)
  items[0] = 0
  answers = rng.normal(size=(23, 6)).astype(np.float32)
  for f in (1, 3, 5):
    ids, w, loc = intents.top_f(answers, items, f)
    ref_ids, ref_w, ref_loc = _reference(answers.astype(np.float64), items.astype(np.float64), f)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(w, ref_w, rtol=1e-5)
    np.testing.assert_allclose(loc, ref_loc, rtol=1e-5, atol=1e-6)
    assert ids.min() >= 1
  # f = 1: exactly the nearest item's embedding; f = 0: the raw answer.
  np.testing.assert_array_equal(intents.localize(answers, items, 1), items[_reference(answers, items, 1)[0][:, 0]])
  np.testing.assert_array_equal(intents.localize(answers, items, 0), answers)
  # Chunked (with a padded last chunk) equals unchunked.
  np.testing.assert_allclose(intents.localize(answers, items, 5, chunk_size=4), intents.localize(answers, items, 5),
                             rtol=1e-6)
  with pytest.raises(ValueError, match="f=41"):
    intents.localize(answers, items, 41)


def test_padding_row_never_selected():
  items = np.array([[0, 0], [1, 0], [0.9, 0.1]], np.float32)
  ids, _, _ = intents.top_f(np.array([[-1, -1]], np.float32), items, 2)
  assert sorted(ids[0].tolist()) == [1, 2]


def test_cache_per_f(setup):
  ds, out = setup
  x3 = intents.localized_intents(out, ds, "test", f=3)
  cached = sorted(os.listdir(os.path.join(out, "localized")))
  assert len(cached) == 2 and all(".f3." in c for c in cached)
  s1 = intents.open_stage1(out, ds)
  ref = intents.localize(s1.answers("test", "long-term"), s1.item_embeddings(), 3)
  np.testing.assert_allclose(x3[:, 0], ref, rtol=1e-6)
  np.testing.assert_array_equal(intents.localized_intents(out, ds, "test", f=3), x3)
  intents.localized_intents(out, ds, "test", f=1)
  assert len(os.listdir(os.path.join(out, "localized"))) == 4


def test_item_text_intents(tmp_path):
  ds = fx.tiny_dataset(str(tmp_path / "ds"))
  emb = np.random.default_rng(0).normal(size=(ds.num_items + 1, 5)).astype(np.float32)
  split = ds.splits["train"]
  x = intents.item_text_intents(emb, split, chunk=3)
  assert x.shape == (len(split), 2, 5)
  for i in range(len(split)):
    np.testing.assert_allclose(x[i, 0], emb[split.prefix(i)].mean(0), rtol=1e-5)
    np.testing.assert_array_equal(x[i, 1], emb[split.prefix(i)[-1]])


def test_answers_naming_an_item_take_its_embedding(setup):
  ds, out = setup
  before = {f: intents.localized_intents(out, ds, "test", f=f) for f in (0, 3)}  # fills the per-f cache
  n = len(ds.splits["test"])
  named = {"long-term": np.zeros(n, np.int32), "short-term": np.zeros(n, np.int32)}
  named["long-term"][[0, 5]] = [7, ds.num_items]
  named["short-term"][[5]] = [2]
  by_shard = {s["file"]: named[s["perspective"]][s["row_start"]:s["row_end"]] for s in _manifest(out)["shards"]}
  manifest = fx.add_named_items(out, by_shard)
  assert manifest["stats"]["named_item_answers"] == {"long-term": 2, "short-term": 1}
  s1 = intents.open_stage1(out, ds)
  np.testing.assert_array_equal(s1.named_items("test", "long-term"), named["long-term"])
  items = s1.item_embeddings()
  for f in (0, 3):
    x = intents.localized_intents(out, ds, "test", f=f)
    for k, p in enumerate(("long-term", "short-term")):
      hit = named[p] > 0
      np.testing.assert_array_equal(x[hit, k], items[named[p][hit]])
      np.testing.assert_array_equal(x[~hit, k], before[f][~hit, k])
  sub = intents.localized_intents(out, ds, "test", f=3, rows=[5, 1])
  np.testing.assert_array_equal(sub[0, 1], items[2])


def test_named_items_out_of_range(setup):
  ds, out = setup
  by_shard = {s["file"]: np.zeros(s["num_rows"], np.int32) for s in _manifest(out)["shards"]}
  first = _manifest(out)["shards"][0]["file"]
  by_shard[first][1] = ds.num_items + 1
  fx.add_named_items(out, by_shard)
  with pytest.raises(intents.IntentsError, match=rf"long-term.items.npy: expected 4 integer item ids in "
                                                 rf"0..{ds.num_items} \(0 = the answer names no item\)"):
    intents.open_stage1(out, ds)


@pytest.mark.parametrize("launcher,config", [("train.py", "llm4sbr.py"), ("paper.py", "fsweep.py")])
def test_launcher_stage1_of_another_dataset_is_one_error_line(launcher, config, tmp_path):
  ds = fx.tiny_dataset(str(tmp_path / "ds"))
  other = fx.tiny_dataset(str(tmp_path / "other"), seed=1)
  fx.fake_stage1(str(tmp_path / "stage1"), other)
  result = subprocess.run(
      [sys.executable, str(REPO / "experiments" / launcher), "--config", str(REPO / "experiments" / "configs" / config),
       f"--config.dataset_dir={tmp_path / 'ds'}", f"--config.intents.stage1_dir={tmp_path / 'stage1'}",
       f"--workdir={tmp_path / 'run'}"], capture_output=True, text=True, timeout=300)
  assert result.returncode != 0 and "Traceback" not in result.stderr
  assert result.stderr.strip().splitlines()[-1] == (
      f"error: {tmp_path / 'stage1' / 'manifest.json'}: made from dataset fingerprint {other.fingerprint[:12]}, but "
      f"the dataset 'tiny' has fingerprint {ds.fingerprint[:12]}; rerun stage 1 on it")
