"""Stage 1 for live sessions (third_party_infer/live.py) with tiny locally built models: the training run's answers
and embeddings again, refusals of another model / encoder / prompt, and an LLM4SBR run trained on LLM intents served
with live LLM intents = its offline evaluation."""

import json
import shutil

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import stage1_fixtures as fx  # pylint: disable=g-import-not-at-top
from llm4sbr_jax import graphs, intents, metrics, serving, tasks
from experiments.configs import default
from third_party_infer import live, run
from third_party_infer.manifest import Stage1Error

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  """A tiny dataset, the tiny models and a stage-1 job over its train and test splits."""
  root = tmp_path_factory.mktemp("live")
  ds = fx.tiny_dataset(str(root / "ds"))
  llm_dir, enc_dir = fx.tiny_models(str(root))
  stage1 = root / "stage1"
  assert run.main(["--dataset_dir", str(root / "ds"), "--out_dir", str(stage1), "--llm", llm_dir, "--encoder",
                   enc_dir, "--splits", "train,test", "--batch_size", "4", "--num_threads", "1"]) == 0
  return {"root": root, "ds": ds, "llm": llm_dir, "encoder": enc_dir, "stage1": str(stage1)}


def _live(env, stage1=None, **kw):
  return live.LiveStage1(stage1 or env["stage1"], env["ds"].item_names, env["ds"].raw_item_ids, **kw)


def test_live_answers_equal_the_stage1_job(env):
  ds, s1 = env["ds"], intents.open_stage1(env["stage1"], env["ds"])
  answerer = _live(env)
  test = ds.splits["test"]
  rows = [0, 3, 5]
  names = [[ds.item_names[i] for i in test.prefix(r)] for r in rows]
  raw_ids = [[ds.raw_item_ids[i] for i in test.prefix(r)] for r in rows]
  answers, emb, named = answerer.answer(names, raw_ids, s1.perspectives)
  assert emb.shape == (3, 2, s1.dim) and named.shape == (3, 2) and answerer.last_stats["prompts"] == 6
  covered = s1.rows("test", "long-term")
  for k, p in enumerate(s1.perspectives):
    records = s1.answer_records("test", p)
    stored = s1.answers("test", p)
    for b, r in enumerate(rows):
      assert answers[b][k] == records[r]["answer"]
      np.testing.assert_allclose(emb[b, k], stored[int(np.flatnonzero(covered == r)[0])], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(named[:, k], s1.named_items("test", p)[[int(np.flatnonzero(covered == r)[0])
                                                                            for r in rows]])
  check = answerer.verify()
  assert check["max_embedding_diff"] < 1e-5 and isinstance(check["answer"], str)


def _copy(env, name):
  out = env["root"] / name
  shutil.rmtree(out, ignore_errors=True)
  shutil.copytree(env["stage1"], out)
  return out


def test_refuses_other_models_and_changed_prompts(env):
  with pytest.raises(Stage1Error, match="stage 1 used the LLM .* not 'other/llm'"):
    _live(env, llm="other/llm")
  with pytest.raises(Stage1Error, match="stage 1 used the encoder .* not 'other/encoder'"):
    _live(env, encoder="other/encoder")
  changed = _copy(env, "changed")
  manifest = json.loads((changed / "manifest.json").read_text())
  manifest["prompt"]["task"] += " Be brief."
  (changed / "manifest.json").write_text(json.dumps(manifest))
  with pytest.raises(Stage1Error, match="prompt rebuilt from the manifest hashes to"):
    _live(env, str(changed))
  manifest = json.loads((env["root"] / "stage1" / "manifest.json").read_text())
  manifest["llm"]["trust_remote_code"] = True
  (changed / "manifest.json").write_text(json.dumps(manifest))
  with pytest.raises(Stage1Error, match="pass --trust_remote_code"):
    _live(env, str(changed))
  manifest["llm"] = None
  (changed / "manifest.json").write_text(json.dumps(manifest))
  with pytest.raises(Stage1Error, match="an --items_only job: it has no LLM"):
    _live(env, str(changed))


def test_verify_refuses_outputs_it_does_not_reproduce(env):
  other = _copy(env, "other_items")
  table = np.load(other / "item_embeddings.npy")
  table[1:5] += 0.01
  np.save(other / "item_embeddings.npy", table)
  with pytest.raises(Stage1Error, match="encoder does not reproduce item_embeddings.npy"):
    _live(env, str(other)).verify()
  other = _copy(env, "other_answers")
  manifest = json.loads((other / "manifest.json").read_text())
  path = other / manifest["shards"][0]["answers_file"]
  lines = path.read_text().splitlines()
  first = json.loads(lines[0])
  first["raw"] = "something else"
  path.write_text("\n".join([json.dumps(first)] + lines[1:]) + "\n")
  with pytest.raises(Stage1Error, match="the LLM answers .* where stage 1 answered 'something else'"):
    _live(env, str(other)).verify()


def test_llm_intent_model_served_with_live_llm_ranks_as_offline(env):
  """An LLM4SBR(SR-GNN) on LLM intents, served with live LLM intents, ranks every test target as the offline path
  ranks it with the stored stage-1 intents (the trained-run anchor is tests/test_serving.py)."""
  c = default.get_config()
  c.dataset_dir, c.llm4sbr, c.intents.stage1_dir, c.intents.f, c.hidden = str(env["root"] / "ds"), True, \
      env["stage1"], 3, 8
  ds = env["ds"]
  task = tasks.build_task(c, ds)
  params = jax.device_get(jax.jit(task.init)(jax.random.PRNGKey(0),
                                             serving.template_batch(task, graphs.Budget(1, 8, 8, 8))))
  run_ = serving.Run(workdir="(initialised)", config=c, dataset=ds, task=task, params=params, epoch=0, best_epoch=0,
                     label="LLM4SBR(SR-GNN)")
  rec = serving.Recommender(run_, serving.make_llm_intents(run_, _live(env)), buckets=(4,))
  assert rec.intents.source == "llm"
  served = serving.evaluate_split(rec, "test", progress=False)
  test = graphs.build_session_graphs(ds.splits["test"])
  stored = tasks.intent_arrays(c, ds)["test"]  # the stored answers, localized as training localizes them
  offline = np.zeros(len(test), np.int32)
  rank = jax.jit(lambda p, b: metrics.target_ranks(task.terms(p, b, False, None)[0], b.targets))
  for batch, _ in graphs.iterate_batches(test, np.arange(len(test)), graphs.compute_budget(test, 8), 1, stored):
    batch = jax.tree_util.tree_map(lambda x: x[0], batch)
    real = np.asarray(batch.graph_mask)
    offline[np.asarray(batch.sample_index)[real]] = np.asarray(rank(params, batch))[real]
  np.testing.assert_array_equal(served, offline)
  assert len(set(offline.tolist())) > 1
  row = rec.recommend([ds.splits["test"].prefix(0)], k=3, explain=True)[0]
  assert [p["perspective"] for p in row["intents"]] == ["long-term", "short-term"] and "answer" in row["intents"][0]
  with pytest.raises(serving.ServingError, match="trained with LLM intents: pass a stage-1 answerer"):
    serving.Recommender(run_, buckets=(1,))
