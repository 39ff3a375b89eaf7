"""Data parallelism on 4 fake CPU devices: shard_map and pmap steps equal the single-device step for every backbone
(GCE-GNN with its dropout on); one trace."""

import jax
import numpy as np
import pytest

from experiments.configs import default
from llm4sbr_jax import graphs, metrics, parallel, synthetic, tasks

NUM_ITEMS, HIDDEN = 80, 32


def _setup(backbone, **overrides):
  assert jax.local_device_count() == 4, "conftest sets 4 fake CPU devices"
  ds = synthetic.make_dataset(NUM_ITEMS, 600, 5.0, 20, seed=0)
  sg = graphs.build_session_graphs(ds.splits["train"])
  config = default.get_config()
  config.hidden, config.backbone = HIDDEN, backbone
  config.update(overrides)
  task = tasks.build_task(config, ds)  # the bare backbone
  budget1 = graphs.compute_budget(sg, 40)
  first, _ = next(graphs.iterate_batches(sg, np.arange(40), budget1, node_tables=task.node_tables))
  params = jax.device_get(task.init(jax.random.PRNGKey(0), jax.tree_util.tree_map(lambda x: x[0], first)))
  return sg, task, params


@pytest.fixture(scope="module")
def setup():
  return _setup("srgnn")


