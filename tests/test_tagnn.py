"""TAGNN: forward and gradient parity with the PyTorch reference on real Beauty prefixes, item chunking, masking."""

import jax
import numpy as np
import pytest

from conftest import assert_torch_scores, beauty_prefixes, torch_grad_parity
from llm4sbr_jax import graphs, synthetic
from llm4sbr_jax.models import llm4sbr as L
from llm4sbr_jax.models.base import Recommender
from llm4sbr_jax.models.tagnn import TAGNN, chunk_size


def _packed(split):
  sg = graphs.build_session_graphs(split)
  return graphs.pack(sg, np.arange(len(split)), graphs.compute_budget(sg, len(split)))


def test_scores_and_gradients_match_pytorch_reference_on_real_sessions():
  torch = pytest.importorskip("torch")
  torch.set_num_threads(1)
  from experiments.torch_tagnn import TorchTAGNN, load_flax_params, reference_batch
  split, num_items = beauty_prefixes()
  batch = _packed(split)
  model = Recommender(TAGNN(num_items=num_items, hidden=100, name="backbone"))
  params = model.init(jax.random.PRNGKey(0), batch)
  scores = np.asarray(model.apply(params, batch))[:len(split)]
  ref = TorchTAGNN(num_items + 1, 100, mask_padding=True)
  load_flax_params(ref, params)
  ref_batch = assert_torch_scores(ref, reference_batch, split, scores)
  # The official padding quirk (softmax mass on padded positions) really changes these sessions' scores.
  official = TorchTAGNN(num_items + 1, 100, mask_padding=False)
  load_flax_params(official, params)
  with torch.no_grad():
    assert np.max(np.abs(official(ref_batch).numpy() - ref(ref_batch).numpy())) > 1e-3

  def loss(p):
    s, c = L.cross_entropy(model.apply(p, batch), batch.targets, batch.graph_mask)
    return s / c

  grads = jax.grad(loss)(params)
  worst = torch_grad_parity(ref, ref_batch, grads, np.asarray(split.targets), load_flax_params,
                            TorchTAGNN(num_items + 1, 100))
  assert worst < 1e-4


def test_item_chunks_give_the_same_scores_and_gradients():
  ds = synthetic.make_dataset(57, 200, 4.0, 12, seed=3)
  batch = _packed(ds.splits["train"].subset(np.arange(16)))
  whole = Recommender(TAGNN(num_items=57, hidden=16, name="backbone"))
  chunked = Recommender(TAGNN(num_items=57, hidden=16, item_chunk=10, name="backbone"))  # 6 chunks, the last padded
  params = whole.init(jax.random.PRNGKey(1), batch)
  np.testing.assert_allclose(np.asarray(chunked.apply(params, batch)), np.asarray(whole.apply(params, batch)),
                             atol=1e-5)
  g = lambda m: jax.grad(lambda p: m.apply(p, batch)[:16].sum())(params)
  for a, b in zip(jax.tree_util.tree_leaves(g(chunked)), jax.tree_util.tree_leaves(g(whole))):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4)


def test_padding_content_and_budget_do_not_change_scores():
  ds = synthetic.make_dataset(40, 200, 4.0, 12, seed=1)
  sg = graphs.build_session_graphs(ds.splits["train"])
  model = Recommender(TAGNN(num_items=40, hidden=16, name="backbone"))
  small = graphs.pack(sg, np.arange(8), graphs.compute_budget(sg, 8))
  large = graphs.pack(sg, np.arange(8), graphs.compute_budget(sg, 30))
  params = model.init(jax.random.PRNGKey(0), small)
  items = large.graph.nodes["item"].copy()
  items[-1] = 7  # garbage in the padding node
  large = large._replace(graph=large.graph._replace(nodes={"item": items}))
  np.testing.assert_allclose(np.asarray(model.apply(params, small))[:8], np.asarray(model.apply(params, large))[:8],
                             atol=1e-5)


def test_auto_chunks_are_even():
  assert chunk_size(12101, 1416) == 6051  # 2 chunks, not 11848 + a mostly padded second one
  assert chunk_size(12101, 100) == 12101  # the whole catalogue in one pass
  assert chunk_size(57, 1, item_chunk=10) == 10 and chunk_size(100000, 1464) == 11112
