"""SR-GNN: parity with a PyTorch forward written from the reference equations, and padding invariance."""

import jax
import numpy as np
import pytest

from conftest import assert_torch_scores, beauty_prefixes, torch_grad_parity
from llm4sbr_jax import graphs, synthetic
from llm4sbr_jax.models.base import Recommender
from llm4sbr_jax.models.llm4sbr import cross_entropy
from llm4sbr_jax.models.srgnn import SRGNN


def test_scores_and_gradients_match_pytorch_reference_on_real_sessions():
  torch = pytest.importorskip("torch")
  torch.set_num_threads(1)
  from experiments.torch_srgnn import TorchSRGNN, load_flax_params, reference_batch
  split, num_items = beauty_prefixes()
  sg = graphs.build_session_graphs(split)
  budget = graphs.compute_budget(sg, len(split))
  batch = graphs.pack(sg, np.arange(len(split)), budget)
  model = Recommender(SRGNN(num_items=num_items, hidden=100, name="backbone"))
  params = model.init(jax.random.PRNGKey(0), batch)
  scores = np.asarray(model.apply(params, batch))[:len(split)]
  ref = TorchSRGNN(num_items + 1, 100)
  load_flax_params(ref, params)
  ref_batch = assert_torch_scores(ref, reference_batch, split, scores)

  def loss(p):
    s, c = cross_entropy(model.apply(p, batch), batch.targets, batch.graph_mask)
    return s / c

  assert torch_grad_parity(ref, ref_batch, jax.grad(loss)(params), np.asarray(split.targets), load_flax_params,
                           TorchSRGNN(num_items + 1, 100)) < 1e-4


def test_padding_content_and_budget_do_not_change_scores():
  ds = synthetic.make_dataset(50, 200, 4.0, 12, seed=1)
  split = ds.splits["train"]
  sg = graphs.build_session_graphs(split)
  model = Recommender(SRGNN(num_items=50, hidden=16, name="backbone"))
  small = graphs.pack(sg, np.arange(8), graphs.compute_budget(sg, 8))
  large = graphs.pack(sg, np.arange(8), graphs.compute_budget(sg, 30))
  params = model.init(jax.random.PRNGKey(0), small)
  # Garbage in the padding node's item and padding edges must not leak into real graphs.
  items = large.graph.nodes["item"].copy()
  items[-1] = 7
  large = large._replace(graph=large.graph._replace(nodes={"item": items}))
  a = np.asarray(model.apply(params, small))[:8]
  b = np.asarray(model.apply(params, large))[:8]
  np.testing.assert_allclose(a, b, atol=1e-5)


def test_init_is_uniform_in_reference_bounds():
  ds = synthetic.make_dataset(30, 50, 3.0, 6, seed=0)
  sg = graphs.build_session_graphs(ds.splits["train"])
  params = Recommender(SRGNN(num_items=30, hidden=25, name="backbone")).init(jax.random.PRNGKey(0),
                                                          graphs.pack(sg, np.arange(4), graphs.compute_budget(sg, 4)))
  leaves = jax.tree_util.tree_leaves(params)
  assert all(np.abs(np.asarray(x)).max() <= 1 / 5 for x in leaves)
  assert "linear_edge_f" not in str(jax.tree_util.tree_structure(params))
