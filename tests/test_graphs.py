"""Session graphs and fixed-budget packing against a per-session reference construction."""

import numpy as np
import pytest

from llm4sbr_jax import graphs, synthetic
from llm4sbr_jax.dataset import Split


def _random_split(rng, num=60, max_len=12, num_items=15):
  prefixes = [rng.integers(1, num_items + 1, size=rng.integers(1, max_len + 1)) for _ in range(num)]
  return Split.from_prefixes(prefixes, rng.integers(1, num_items + 1, size=num), np.arange(num), np.arange(num))


def _reference_dense(prefix):
  """The official get_slice construction for one unpadded prefix: nodes, A_in, A_out, alias."""
  node = np.unique(prefix)
  n = len(node)
  u_a = np.zeros((n, n))
  for a, b in zip(prefix[:-1], prefix[1:]):
    u_a[np.searchsorted(node, a), np.searchsorted(node, b)] = 1
  a_in = u_a / np.where(u_a.sum(0) == 0, 1, u_a.sum(0))  # [u, v] = edge / indeg(v)
  a_out = u_a.T / np.where(u_a.sum(1) == 0, 1, u_a.sum(1))  # [v, u] = edge / outdeg(u)
  return node, a_in.T, a_out.T, np.searchsorted(node, prefix)  # rows: receiver (in) / sender (out)


def _dense_from_batch(batch, g):
  """Per-graph dense matrices rebuilt from a packed batch."""
  starts = np.concatenate([[0], np.cumsum(batch.graph.n_node)])
  lo, hi = starts[g], starts[g + 1]
  nodes = batch.graph.nodes["item"][lo:hi]
  a_in, a_out = np.zeros((hi - lo, hi - lo)), np.zeros((hi - lo, hi - lo))
  for s, r, wi, wo in zip(batch.graph.senders, batch.graph.receivers, batch.graph.edges["w_in"],
                          batch.graph.edges["w_out"]):
    if lo <= s < hi:
      a_in[r - lo, s - lo] += wi
      a_out[s - lo, r - lo] += wo
  alias = batch.pos_node[(batch.pos_graph == g) & batch.pos_mask] - lo
  return nodes, a_in, a_out, alias


def test_packed_graphs_match_reference_construction():
  rng = np.random.default_rng(0)
  split = _random_split(rng)
  sg = graphs.build_session_graphs(split)
  budget = graphs.compute_budget(sg, 16)
  index = np.arange(10)
  batch = graphs.pack(sg, index, budget)
  for g, i in enumerate(index):
    ref = _reference_dense(split.prefix(i))
    got = _dense_from_batch(batch, g)
    for r, x in zip(ref, got):
      np.testing.assert_allclose(x, r, atol=1e-6)
    assert batch.last_node[g] == got[3][-1] + np.concatenate([[0], np.cumsum(batch.graph.n_node)])[g]
    assert batch.targets[g] == split.targets[i]


def test_padding_is_owned_by_the_padding_graph():
  rng = np.random.default_rng(1)
  sg = graphs.build_session_graphs(_random_split(rng))
  budget = graphs.compute_budget(sg, 16)
  batch = graphs.pack(sg, np.arange(5), budget)
  assert batch.graph.n_node.sum() == budget.nodes and batch.graph.n_edge.sum() == budget.edges
  assert batch.graph_mask.sum() == 5 and not batch.graph_mask[5:].any()
  pad = budget.graphs - 1
  assert np.all(batch.pos_graph[~batch.pos_mask] == pad)
  assert np.all(batch.graph.edges["w_in"][sg.num_edges[:5].sum():] == 0)
  assert np.all(batch.sample_index[5:] == -1)


def _tight(seed, num, sessions, slack):
  """(split, graphs, a budget so tight that batches are cut short, a random order)."""
  rng = np.random.default_rng(seed)
  split = _random_split(rng, num=num, max_len=30)
  sg = graphs.build_session_graphs(split)
  budget = graphs.Budget(sessions=sessions, nodes=int(sg.num_nodes.max()) + slack,
                         edges=int(sg.num_edges.max()) + slack, positions=int(sg.num_positions.max()) + 3 * slack // 2)
  return split, sg, budget, rng.permutation(len(split))


def test_every_batch_has_the_same_shapes_and_overflow_spills_over():
  # A deliberately tight budget: batches must be cut short, every sample still used exactly once.
  split, sg, budget, order = _tight(2, 200, 20, 40)
  seen, shapes, short = [], set(), 0
  for batch, real in graphs.iterate_batches(sg, order, budget, num_devices=2):
    shapes.add(tuple(np.shape(x) for x in [batch.graph.senders, batch.pos_node, batch.last_node]))
    for d in range(2):
      idx = batch.sample_index[d][batch.graph_mask[d]]
      seen.extend(idx.tolist())
      short += int(len(idx) < budget.sessions)
    assert real == batch.graph_mask.sum()
  assert len(shapes) == 1
  assert sorted(seen) == list(range(len(split)))
  assert seen == order.tolist()
  assert short > 2  # the budget really was binding


def test_a_process_packs_exactly_its_devices_rows_of_every_global_batch():
  _, sg, budget, order = _tight(3, 150, 10, 30)
  whole = list(graphs.iterate_batches(sg, order, budget, num_devices=4))
  parts = [list(graphs.iterate_batches(sg, order, budget, num_devices=4, local=slice(lo, lo + 2))) for lo in (0, 2)]
  assert len(whole) == len(parts[0]) == len(parts[1]) > 3
  for (batch, real), *halves in zip(whole, *parts):
    for (half, half_real), lo in zip(halves, (0, 2)):
      assert half_real == real  # the global batch's count
      np.testing.assert_array_equal(half.sample_index, batch.sample_index[lo:lo + 2])
      np.testing.assert_array_equal(half.graph.senders, batch.graph.senders[lo:lo + 2])


def test_pack_rejects_samples_over_budget():
  rng = np.random.default_rng(3)
  sg = graphs.build_session_graphs(_random_split(rng))
  with pytest.raises(ValueError, match="over the budget"):
    graphs.pack(sg, np.arange(30), graphs.Budget(sessions=30, nodes=8, edges=8, positions=8))


def test_budget_covers_the_largest_sample():
  rng = np.random.default_rng(4)
  sg = graphs.build_session_graphs(_random_split(rng, num=50, max_len=40))
  b = graphs.compute_budget(sg, 1)
  assert b.nodes > sg.num_nodes.max() and b.positions > sg.num_positions.max() and b.edges > sg.num_edges.max()


def test_evaluation_plan_fills_every_batch_within_an_exact_budget():
  ds = synthetic.make_dataset(80, 2000, 6.0, 40, seed=5)
  g = {k: graphs.build_session_graphs(ds.splits[k]) for k in ("valid", "test")}
  orders, budget = graphs.evaluation_plan(g, 25)
  assert budget.nodes < graphs.compute_budget(list(g.values()), 25).nodes
  for k, graph in g.items():
    assert sorted(orders[k]) == list(range(len(graph)))
    reals = [real for _, real in graphs.iterate_batches(graph, orders[k], budget)]
    assert reals == [25] * (len(graph) // 25) + ([len(graph) % 25] if len(graph) % 25 else [])
    totals = np.add.reduceat(graph.num_nodes[orders[k]], np.arange(0, len(graph), 25))[:-1]
    assert totals.max() - totals.min() <= graph.num_nodes.max()  # balanced: within one sample of each other
