"""GCE-GNN: the global graph (vs the official loops, train-only, cache), and parity with the PyTorch reference."""

import logging

import jax
import numpy as np
import pytest

from conftest import assert_torch_scores, beauty_prefixes, torch_grad_parity
from llm4sbr_jax import dataset as dataset_lib
from llm4sbr_jax import graphs, synthetic
from llm4sbr_jax.dataset import Split
from llm4sbr_jax.models import gcegnn
from llm4sbr_jax.models import llm4sbr as L
from llm4sbr_jax.models.base import Recommender


def _sequences(items, offsets):
  return [items[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:])]


def test_global_graph_equals_the_official_build_loop():
  from experiments.torch_gcegnn import reference_global_graph  # pure Python: no torch needed to run it
  rng = np.random.default_rng(0)
  seqs = [rng.integers(1, 30, size=rng.integers(1, 12)).tolist() for _ in range(300)]  # repeats, ties, short ones
  seqs += [[1, 2, 3, 1], [2, 3], [5], [4, 4, 4]]
  items = np.concatenate([np.asarray(s) for s in seqs])
  offsets = dataset_lib.offsets_from_counts([len(s) for s in seqs])
  for sample_num in (3, 12):
    neighbours, weights = gcegnn.build_global_graph(items, offsets, 30, sample_num)
    ref_adj, ref_w = reference_global_graph(seqs, 30, sample_num)
    for item in range(31):
      k = len(ref_adj[item])
      assert neighbours[item, :k].tolist() == ref_adj[item] and weights[item, :k].tolist() == ref_w[item]
      assert not neighbours[item, k:].any() and not weights[item, k:].any()


def test_sampling_is_handle_adj():
  neighbours = np.array([[0, 0, 0], [2, 3, 4], [1, 0, 0], [0, 0, 0], [1, 2, 0]], np.int32)
  weights = np.array([[0, 0, 0], [5, 2, 1], [7, 0, 0], [0, 0, 0], [3, 1, 0]], np.int32)
  nb, w = gcegnn.sample_neighbours(neighbours, weights, np.random.default_rng(0))
  assert sorted(zip(nb[1], w[1])) == [(2, 5), (3, 2), (4, 1)]  # S neighbours: a permutation
  assert nb[2].tolist() == [1, 1, 1] and w[2].tolist() == [7, 7, 7]  # one neighbour, drawn with replacement
  assert set(zip(nb[4], w[4])) <= {(1, 3), (2, 1)}
  assert not nb[0].any() and not nb[3].any() and not w[3].any()  # padding and isolated items: zero rows


def test_graph_uses_training_samples_only_and_never_a_later_click():
  # Session 7: [1, 2, 3, 4, 5]; its train samples end at target 3 (prefix [1, 2]); test holds [1..4] -> 5.
  train = Split.from_prefixes([[1], [1, 2], [6]], [2, 3, 7], [7, 7, 8], [0, 0, 0])
  items, offsets = gcegnn.graph_sequences(train)
  assert _sequences(items, offsets) == [[1, 2, 3], [6, 7]]  # the longest train sample + its target, per session
  neighbours, _ = gcegnn.build_global_graph(items, offsets, 7, 12)
  assert 4 not in neighbours and 5 not in neighbours  # clicks only test samples contain never enter the graph


def _tiny_dataset(seed=0):
  return synthetic.make_dataset(40, 300, 4.0, 10, seed=seed)


def test_cache_is_keyed_by_fingerprint(tmp_path, caplog):
  ds = _tiny_dataset()
  first = gcegnn.cached_global_graph(ds, str(tmp_path))
  assert (tmp_path / "cache" / "gcegnn_graph_eps3_top12.npz").exists()
  np.testing.assert_array_equal(gcegnn.cached_global_graph(ds, str(tmp_path))[0], first[0])
  other = _tiny_dataset(seed=5)
  assert other.fingerprint != ds.fingerprint
  with caplog.at_level(logging.WARNING):
    rebuilt = gcegnn.cached_global_graph(other, str(tmp_path))
  assert "was built from dataset" in caplog.text and "rebuilding" in caplog.text
  items, offsets = gcegnn.graph_sequences(other.splits["train"])
  np.testing.assert_array_equal(rebuilt[0], gcegnn.build_global_graph(items, offsets, 40)[0])


def _setup(split, num_items, hidden, hop=1, seed=0):
  items, offsets = gcegnn.graph_sequences(split)
  neighbours, weights = gcegnn.build_global_graph(items, offsets, num_items)
  sampled = gcegnn.sample_neighbours(neighbours, weights, np.random.default_rng(seed))
  sg = graphs.build_session_graphs(split)
  batch = graphs.pack(sg, np.arange(len(split)), graphs.compute_budget(sg, len(split)),
                      node_tables=gcegnn.hop_tables(*sampled, hop))
  return sampled, batch


@pytest.mark.parametrize("hop", [1, 2])
def test_scores_and_gradients_match_pytorch_reference_on_real_sessions(hop):
  torch = pytest.importorskip("torch")
  torch.set_num_threads(1)
  from experiments.torch_gcegnn import TorchGCEGNN, load_flax_params, reference_batch
  split, num_items = beauty_prefixes()
  (adj, num), batch = _setup(split, num_items, 100, hop)
  model = Recommender(gcegnn.GCEGNN(num_items=num_items, hidden=100, hop=hop, name="backbone"))
  params = model.init(jax.random.PRNGKey(0), batch)
  scores = np.asarray(model.apply(params, batch))[:len(split)]
  make_ref = lambda: TorchGCEGNN(num_items + 1, adj, num, 100, hop=hop).eval()
  ref = make_ref()
  load_flax_params(ref, params)
  ref_batch = assert_torch_scores(ref, reference_batch, split, scores)

  def loss(p):
    s, c = L.cross_entropy(model.apply(p, batch), batch.targets, batch.graph_mask)
    return s / c

  grads = jax.grad(loss)(params)
  assert torch_grad_parity(ref, ref_batch, grads, np.asarray(split.targets), load_flax_params, make_ref()) < 1e-4


def test_dropout_is_per_sample_and_only_in_training():
  ds = _tiny_dataset()
  split = ds.splits["train"].subset(np.arange(12))
  _, batch = _setup(split, 40, 16)
  model = Recommender(gcegnn.GCEGNN(num_items=40, hidden=16, name="backbone"))
  params = model.init(jax.random.PRNGKey(0), batch)
  key = jax.random.PRNGKey(3)
  train = lambda b, k=key: np.asarray(model.apply(params, b, train=True, rngs={"dropout": k}))
  a, evaluated = train(batch), np.asarray(model.apply(params, batch))
  assert np.all(np.isfinite(a)) and np.max(np.abs(a[:12] - evaluated[:12])) > 1e-3
  np.testing.assert_array_equal(a, train(batch))  # reproducible from the step key
  assert np.max(np.abs(train(batch, jax.random.PRNGKey(4))[:12] - a[:12])) > 1e-3
  # The same samples packed in another order and budget get the same masks (keyed by sample row and node rank).
  sg = graphs.build_session_graphs(ds.splits["train"])
  order = np.arange(12)[::-1]
  tables, _ = _setup(split, 40, 16)
  other = graphs.pack(sg, order, graphs.compute_budget(sg, 20), node_tables=gcegnn.hop_tables(*tables, 1))
  np.testing.assert_allclose(train(other)[:12][::-1], a[:12], atol=1e-5)