def _run(setup, mode, devices, steps=1, shard_items=False, shard_scores=False):
  sg, task, params = setup
  tx = parallel.make_optimizer(1e-5)
  runner = parallel.Runner(mode, task.terms, task.spec, tx, metrics.batch_metric_sums, devices,
                           per_sample_fn=metrics.batch_ranks, shard_items=shard_items, shard_scores=shard_scores)
  budget = graphs.compute_budget(sg, 40 // len(devices), num_std=6.0)
  state = runner.replicate(parallel.init_state(params, tx))
  reports, evals = [], []
  for i, (batch, real) in enumerate(graphs.iterate_batches(sg, np.arange(40 * steps), budget, len(devices),
                                                           node_tables=task.node_tables)):
    assert real == 40  # the budget is loose enough that every device batch is full
    sums, per_sample = jax.device_get(runner.eval_step(state.params, batch))
    real = per_sample["index"] >= 0
    order = np.argsort(per_sample["index"][real])  # per-sample ranks by sample row, whatever the device layout
    evals.append({**sums, "ranks": per_sample["rank"][real][order], "rows": per_sample["index"][real][order]})
    state, report = runner.train_step(state, batch, 1e-3)
    reports.append(float(report["loss"]))
  return runner.unreplicate(state.params), reports, evals


@pytest.mark.parametrize("mode,backbone,shard_items,shard_scores", [
    ("shard_map", "srgnn", False, False), ("pmap", "srgnn", False, False), ("shard_map", "tagnn", False, False),
    ("shard_map", "gcegnn", False, False), ("shard_map", "s2dhcn", False, False), ("shard_map", "srgnn", True, False),
    ("shard_map", "s2dhcn", True, False), ("shard_map", "srgnn", True, True), ("shard_map", "gcegnn", True, True)])
def test_four_device_step_equals_single_device_step(mode, backbone, shard_items, shard_scores):
  setup = _setup(backbone, s2dhcn={"beta": 0.0})  # S2-DHCN: SSL off; its per-device line graph is tested below
  single, loss1, eval1 = _run(setup, "shard_map", jax.local_devices()[:1], steps=2)
  multi, loss4, eval4 = _run(setup, mode, jax.local_devices(), steps=2, shard_items=shard_items,
                             shard_scores=shard_scores)
  np.testing.assert_allclose(loss4, loss1, rtol=1e-5)
  for k in eval1[0]:
    if k not in ("ranks", "rows"):
      np.testing.assert_allclose(eval4[0][k], eval1[0][k], rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(eval4[0]["rows"], np.arange(40))  # every sample's rank comes back once
  np.testing.assert_array_equal(eval1[0]["rows"], np.arange(40))
  assert np.mean(eval4[0]["ranks"] == eval1[0]["ranks"]) >= 0.95  # equal up to float near-ties
  diffs = jax.tree_util.tree_map(lambda a, b: float(np.max(np.abs(a - b))), single, multi)
  assert max(jax.tree_util.tree_leaves(diffs)) < 1e-5
  moved = jax.tree_util.tree_map(lambda a, b: float(np.max(np.abs(a - b))), single, setup[2])
  assert max(jax.tree_util.tree_leaves(moved)) > 1e-4  # the step really updated the parameters


@pytest.mark.parametrize("backbone", ["tagnn", "s2dhcn"])
def test_row_sharded_scoring_refuses_a_backbone_that_needs_the_whole_table(backbone):
  with pytest.raises((TypeError, ValueError), match="shard_scores"):
    _run(_setup(backbone), "shard_map", jax.local_devices(), shard_items=True, shard_scores=True)
  with pytest.raises(ValueError, match="shard_scores needs shard_items"):
    _run(_setup("srgnn"), "shard_map", jax.local_devices(), shard_scores=True)


def test_s2dhcn_ssl_term_is_per_device():
  """Each device builds the line graph and corruption of its own shard: the SSL term depends on the device count
  (documented in models/s2dhcn.py), while the CE term does not."""
  setup = _setup("s2dhcn")
  _, loss1, _ = _run(setup, "shard_map", jax.local_devices()[:1])
  _, loss4, _ = _run(setup, "shard_map", jax.local_devices())
  assert np.isfinite(loss4).all() and abs(loss4[0] - loss1[0]) > 1e-6


@pytest.mark.parametrize("mode,backbone", [("shard_map", "srgnn"), ("pmap", "srgnn"), ("shard_map", "gcegnn"),
                                           ("shard_map", "s2dhcn")])
def test_step_is_traced_once_across_batches(mode, backbone):
  parallel.TRACE_COUNTS.clear()
  _, losses, _ = _run(_setup(backbone), mode, jax.local_devices(), steps=4)
  assert len(losses) == 4
  assert parallel.TRACE_COUNTS["train"] == 1 and parallel.TRACE_COUNTS["eval"] == 1


def test_ahead_of_time_compile_fixes_the_shapes(setup):
  sg, task, params = setup
  tx = parallel.make_optimizer(1e-5)
  runner = parallel.Runner("shard_map", task.terms, task.spec, tx, metrics.batch_metric_sums, jax.local_devices())
  state = runner.replicate(parallel.init_state(params, tx))
  batch, _ = next(graphs.iterate_batches(sg, np.arange(40), graphs.compute_budget(sg, 10, num_std=6.0), 4))
  parallel.TRACE_COUNTS.clear()
  runner.compile(state, batch)
  assert parallel.TRACE_COUNTS["train"] == 1 and parallel.TRACE_COUNTS["eval"] == 1
  state, _ = runner.train_step(state, batch, 1e-3)
  runner.eval_step(state.params, batch)
  assert parallel.TRACE_COUNTS["train"] == 1 and parallel.TRACE_COUNTS["eval"] == 1  # no retrace on the calls
  other, _ = next(graphs.iterate_batches(sg, np.arange(40), graphs.compute_budget(sg, 10, num_std=9.0), 4))
  # another batch shape: refused, never silently recompiled
  with pytest.raises(TypeError, match="Argument types differ"):
    runner.train_step(state, other, 1e-3)


def test_item_tables_and_their_adam_moments_are_split_over_the_devices(setup):
  sg, task, params = setup
  tx = parallel.make_optimizer(1e-5)
  runner = parallel.Runner("shard_map", task.terms, task.spec, tx, metrics.batch_metric_sums, jax.local_devices(),
                           shard_items=True)
  host = parallel.init_state(params, tx)
  state = runner.replicate(host)
  rows = NUM_ITEMS + 1  # 81 rows over 4 devices: padded to 84, 21 a device
  table = state.params["params"]["backbone"]["embedding"]
  assert table.shape == (84, HIDDEN) and {s.data.shape for s in table.addressable_shards} == {(21, HIDDEN)}
  mu = state.opt_state[1].mu["params"]["backbone"]["embedding"]
  assert {s.data.shape for s in mu.addressable_shards} == {(21, HIDDEN)}
  other = state.params["params"]["backbone"]["gnn"]["w_hh"]
  assert {s.data.shape for s in other.addressable_shards} == {other.shape}  # everything else stays replicated
  back = runner.unreplicate(state)
  assert back.params["params"]["backbone"]["embedding"].shape == (rows, HIDDEN)
  np.testing.assert_array_equal(back.params["params"]["backbone"]["embedding"],
                                host.params["params"]["backbone"]["embedding"])
  with pytest.raises(ValueError, match="shard_items needs parallel mode 'shard_map'"):
    parallel.Runner("pmap", task.terms, task.spec, tx, metrics.batch_metric_sums, jax.local_devices(),
                    shard_items=True)
