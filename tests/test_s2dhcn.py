"""S2-DHCN: the hypergraph (both forms vs the official build), parity with the PyTorch reference on real Beauty
prefixes (scores, SSL loss, gradients of the whole objective), and the degenerate batches."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import beauty_prefixes
from experiments.configs import default
from llm4sbr_jax import dataset, graphs, cpu_kernels, synthetic, tasks, train
from llm4sbr_jax.dataset import Split
from llm4sbr_jax.models import llm4sbr as L
from llm4sbr_jax.models import s2dhcn
from llm4sbr_jax.models.base import Recommender

BETA = 0.01


def _packed(split, budget_of=None):
  sg = graphs.build_session_graphs(split)
  return graphs.pack(sg, np.arange(len(split)), graphs.compute_budget(sg, budget_of or len(split)))


def _model(hypergraph, num_items, hidden=100, positions=200):
  return Recommender(s2dhcn.S2DHCN(num_items, hypergraph, hidden, positions=positions, name="backbone"))


def _objective(model, recorded):
  """CE mean + beta * SSL sum, the official objective; records the corruption the module drew."""
  def corruption(*args):
    recorded[:] = s2dhcn_corruption(*args)
    return recorded[0], recorded[1]

  s2dhcn_corruption = s2dhcn.corruption

  def loss(params, batch, key):
    s2dhcn.corruption = corruption
    try:
      scores, state = model.apply(params, batch, train=True, rngs={"dropout": key}, mutable=["losses"])
    finally:
      s2dhcn.corruption = s2dhcn_corruption
    ce_sum, count = L.cross_entropy(scores, batch.targets, batch.graph_mask)
    ssl_sum, _ = state["losses"]["backbone"]["ssl"]
    return ce_sum / count + BETA * ssl_sum, (scores, ssl_sum)

  return loss


@pytest.mark.parametrize("form", ["matrix", "factored"])
def test_hypergraph_equals_the_official_build(form):
  torch = pytest.importorskip("torch")
  from experiments.torch_s2dhcn import reference_hypergraph
  rng = np.random.default_rng(0)
  prefixes = [rng.integers(1, 31, size=rng.integers(1, 12)).tolist() for _ in range(200)] + [[3, 3, 3], [5]]
  split = Split.from_prefixes(prefixes, np.ones(len(prefixes)), np.arange(len(prefixes)), np.zeros(len(prefixes)))
  hg = s2dhcn.build_hypergraph(split, 33, form)  # items 31..33 are in no prefix: empty rows
  assert hg.form == form
  x = rng.normal(size=(33, 5)).astype(np.float32)
  expected = reference_hypergraph(prefixes, 33).to_dense().numpy() @ x
  np.testing.assert_allclose(np.asarray(hg.apply(jnp.asarray(x))), expected, atol=1e-5)
  assert not np.asarray(hg.apply(jnp.asarray(x)))[30:].any()
  # The hand-written adjoint is the true transpose: <A x, y> = <x, A^T y>.
  y = rng.normal(size=(33, 5)).astype(np.float32)
  _, vjp = jax.vjp(hg.apply, jnp.asarray(x))
  np.testing.assert_allclose(np.asarray(vjp(jnp.asarray(y))[0]),
                             reference_hypergraph(prefixes, 33).to_dense().numpy().T @ y, atol=1e-5)
  del torch


def test_auto_form_picks_the_fewer_gathered_rows():
  short = Split.from_prefixes([[1, 2], [3]] * 50, np.ones(100), np.arange(100), np.zeros(100))
  long = Split.from_prefixes([list(range(1, 41))] * 5, np.ones(5), np.arange(5), np.zeros(5))
  assert s2dhcn.build_hypergraph(short, 3).form == "matrix"  # nnz(S) 5 vs 150 incidences
  assert s2dhcn.build_hypergraph(long, 40).form == "factored"  # nnz(S) 1600 vs 200 incidences
  with pytest.raises(ValueError, match="config.s2dhcn.form: expected one of"):
    s2dhcn.build_hypergraph(short, 3, "dense")


def test_scores_ssl_and_gradients_match_pytorch_reference_on_real_sessions():
  torch = pytest.importorskip("torch")
  torch.set_num_threads(1)
  from experiments.torch_s2dhcn import TorchDHCN, load_flax_params, reference_batch, reference_hypergraph
  split, num_items = beauty_prefixes()
  prefixes = [split.prefix(i).tolist() for i in range(len(split))]
  batch = _packed(split)
  assert np.asarray(batch.graph_mask)[:len(split)].all()  # the real sessions fill the first slots
  model = _model(s2dhcn.build_hypergraph(split, num_items), num_items)
  params = model.init(jax.random.PRNGKey(0), batch)
  recorded = [None, None]
  (_, (scores, ssl)), grads = jax.value_and_grad(_objective(model, recorded), has_aux=True)(
      params, batch, jax.random.PRNGKey(3))
  rows, cols = (np.array(r) for r in recorded)
  assert sorted(rows[:len(split)]) == list(range(len(split)))  # real sessions shuffled among themselves
  ref = TorchDHCN(num_items, reference_hypergraph(prefixes, num_items), 100, positions=200)
  load_flax_params(ref, params)
  ref_batch = reference_batch(prefixes, 0)
  targets = torch.as_tensor(np.asarray(split.targets) - 1).long()
  scores_t = ref(ref_batch)
  np.testing.assert_allclose(np.asarray(scores)[:len(split)], scores_t.detach().numpy(), atol=1e-4)
  assert np.std(scores_t.detach().numpy()) > 1e-3
  theta_h = ref.session_embedding(ref_batch, ref.item_embeddings())
  ssl_t = ref.ssl_loss(theta_h, ref.line_embedding(ref_batch), torch.as_tensor(rows[:len(split)]).long(),
                       torch.as_tensor(cols).long())
  assert abs(float(ssl) - float(ssl_t.detach())) < 1e-4 * max(1.0, abs(float(ssl_t.detach())))
  loss_t = torch.nn.functional.cross_entropy(scores_t, targets) + BETA * ssl_t
  loss_t.backward()
  fresh = TorchDHCN(num_items, reference_hypergraph(prefixes, num_items), 100, positions=200)
  load_flax_params(fresh, grads)
  ours = dict(fresh.named_parameters())
  for name, p in ref.named_parameters():
    scale = float(p.grad.abs().max()) + 1e-12
    assert float((p.grad - ours[name].detach()).abs().max()) / scale < 1e-4, name


def test_forms_and_kernels_train_alike():
  ds = synthetic.make_dataset(50, 300, 5.0, 15, seed=2)
  split = ds.splits["train"]
  batch = _packed(split.subset(np.arange(24)))
  kernels = ("bcsr", "native") if cpu_kernels.available() else ("bcsr",)
  graphs_ = [s2dhcn.build_hypergraph(split, 50, f, k) for f in ("matrix", "factored") for k in kernels]
  assert [(h.form, h.kernel) for h in graphs_] == [(f, k) for f in ("matrix", "factored") for k in kernels]
  models = [_model(h, 50, hidden=16) for h in graphs_]
  params = models[0].init(jax.random.PRNGKey(0), batch)
  out = [jax.jit(jax.value_and_grad(_objective(m, [None, None]), has_aux=True))(params, batch, jax.random.PRNGKey(1))
         for m in models]
  for other in out[1:]:
    np.testing.assert_allclose(np.asarray(out[0][0][1][0]), np.asarray(other[0][1][0]), atol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(out[0][1]), jax.tree_util.tree_leaves(other[1])):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_kernel_choice_without_the_native_build(monkeypatch):
  split = synthetic.make_dataset(20, 40, 4.0, 8, seed=0).splits["train"]
  monkeypatch.setattr(s2dhcn.cpu_kernels, "available", lambda: False)
  assert s2dhcn.build_hypergraph(split, 20, "matrix", "auto").kernel == "bcsr"
  with pytest.raises(RuntimeError, match="kernel='native'"):
    s2dhcn.build_hypergraph(split, 20, "matrix", "native")
  with pytest.raises(ValueError, match="config.s2dhcn.kernel"):
    s2dhcn.build_hypergraph(split, 20, "matrix", "cuda")


@pytest.mark.parametrize("num_items", [5, 100])  # 5: the incidence product; 100: node pairs (N^2 / G < 101)
def test_line_graph_of_identical_and_repeated_sessions(num_items):
  # Three identical sessions (overlap 1 everywhere), one with repeats, one disjoint; an empty slot at the end.
  prefixes = [[1, 2, 2, 1], [1, 2], [2, 1, 1], [3, 3, 3], [4]]
  split = Split.from_prefixes(prefixes, [2, 3, 3, 4, 5], np.arange(5), np.zeros(5))
  batch = _packed(split, 6)
  items = np.asarray(batch.graph.nodes["item"])
  node_graph = np.repeat(np.arange(len(batch.graph_mask)), np.asarray(batch.graph.n_node))
  assert (num_items + 1 <= len(items) ** 2 // len(batch.graph_mask)) == (num_items == 5)
  conv = np.asarray(s2dhcn.line_graph(jnp.asarray(items), jnp.asarray(node_graph), len(batch.graph_mask),
                                      num_items))
  np.testing.assert_allclose(conv[:3, :3], np.full((3, 3), 1 / 3), atol=1e-6)  # all ones, row-normalised
  assert conv[3, 3] == 1.0 and conv[4, 4] == 1.0 and conv[-1, -1] == 1.0  # disjoint sessions and the empty slot
  assert np.isfinite(conv).all()
  model = _model(s2dhcn.build_hypergraph(split, 5), 5, hidden=8)
  params = model.init(jax.random.PRNGKey(0), batch)
  (loss, _), grads = jax.value_and_grad(_objective(model, [None, None]), has_aux=True)(
      params, batch, jax.random.PRNGKey(0))
  assert np.isfinite(float(loss)) and all(np.isfinite(np.asarray(g)).all() for g in jax.tree_util.tree_leaves(grads))


def test_line_graph_products_agree_exactly():
  ds = synthetic.make_dataset(40, 400, 6.0, 20, seed=4)
  batch = _packed(ds.splits["train"].subset(np.arange(30)))
  items = jnp.asarray(batch.graph.nodes["item"])
  node_graph = jnp.repeat(jnp.arange(len(batch.graph_mask)), batch.graph.n_node, total_repeat_length=len(items))
  g = len(batch.graph_mask)
  by_incidence = s2dhcn.line_graph(items, node_graph, g, 40)
  by_pairs = s2dhcn.line_graph(items, node_graph, g, len(items) ** 2)  # a catalogue too big for the incidence
  np.testing.assert_array_equal(np.asarray(by_incidence), np.asarray(by_pairs))


def test_ssl_term_stays_finite_when_the_sigmoids_saturate():
  """Scores of +-36 saturate float32 sigmoids: every term stays at most -log(1e-8), eagerly and jitted (XLA folds
  `1e-8 + (1 - s)` into `(1e-8 + 1) - s`, which is 0 once s rounds to 1: a Beauty run's loss went NaN so)."""
  theta = jnp.array([[6.0, 0.0], [0.0, 6.0], [-6.0, 0.0]])  # pos = 36; neg pairs of +-36 or 0
  rows, cols = jnp.array([1, 2, 0]), jnp.array([0, 1])
  for sign in (1.0, -1.0):
    loss = lambda t, s=sign: s2dhcn.ssl_terms(t, s * t, rows, cols, jnp.ones(3, bool))[0]
    for fn in (loss, jax.jit(loss)):
      total = float(fn(theta))
      assert np.isfinite(total) and 0 < total <= 6 * -np.log(1e-8) + 1e-3
      assert np.isfinite(np.asarray(jax.jit(jax.grad(fn))(theta))).all()


def test_trains_on_a_dataset_smaller_than_one_batch(tmp_path):
  ds = synthetic.make_dataset(30, 40, 4.0, 8, seed=0)  # fewer train samples than one batch of 100
  assert len(ds.splits["train"]) < 100
  dataset.save_dataset(ds, str(tmp_path / "tiny"))
  config = default.get_config()
  config.update(dataset_dir=str(tmp_path / "tiny"), backbone="s2dhcn", hidden=16, num_epochs=2, progress=False)
  results = train.train_and_evaluate(config, str(tmp_path / "run"))
  rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  assert len(rows) == 2 and all(np.isfinite(r["train"]["ssl"]) and r["train"]["ssl"] > 0 for r in rows)
  assert all(np.isfinite(v) for v in results["selected"]["test"].values())
  assert results["config"]["weight_decay"] == 0.0 and results["config"]["lr_decay"] == 1.0  # official optimiser
  assert [r["lr"] for r in rows] == [1e-3, 1e-3]


def test_ssl_term_is_in_the_task_spec_and_weighted_by_beta_times_batch():
  ds = synthetic.make_dataset(40, 200, 4.0, 10, seed=1)
  config = default.get_config()
  config.update(backbone="s2dhcn", hidden=16)
  task = tasks.build_task(config, ds)
  assert task.spec["ssl"] == (config.s2dhcn.beta * config.batch_size, False)
