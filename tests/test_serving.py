"""Serving a trained workdir: the offline evaluation's ranks and scores, one compile per bucket, item resolution,
intent sources, explanations and the workdir errors (tiny models trained here on synthetic data)."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import stage1_fixtures as fx
from conftest import REPO
from llm4sbr_jax import dataset, graphs, intents, scoring, serving, synthetic, tasks, train
from experiments.configs import default


def _config(data_dir, stage1_dir=None):
  c = default.get_config()
  c.dataset_dir = str(data_dir)
  c.hidden, c.batch_size, c.num_epochs, c.progress = 16, 20, 2, False
  if stage1_dir:
    c.llm4sbr, c.intents.source, c.intents.stage1_dir = True, "item_text", str(stage1_dir)
  return c


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """A synthetic dataset, an items-only stage 1 and a trained LLM4SBR(SR-GNN, item text) workdir."""
  root = tmp_path_factory.mktemp("serving")
  data_dir = root / "data"
  dataset.save_dataset(synthetic.make_dataset(60, 400, 4.0, 12, seed=0), str(data_dir))
  ds = dataset.load_dataset(str(data_dir))
  fx.fake_stage1(str(root / "stage1"), ds, dim=8)
  train.train_and_evaluate(_config(data_dir, root / "stage1"), str(root / "llm4sbr"))
  return {"data": data_dir, "stage1": root / "stage1", "ds": ds, "llm4sbr": str(root / "llm4sbr")}


@pytest.fixture(scope="module")
def recs(runs):
  """Recommenders (buckets of 4 and 16 sessions) shared by the tests so each compiles once: the trained LLM4SBR
  run and a freshly initialised bare SR-GNN on the same data (training it too would only add compile time)."""
  c = _config(runs["data"])
  task = tasks.build_task(c, runs["ds"])
  params = jax.jit(task.init)(jax.random.PRNGKey(1), serving.template_batch(task, graphs.Budget(1, 8, 8, 8)))
  bare = serving.Run(workdir="(initialised)", config=c, dataset=runs["ds"], task=task, params=jax.device_get(params),
                     epoch=0, best_epoch=0, label="SR-GNN")
  return {name: serving.Recommender(run, buckets=(4, 16), max_k=30)
          for name, run in (("bare", bare), ("llm4sbr", serving.load_run(runs["llm4sbr"])))}


def _dense(scores):
  return scores.dense() if isinstance(scores, scoring.PaddedScores) else scores


def _offline_scores(run: serving.Run, split: str) -> np.ndarray:
  """Scores [N, n] of every sample of `split` the way the offline evaluation computes them (the task's terms on
  batches packed with the training budget)."""
  cfg, ds = run.config, run.dataset
  g = graphs.build_session_graphs(ds.splits[split])
  budget = graphs.compute_budget([graphs.build_session_graphs(s) for s in ds.splits.values() if len(s)],
                                 cfg.batch_size, cfg.budget_std)
  side = tasks.intent_arrays(cfg, ds)[split] if run.task.side_shape else None
  terms = jax.jit(lambda p, b: _dense(run.task.terms(p, b, False, None)[0]))
  out = np.zeros((len(g), ds.num_items), np.float32)
  for batch, _ in graphs.iterate_batches(g, np.arange(len(g)), budget, 1, side,
                                         run.task.node_tables):
    batch = jax.tree_util.tree_map(lambda x: x[0], batch)
    scores = np.asarray(terms(run.params, batch))
    real = np.asarray(batch.graph_mask)
    out[np.asarray(batch.sample_index)[real]] = scores[real]
  return out


@pytest.mark.parametrize("name", ["bare", "llm4sbr"])
def test_served_ranks_and_scores_equal_the_offline_evaluation(runs, recs, name):
  rec = recs[name]
  run = rec.run
  offline = _offline_scores(run, "test")
  test = run.dataset.splits["test"]
  # Ranks of every test target through the serving path = the offline evaluation's: for the trained run the ranks
  # its evaluation saved at the selected epoch, for the initialised one the ranks of the offline scores.
  ranks = serving.evaluate_split(rec, "test", progress=False)
  if name == "llm4sbr":
    with open(os.path.join(runs[name], "results.json"), encoding="utf-8") as f:
      assert run.epoch == run.best_epoch == json.load(f)["selected"]["epoch"]
    np.testing.assert_array_equal(ranks, np.load(os.path.join(runs[name], train.RANKS_FILE)))
  target = offline[np.arange(len(test)), np.asarray(test.targets) - 1]
  np.testing.assert_array_equal(ranks, 1 + np.sum(offline > target[:, None], axis=1))
  # Scores: sessions given as raw ids, answered in mixed batches, equal the offline scores.
  given = [[run.dataset.raw_item_ids[i] for i in test.prefix(j)] for j in range(len(test))]
  rows = rec.recommend(rec.resolve(given), k=10)
  for j, row in enumerate(rows):
    ids = [int(item["item_id"]) for item in row["items"]]  # synthetic raw id = item id
    served = np.asarray([item["score"] for item in row["items"]])
    np.testing.assert_allclose(served, offline[j, np.asarray(ids) - 1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(served, np.sort(offline[j])[::-1][:10], rtol=1e-5, atol=1e-5)
  assert np.std(offline) > 1e-3


def test_compile_count_stays_at_the_number_of_buckets(recs):
  rec = recs["llm4sbr"]
  run = rec.run
  rng = np.random.default_rng(0)
  for _ in range(25):  # varied batch sizes (above the largest bucket too) and session lengths up to the maximum
    n = int(rng.integers(1, 40))
    sessions = [rng.integers(1, run.dataset.num_items + 1, size=int(rng.integers(1, rec.max_length + 1)))
                for _ in range(n)]
    rows = rec.recommend([s.astype(np.int32) for s in sessions], k=int(rng.integers(1, 31)))
    assert len(rows) == n
  assert dict(rec.scorer.traces) == {4: 1, 16: 1}


def test_batches_are_cut_to_fit_the_budgets(recs):
  rec = recs["bare"]
  longest = [np.arange(1, rec.max_length + 1, dtype=np.int32) % rec.run.dataset.num_items + 1] * 16
  split = dataset.Split.from_prefixes(longest, [1] * 16, [0] * 16, [0] * 16)
  assert graphs.take_fitting(graphs.build_session_graphs(split), np.arange(16), rec.scorer.budgets[1]) < 16
  alone = rec.scorer.score(longest[:1])[0]
  together = rec.scorer.score(longest)[0]  # 16 longest sessions exceed the 16-session budget: cut, same answers
  np.testing.assert_allclose(together, np.repeat(alone, 16, axis=0), rtol=1e-5, atol=1e-6)
  assert dict(rec.scorer.traces) == {4: 1, 16: 1}


def test_chunked_scoring_config_serves_the_same_items(recs):
  rec = recs["bare"]
  cfg = rec.run.config.copy_and_resolve_references()
  cfg.score_chunk = 16  # the run's scores consumed in item chunks (large catalogues): same answers
  chunked = serving.Recommender(dataclasses.replace(rec.run, config=cfg, task=tasks.build_task(cfg, rec.run.dataset)),
                                buckets=(16,), max_k=30)
  test = rec.run.dataset.splits["test"]
  sessions, targets = [test.prefix(j) for j in range(16)], np.asarray(test.targets[:16], np.int32)
  want, got = rec.scorer.score(sessions, None, targets), chunked.scorer.score(sessions, None, targets)
  np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(got[1], want[1])
  np.testing.assert_array_equal(got[2], want[2])


def test_catalog_resolves_ids_and_names_with_clear_errors(runs):
  ds = runs["ds"]
  names = list(ds.item_names)
  names[7] = names[8]  # a duplicated name
  cat = serving.Catalog(dataset.ProcessedDataset("dup", names, ds.raw_item_ids, ds.splits))
  got = cat.resolve([["3", 4, names[5], names[6].upper()]], max_length=10)
  np.testing.assert_array_equal(got[0], [3, 4, 5, 6])
  with pytest.raises(serving.ServingError, match=r"sessions\[0\]\[1\]: unknown item 'item 5 \(clustr 0\)'.*"
                                                 r"close matches: 'item 5 \(cluster 0\)' \[5\]"):
    cat.resolve([["3", "item 5 (clustr 0)"]], 10)
  with pytest.raises(serving.ServingError, match=r"belongs to 2 items \(raw ids 7, 8\); give a raw id"):
    cat.resolve([[names[8]]], 10)
  for bad, match in [("x", "expected a list of sessions"), ([], "no session"), ([["3"], "4"], r"sessions\[1\]: "
                     "expected a list"), ([[]], "empty session"), ([["3"] * 11], "11 items; .* at most 10"),
                     ([["3", 2.5]], r"\[0\]\[1\]: expected an item id or name .* got float"),
                     ([[True]], "got bool"), ([[None]], "got NoneType")]:
    with pytest.raises(serving.ServingError, match=match):
      cat.resolve(bad, 10)


def test_intent_sources_and_explain(runs, recs):
  rec = recs["llm4sbr"]
  run = rec.run
  assert rec.intents.source == "item_text"
  session = np.asarray([3, 9, 9, 14], np.int32)
  row = rec.recommend([session], k=5, explain=True)[0]
  assert [p["perspective"] for p in row["intents"]] == ["long-term", "short-term"]
  for p in row["intents"]:
    weights = [item["weight"] for item in p["items"]]
    assert len(weights) == run.config.intents.f and abs(sum(weights) - 1) < 1e-5 and weights == sorted(weights)[::-1]
  assert row["intents"][1]["items"][0]["item_id"] == "14"  # short-term item text = the last click's own name
  assert "intents" not in rec.recommend([session], k=5)[0]
  # A run is served with the intents it was trained on, and a bare model takes none.
  items = np.asarray(intents.load_item_embeddings(str(runs["stage1"]), run.dataset))

  class Fixed:
    """Answers 'a' (embedding all ones) for the long term; the short term names item 5 by its id."""

    def answer(self, names, raw_ids, perspectives):
      named = np.zeros((len(names), len(perspectives)), np.int64)
      named[:, 1] = 5
      return [["a", "5"]] * len(names), np.ones((len(names), len(perspectives), 8), np.float32), named

  llm = serving.LLMIntents(Fixed(), items, run.config.perspectives, 3, rec.catalog)
  with pytest.raises(serving.ServingError, match="trained with 'item_text' intents; serving it with 'llm'"):
    serving.Recommender(run, llm, buckets=(1,))
  with pytest.raises(serving.ServingError, match="takes no intents"):
    serving.Recommender(recs["bare"].run, llm, buckets=(1,))
  with pytest.raises(serving.ServingError, match="bare backbone: it has no intents to explain"):
    recs["bare"].check_explain(True)
  # LLM intents are localized as stage 2 localizes stored answers (eq. 3-4, top-f), whatever the batch size, and
  # an answer that names an item by its id is that item's embedding.
  live = llm.compute([session] * 3)
  np.testing.assert_allclose(live.vectors[:, 0], intents.localize(np.ones((3, 8), np.float32), items, 3),
                             rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(live.vectors[:, 1], np.repeat(items[5:6], 3, axis=0))
  explained = serving.explain_intents(rec.catalog, items, live, run.config.perspectives, 3)
  assert explained[0][1]["items"] == [{"item_id": "5", "name": run.dataset.item_names[5], "weight": 1.0}]
  assert explained[0][0]["answer"] == "a" and len(explained[0][0]["items"]) == 3


def test_workdir_errors(runs, tmp_path):
  with pytest.raises(serving.ServingError, match="results.json: cannot read"):
    serving.load_run(str(tmp_path / "nothing"))
  work = tmp_path / "copy"
  shutil.copytree(runs["llm4sbr"], work)
  kept = sorted(int(d) for d in os.listdir(work / "checkpoints"))
  shutil.rmtree(work / "checkpoints" / str(kept[0]))
  results = json.loads((work / "results.json").read_text())
  results["selected"]["epoch"] = kept[0]
  (work / "results.json").write_text(json.dumps(results))
  with pytest.raises(serving.ServingError, match=rf"best validation epoch {kept[0]} is not kept \(kept: "
                                                 rf"\[{kept[1]}\].*--epoch=latest"):
    serving.load_run(str(work))
  assert serving.load_run(str(work), "latest").epoch == kept[1]
  other = tmp_path / "other"
  dataset.save_dataset(synthetic.make_dataset(60, 400, 4.0, 12, seed=1), str(other))
  with pytest.raises(serving.ServingError, match="was trained on .*pass the run's dataset with --dataset_dir"):
    serving.load_run(str(work), "latest", dataset_dir=str(other))
  with pytest.raises(serving.ServingError, match="is not a directory here; pass --dataset_dir"):
    serving.load_run(str(work), "latest", dataset_dir=str(tmp_path / "missing"))
  with pytest.raises(serving.ServingError, match="max_length 99: must lie in 1..12"):
    serving.Recommender(serving.load_run(runs["llm4sbr"]), buckets=(1,), max_length=99)
  shutil.rmtree(work / "checkpoints")
  with pytest.raises(serving.ServingError, match="checkpoints: no checkpoint"):
    serving.load_run(str(work))


def test_a_run_still_training_is_served_from_its_best_epoch_so_far(runs, tmp_path):
  """Before results.json exists (run.json is written when training starts), and after an extension that results.json
  does not know of yet, the best epoch comes from metrics.jsonl."""
  work = tmp_path / "training"
  shutil.copytree(runs["llm4sbr"], work)
  history = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
  first_best = int(max(history, key=lambda h: h["valid"]["hr@20"])["epoch"])
  (work / "results.json").unlink()
  run = serving.load_run(str(work))
  assert run.epoch == first_best and run.label == "LLM4SBR(SR-GNN)"
  stale = json.loads((Path(runs["llm4sbr"]) / "results.json").read_text())
  stale["epochs_run"], stale["selected"]["epoch"] = 1, 1 - first_best  # written before the last epoch existed
  (work / "results.json").write_text(json.dumps(stale))
  assert serving.best_epoch(str(work), stale) == first_best


def test_recommend_launcher_errors_are_one_line(runs):
  result = subprocess.run([sys.executable, str(REPO / "experiments" / "recommend.py"), "--workdir", runs["llm4sbr"],
                           "--session", "3|item 5 (clustr 0)"], capture_output=True, text=True, check=False)
  lines = result.stderr.strip().splitlines()
  assert result.returncode == 1 and len(lines) == 1, result.stderr
  assert lines[0].startswith("error: --session[0][1]: unknown item 'item 5 (clustr 0)'") and "close matches" in lines[0]
