"""SR-GNN: parity with a PyTorch forward written from the reference equations, and padding invariance."""

import gzip
import json

import jax
import numpy as np
import pytest

from conftest import SHARED_DATA
from llm4sbr_jax import graphs, synthetic
from llm4sbr_jax.dataset import Split
from llm4sbr_jax.models.srgnn import SRGNNRecommender


def _beauty_sessions(limit=64):
  """The first `limit` prefix samples of real Beauty users (raw ids remapped on the fly)."""
  path = SHARED_DATA / "beauty" / "reviews_Beauty_5.json.gz"
  if not path.exists():
    pytest.skip("../shared/data/beauty is absent")
  users, ids = {}, {}
  with gzip.open(path, "rt") as f:
    for line in f:
      r = json.loads(line)
      users.setdefault(r["reviewerID"], []).append(ids.setdefault(r["asin"], len(ids) + 1))
      if len(users) > 40:
        break
  prefixes, targets = [], []
  for seq in users.values():
    for i in range(1, len(seq)):
      prefixes.append(seq[:i])
      targets.append(seq[i])
  prefixes, targets = prefixes[:limit], targets[:limit]
  return Split.from_prefixes(prefixes, targets, np.zeros(len(targets)), np.zeros(len(targets))), len(ids)


def test_scores_match_pytorch_reference_on_real_sessions():
  torch = pytest.importorskip("torch")
  torch.set_num_threads(1)
  from experiments.torch_srgnn import TorchSRGNN, load_flax_params, reference_batch
  split, num_items = _beauty_sessions()
  sg = graphs.build_session_graphs(split)
  budget = graphs.compute_budget(sg, len(split))
  batch = graphs.pack(sg, np.arange(len(split)), budget)
  model = SRGNNRecommender(num_items=num_items, hidden=100)
  params = model.init(jax.random.PRNGKey(0), batch)
  scores = np.asarray(model.apply(params, batch))[:len(split)]
  ref = TorchSRGNN(num_items + 1, 100)
  load_flax_params(ref, params)
  prefixes = [split.prefix(i).tolist() for i in range(len(split))]
  with torch.no_grad():
    expected = ref(reference_batch(prefixes, max(map(len, prefixes)))).numpy()
  assert scores.shape == expected.shape
  assert np.max(np.abs(scores - expected)) < 1e-4
  assert np.std(expected) > 1e-3  # a meaningful comparison, not all zeros


def test_padding_content_and_budget_do_not_change_scores():
  ds = synthetic.make_dataset(50, 200, 4.0, 12, seed=1)
  split = ds.splits["train"]
  sg = graphs.build_session_graphs(split)
  model = SRGNNRecommender(num_items=50, hidden=16)
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
  params = SRGNNRecommender(num_items=30, hidden=25).init(jax.random.PRNGKey(0),
                                                          graphs.pack(sg, np.arange(4), graphs.compute_budget(sg, 4)))
  leaves = jax.tree_util.tree_leaves(params)
  assert all(np.abs(np.asarray(x)).max() <= 1 / 5 for x in leaves)
  assert "linear_edge_f" not in str(jax.tree_util.tree_structure(params))
