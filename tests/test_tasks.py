"""Tasks: the LLM4SBR training step optimises exactly eq. 12, intents sources, perspective removal."""

import jax
import numpy as np
import optax
import pytest

from experiments.configs import default
from llm4sbr_jax import intents, parallel, tasks, train
from llm4sbr_jax.models import llm4sbr as L
from llm4sbr_jax.models.srgnn import SRGNN
from stage1_fixtures import fake_stage1, tiny_dataset


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("tasks")
  ds = tiny_dataset(str(root / "ds"), num_items=30, num_sessions=40)
  fake_stage1(str(root / "stage1"), ds, split="train", dim=12)
  return ds, root


def _config(root, **kw):
  c = default.get_config()
  c.dataset_dir, c.llm4sbr, c.hidden, c.batch_size, c.progress = str(root / "ds"), True, 16, 8, False
  c.intents.source, c.intents.stage1_dir = "item_text", str(root / "stage1")
  c.update(kw)
  return c


def _one_device_batch(exp):
  batch, _ = next(exp.batches("train", np.arange(len(exp.splits["train"]))))
  return batch


def test_item_text_intents_are_mean_and_last_item(setup):
  ds, root = setup
  items = np.asarray(intents.load_item_embeddings(str(root / "stage1"), ds))
  side = tasks.intent_arrays(_config(root), ds)
  split = ds.splits["test"]
  for i in range(len(split)):
    prefix = split.prefix(i)
    np.testing.assert_allclose(side["test"][i, 0], items[prefix].mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(side["test"][i, 1], items[prefix[-1]], rtol=1e-6)
  only_short = tasks.intent_arrays(_config(root, perspectives=("short-term",), pairing=("local",)), ds)
  np.testing.assert_array_equal(only_short["test"][:, 0], side["test"][:, 1])


def test_training_step_optimises_the_fused_loss(setup):
  _, root = setup
  exp = train.Experiment(_config(root))
  assert exp.runner.num_devices == 4
  host = exp.init_state()
  batch = _one_device_batch(exp)
  state, report = exp.runner.train_step(exp.runner.replicate(host), batch, 1e-3)
  # The same loss computed directly from the model output and the loss module, over the whole (4-shard) batch,
  # with uniformity pairs formed within each shard as the parallel step does.
  model = L.LLM4SBR(backbone=SRGNN(exp.dataset.num_items, 16, 1, name="backbone"), hidden=16)

  def fused(params):
    shards = [jax.tree_util.tree_map(lambda x: x[d], batch) for d in range(4)]
    outs = [model.apply(params, b, b.intents) for b in shards]
    terms = [L.loss_terms(o, b.targets, b.graph_mask) for o, b in zip(outs, shards)]
    return L.combine(jax.tree_util.tree_map(lambda *x: sum(x), *terms))[0]

  loss, grads = jax.value_and_grad(fused)(host.params)
  np.testing.assert_allclose(float(report["loss"]), float(loss), rtol=1e-5)
  expected = {"ce", "align/long-term", "align/short-term", "uniform_intent/long-term", "uniform_session/short-term"}
  assert expected <= set(report)
  tx = parallel.make_optimizer(exp.config.weight_decay)
  updates, _ = tx.update(grads, host.opt_state, host.params)
  manual = optax.apply_updates(host.params, jax.tree_util.tree_map(lambda u: -1e-3 * u, updates))
  got = exp.runner.unreplicate(state.params)
  diff = jax.tree_util.tree_map(lambda a, b: float(np.max(np.abs(a - b))), got, manual)
  assert max(jax.tree_util.tree_leaves(diff)) < 1e-5


def test_removed_perspective_removes_parameters_and_loss_terms(setup):
  ds, root = setup
  whole = tasks.build_task(_config(root), ds)
  short = tasks.build_task(_config(root, perspectives=("short-term",), pairing=("local",)), ds)
  assert set(whole.spec) - set(short.spec) == {"align/long-term", "uniform_intent/long-term",
                                               "uniform_session/long-term"}
  exp = train.Experiment(_config(root, perspectives=("short-term",), pairing=("local",)))
  params = exp.init_state().params
  assert exp.side["train"].shape[1] == 1
  fusion = params["params"]["fusion"]["kernel"]
  assert fusion.shape == (3 * 16, 16)  # [local; global; short] -> d
  whole_params = train.Experiment(_config(root)).init_state().params
  assert whole_params["params"]["fusion"]["kernel"].shape == (4 * 16, 16)


def test_gate_fusion_trains(setup):
  _, root = setup
  results = train.train_and_evaluate(_config(root, fusion="gate", num_epochs=1), str(root / "gate_run"))
  assert results["epochs_run"] == 1 and np.isfinite(results["paper_protocol_best_test"]["metrics"]["hr@20"])


def test_experiment_compiles_before_loading_the_intents(setup, monkeypatch):
  ds, root = setup
  config = _config(root)
  task = tasks.build_task(config, ds)
  assert task.side_shape == (2, 12)
  seen = []
  load = task.load_side

  def recording_load():
    seen.append(dict(parallel.TRACE_COUNTS))
    return load()

  monkeypatch.setattr(tasks, "build_task", lambda c, d: tasks.Task(task.init, task.terms, task.spec, task.side_shape,
                                                                   recording_load))
  parallel.TRACE_COUNTS.clear()
  exp = train.Experiment(config)
  assert seen == [{"train": 1, "eval": 1}]  # both steps were compiled when the intents were loaded
  assert exp.side["train"].shape == (len(ds.splits["train"]), 2, 12)
  # init saw a zero-intent template; the parameters only depend on shapes and the seed
  real = jax.tree_util.tree_map(lambda x: x[0], _one_device_batch(exp))
  np.testing.assert_equal(jax.device_get(task.init(jax.random.PRNGKey(config.seed), real)),
                          jax.device_get(exp.init_state().params))


def test_unknown_backbone_and_source_are_rejected(setup):
  ds, root = setup
  with pytest.raises(ValueError, match="unknown backbone 'gru4rec'; registered: gcegnn, s2dhcn, srgnn, tagnn"):
    tasks.build_task(_config(root, backbone="gru4rec"), ds)
  c = _config(root)
  c.intents.source = "tweets"
  with pytest.raises(ValueError, match="intents.source"):
    tasks.build_task(c, ds)


@pytest.mark.parametrize("backbone,fusion", [("tagnn", "concat"), ("tagnn", "gate"), ("gcegnn", "concat"),
                                             ("gcegnn", "gate"), ("s2dhcn", "concat"), ("s2dhcn", "gate")])
def test_llm4sbr_trains_on_every_backbone(setup, backbone, fusion):
  _, root = setup
  exp = train.Experiment(_config(root, backbone=backbone, fusion=fusion))
  host = exp.init_state()
  state, report = exp.runner.train_step(exp.runner.replicate(host), _one_device_batch(exp), 1e-3)
  assert np.isfinite(float(report["loss"])) and float(report["align/long-term"]) > 0
  assert set(report) - {"loss", "ce"} >= set(exp.task.spec) - {"ce"}  # the backbone's own terms (S2-DHCN's ssl) too
  p = host.params["params"]
  assert {"backbone", "text_proj", "fusion" if fusion == "concat" else "linear_transform"} <= set(p)
  assert "head" not in p["backbone"]  # LLM4SBR's fusion replaces the bare head: no unused parameters
  params = exp.runner.unreplicate(state.params)["params"]
  assert np.max(np.abs(params["text_proj"]["kernel"] - p["text_proj"]["kernel"])) > 0
