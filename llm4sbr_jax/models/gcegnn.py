"""GCE-GNN (Wang et al., SIGIR 2020), faithful to the current official CCIIPLab/GCE-GNN code, and its global graph.

The global item graph (host side, vectorised numpy; backbones.md section 4.2):
  * built from the training split only. Which clicks feed it: for every session with training samples, the
    longest training sample's prefix followed by its target. A session's samples are nested prefixes, so that
    sequence holds every click any of its training samples contains and no other; it is counted once (like the
    official `all_train_seq`). Under the temporal protocol these are the whole training sessions. Under the paper's
    random split a test sample's session may also have training samples: their clicks feed the graph (including an
    item that is a test target *earlier* in the session and a prefix click of a later training sample), but the
    clicks after the session's last training sample never do, so no test target leaks through a pair that only a
    test sample contains. Validation and test samples never feed it;
  * pairs within distance 1..3 in both directions (self pairs kept when an item repeats within distance 3), weights
    the raw co-occurrence counts, each item's neighbours sorted by count (ties: first occurrence in the official
    build order) and cut to the top `sample_num` (12);
  * cached beside the processed dataset (`<dataset_dir>/cache/gcegnn_graph_eps<e>_top<s>.npz`, no pickle) and
    keyed by the dataset fingerprint: a cache from another fingerprint is rebuilt with a warning;
  * sampled once per run as `utils.handle_adj` does (seeded by the run's seed): an item with `sample_num` neighbours
    gets them in a random order, one with fewer draws `sample_num` of them with replacement, one with none keeps a
    zero row (neighbour = item 0, weight 0). Each batch carries the sampled hop tables of its nodes
    (`batch.extra['nb_k']` [N, S^k] and `['nbw_k']`), gathered on the host.

The model (backbones.md section 4.4), on packed session graphs:
  * local aggregator: every node attends over itself (relation 1) and its session neighbours with the official
    relation codes, which the official code computes on the *reversed* sequence: for a click transition u -> v in
    time, v receives from u with relation 2 and u from v with relation 3, or both with relation 4 when the session
    also has v -> u; `e = LeakyReLU_0.2((h_i * h_j) . a_rel)`, softmax over each node's incoming relations;
  * global aggregator, the current code (commit 089d021, after publication): attention over the sampled
    neighbours from `[s * h_nb ; w]` with s the mean of the session's raw item embeddings over its clicks (repeats
    counted), `w_1` [(d + 1) x d], LeakyReLU 0.2, `w_2`, softmax over the S neighbours, then
    `relu(dropout_gcn([h_self ; h_nb]) W_3)`, for `hop` hops with one aggregator per hop level as the official loop;
    the published numbers came from the earlier `[s ; h_nb ; w]` / session-sum version, which is not implemented;
  * `h = dropout(h_local, dropout_local) + dropout(h_global, dropout_global)` (official defaults 0, 0.5; and
    dropout_gcn 0), with masks drawn per (sample, node) from the step key, so they are the same for any number of
    devices;
  * readout over the session's positions with *reversed* position embeddings (position 0 = the most recent click):
    `z = tanh([p_rev ; h_i] W_1)`, `z = sigmoid(glu1(z) + glu2(mean_i h_i))`, `beta = z W_2` (no softmax),
    `S = sum_i beta_i h_i`, scores `S . E[1:]`. The position table has max(200, longest prefix) rows (the official
    200 rows would not cover Beauty's 202-click prefixes).
Training as the official code: Adam lr 1e-3 with coupled L2 1e-5, x0.1 every 3 epochs stepped after each epoch
(= our schedule), batch 100; its early-stopping patience is 3 (`--config.patience=3`; the project default is 10).
The official per-dataset overrides are config values (Diginetica: `--config.gcegnn.hop=2
--config.gcegnn.dropout_gcn=0.2`; Tmall: `dropout_gcn=0.6, dropout_local=0.5`).
Not created (they never affect an output, only receive weight decay): the official `linear_transform`,
`LocalAggregator.bias` and `GlobalAggregator.bias`.

LLM4SBR pairing: `global_` = S (the readout over the whole session) pairs with the long-term intent, `local` = the
node representation h of the last click with the short-term one; the bare session vector is S.
"""

from __future__ import annotations

import io
import json
import logging
import os
from typing import Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from llm4sbr_jax.dataset import ProcessedDataset, Split, offsets_from_counts, ragged_take, write_atomic
from llm4sbr_jax.graphs import SessionBatch
from llm4sbr_jax.models.base import BackboneOutput, uniform_init

log = logging.getLogger(__name__)

OFFICIAL_POSITIONS = 200
CACHE_VERSION = 1


# ----------------------------------------------------------------------------------------------------------------
# Global graph (host side).


def graph_sequences(split: Split) -> tuple[np.ndarray, np.ndarray]:
  """Per session of `split`, its longest sample's prefix + target (see the module docstring).

  Returns:
    (items int64 [T], offsets int64 [K + 1]) of the K sequences, in order of session id.
  """
  if not len(split):
    return np.zeros(0, np.int64), np.zeros(1, np.int64)
  lengths = split.lengths
  sessions = np.asarray(split.sessions, np.int64)
  order = np.lexsort((lengths, sessions))  # by session, then length: the last of each session is its longest
  last = np.ones(len(order), bool)
  last[:-1] = sessions[order[1:]] != sessions[order[:-1]]
  chosen = order[last]
  pos, _ = ragged_take(np.asarray(split.offsets)[chosen], lengths[chosen])
  counts = lengths[chosen] + 1
  offsets = offsets_from_counts(counts)
  items = np.empty(offsets[-1], np.int64)
  is_target = np.zeros(offsets[-1], bool)
  is_target[offsets[1:] - 1] = True
  items[~is_target] = np.asarray(split.items, np.int64)[pos]
  items[is_target] = np.asarray(split.targets, np.int64)[chosen]
  return items, offsets


def build_global_graph(items: np.ndarray, offsets: np.ndarray, num_items: int, sample_num: int = 12,
                       epsilon: int = 3) -> tuple[np.ndarray, np.ndarray]:
  """The official `build_graph.py`, vectorised: top-`sample_num` co-occurrence neighbours of every item.

  Args:
    items: int [T] concatenated sequences; offsets: int [K + 1].
    num_items: n (ids 1..n).
    sample_num: neighbours kept per item.
    epsilon: the largest distance paired.

  Returns:
    (neighbours int32 [n + 1, S], counts int32 [n + 1, S]); unused slots hold item 0 with count 0, and an item's
    neighbours come first, by count descending, ties in order of first occurrence in the official build order.
  """
  items = np.asarray(items, np.int64)
  seq_of = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
  src, dst, order = [], [], []
  for k in range(1, epsilon + 1):  # the official order: session, then k, then j, then (a, b) before (b, a)
    j = np.nonzero((np.arange(len(items)) + k < len(items)))[0]
    j = j[seq_of[j] == seq_of[np.minimum(j + k, len(items) - 1)]]
    a, b = items[j], items[j + k]
    rank = (seq_of[j] * (epsilon + 1) + k) * (len(items) + 1) + (j - offsets[seq_of[j]])
    src += [a, b]
    dst += [b, a]
    order += [rank * 2, rank * 2 + 1]
  src, dst, order = (np.concatenate(x) if x else np.zeros(0, np.int64) for x in (src, dst, order))
  src, dst = src[np.argsort(order, kind="stable")], dst[np.argsort(order, kind="stable")]
  width = num_items + 1
  keys, first, counts = np.unique(src * width + dst, return_index=True, return_counts=True)
  a, b = keys // width, keys % width
  ranked = np.lexsort((first, -counts, a))  # per item: count descending, then first occurrence
  a, b, counts = a[ranked], b[ranked], counts[ranked]
  start = offsets_from_counts(np.bincount(a, minlength=width))
  slot = np.arange(len(a)) - start[a]
  keep = slot < sample_num
  neighbours = np.zeros((width, sample_num), np.int32)
  weights = np.zeros((width, sample_num), np.int32)
  neighbours[a[keep], slot[keep]] = b[keep]
  weights[a[keep], slot[keep]] = counts[keep]
  return neighbours, weights


def sample_neighbours(neighbours: np.ndarray, weights: np.ndarray, rng: np.random.Generator
                      ) -> tuple[np.ndarray, np.ndarray]:
  """`utils.handle_adj`: S neighbours per item, a permutation when it has S, with replacement when fewer."""
  num, s = neighbours.shape
  degree = np.sum(weights > 0, axis=1)  # [n + 1]
  perm = np.argsort(rng.random((num, s)), axis=1)  # [n + 1, S]
  drawn = np.floor(rng.random((num, s)) * np.maximum(degree, 1)[:, None]).astype(np.int64)
  index = np.where((degree >= s)[:, None], perm, drawn)
  rows = np.arange(num)[:, None]
  sampled = np.where((degree > 0)[:, None], neighbours[rows, index], 0)
  sampled_w = np.where((degree > 0)[:, None], weights[rows, index], 0)
  sampled[0], sampled_w[0] = 0, 0  # item 0 (padding) keeps a zero row, as in the official loop over 1..n-1
  return sampled.astype(np.int32), sampled_w.astype(np.int32)


def cached_global_graph(dataset: ProcessedDataset, directory: Optional[str], sample_num: int = 12,
                        epsilon: int = 3) -> tuple[np.ndarray, np.ndarray]:
  """The dataset's global graph, from `<directory>/cache/` when it was built from the same fingerprint.

  A cache made from another fingerprint is rebuilt (with a warning); an unwritable directory just skips caching.
  """
  path = None if not directory else os.path.join(directory, "cache", f"gcegnn_graph_eps{epsilon}_top{sample_num}.npz")
  expected = {"fingerprint": dataset.fingerprint, "version": CACHE_VERSION}  # the fingerprint hashes every split
  if path and os.path.exists(path):
    with np.load(path, allow_pickle=False) as z:
      meta = json.loads(str(z["meta"]))
      if meta == expected:
        return z["neighbours"], z["weights"]
    log.warning("%s was built from dataset %s, but %s is %s: rebuilding it", path, meta.get("fingerprint", "?")[:12],
                directory, expected["fingerprint"][:12])
  items, offsets = graph_sequences(dataset.splits["train"])
  neighbours, weights = build_global_graph(items, offsets, dataset.num_items, sample_num, epsilon)
  if path:
    try:
      os.makedirs(os.path.dirname(path), exist_ok=True)
      buf = io.BytesIO()
      np.savez(buf, neighbours=neighbours, weights=weights, meta=np.array(json.dumps(expected)))
      write_atomic(path, buf.getvalue())
    except OSError as e:
      log.warning("could not cache the global graph in %s (%s); it is rebuilt next run", path, e)
  return neighbours, weights


def hop_tables(neighbours: np.ndarray, weights: np.ndarray, hop: int) -> dict[str, np.ndarray]:
  """Per-item tables of the k-hop sampled neighbours and their weights, k = 1..hop (the official `sample` chain).

  `nb_k` [n + 1, S^k]: the neighbours reached in k steps; `nbw_k` [n + 1, S^k]: the count of each of them as a
  neighbour of its parent (the official `weight_neighbors[k - 1]`).
  """
  tables, ent = {}, np.arange(len(neighbours))[:, None]  # [n + 1, 1]
  for k in range(1, hop + 1):
    tables[f"nbw_{k}"] = weights[ent].reshape(len(neighbours), -1).astype(np.float32)
    ent = neighbours[ent].reshape(len(neighbours), -1)
    tables[f"nb_{k}"] = ent.astype(np.int32)
  return tables


# ----------------------------------------------------------------------------------------------------------------
# The model.


def _leaky(x: jax.Array, slope: float) -> jax.Array:
  return jnp.where(x >= 0, x, slope * x)


def node_dropout(x: jax.Array, rate: float, key: Optional[jax.Array], sample: jax.Array, rank: jax.Array
                 ) -> jax.Array:
  """Inverted dropout on x [N, ...] with one mask per (sample, node rank): the same for any device count."""
  if rate <= 0.0 or key is None:
    return x
  keep = jax.vmap(lambda s, r: jax.random.bernoulli(
      jax.random.fold_in(jax.random.fold_in(key, s), r), 1.0 - rate, x.shape[1:]))(sample, rank)
  return jnp.where(keep, x / (1.0 - rate), 0.0)


def soft_readout(module: nn.Module, seq_h: jax.Array, batch: SessionBatch, count: jax.Array, positions: int,
                 w_1: Callable[[jax.Array], jax.Array]) -> jax.Array:
  """The soft-attention readout with *reversed* position embeddings (GCE-GNN, S2-DHCN); [G, d].

  `z = tanh(w_1([p_rev ; h_i]))`, `z = sigmoid(glu1(z) + glu2(mean_i h_i))`, `beta = z w_2` (no softmax),
  `S = sum_i beta_i h_i`; position 0 is the most recent click. Creates `pos_embedding`, `glu1`, `glu2`, `w_2` in
  `module` (call it from the module's compact `__call__`).

  Args:
    module: the backbone creating the parameters.
    seq_h: [P, d] the vector of every click position.
    batch: the packed batch (positions, masks).
    count: [G] clicks per session (at least 1).
    positions: rows of the position table.
    w_1: [P, 2d] -> [P, d], the backbone's first projection.
  """
  d, init = seq_h.shape[-1], uniform_init(seq_h.shape[-1])
  num_graphs, num_pos = count.shape[0], batch.pos_node.shape[0]
  mask = batch.pos_mask[:, None].astype(seq_h.dtype)  # [P, 1]
  ends = jnp.cumsum(jax.ops.segment_sum(batch.pos_mask.astype(jnp.int32), batch.pos_graph, num_graphs))  # [G]
  rev_pos = jnp.clip(ends[batch.pos_graph] - 1 - jnp.arange(num_pos), 0, positions - 1)  # [P]
  pos = module.param("pos_embedding", init, (positions, d))[rev_pos]  # [P, d]
  hs = jax.ops.segment_sum(seq_h * mask, batch.pos_graph, num_graphs) / count[:, None]  # [G, d]
  z = jnp.tanh(w_1(jnp.concatenate([pos, seq_h], -1)))  # [P, d]
  z = jax.nn.sigmoid(nn.Dense(d, kernel_init=init, bias_init=init, name="glu1")(z)
                     + nn.Dense(d, use_bias=False, kernel_init=init, name="glu2")(hs)[batch.pos_graph])
  beta = (z @ module.param("w_2", init, (d, 1))) * mask  # [P, 1]
  return jax.ops.segment_sum(beta * seq_h, batch.pos_graph, num_graphs)  # [G, d]


class LocalAggregator(nn.Module):
  """Attention over each node's incoming relation messages (self loop + the three session relations)."""

  hidden: int
  slope: float = 0.2

  @nn.compact
  def __call__(self, h: jax.Array, recv: jax.Array, send: jax.Array, relation: jax.Array,
               valid: jax.Array) -> jax.Array:
    """h [N, d]; recv / send / relation (0..3 = official codes 1..4) / valid: [M] messages. Returns [N, d]."""
    init, num_nodes = uniform_init(self.hidden), h.shape[0]
    a = jnp.concatenate([self.param(f"a_{k}", init, (self.hidden, 1)) for k in range(4)], axis=1)  # [d, 4]
    e = _leaky(jnp.sum((h[recv] * h[send]) * a.T[relation], axis=-1), self.slope)  # [M]
    e = jnp.where(valid, e, -jnp.inf)
    top = jax.lax.stop_gradient(jax.ops.segment_max(e, recv, num_nodes))  # [N]
    ex = jnp.where(valid, jnp.exp(e - top[recv]), 0.0)  # [M]
    den = jax.ops.segment_sum(ex, recv, num_nodes)  # [N]
    return jax.ops.segment_sum((ex / den[recv])[:, None] * h[send], recv, num_nodes)  # [N, d]


class GlobalAggregator(nn.Module):
  """One hop level of the session-aware global aggregation (the current official `GlobalAggregator`)."""

  hidden: int

  @nn.compact
  def __call__(self, own: jax.Array, nb: jax.Array, wt: jax.Array, sess: jax.Array,
               drop: Callable[[jax.Array], jax.Array]) -> jax.Array:
    """own [N, K, d]; nb [N, K, S, d]; wt [N, K, S, 1] raw counts; sess [N, 1, 1, d]. Returns [N, K, d]."""
    d, init = self.hidden, uniform_init(self.hidden)
    n, k, s, _ = nb.shape
    w_1 = self.param("w_1", init, (d + 1, d))
    # [s * h_nb ; w] @ w_1 as two terms on 3-D / flat arrays: XLA:CPU runs forward + backward 5x faster than the
    # 4-D concat form (whose session-gradient reduction over S alone took a quarter of the step).
    x = (nb.reshape(n, k * s, d) * sess.reshape(n, 1, d)).reshape(-1, d)  # [N K S, d]
    att = _leaky(x @ w_1[:d] + wt.reshape(-1, 1) * w_1[d], 0.2)  # [N K S, d]
    alpha = jax.nn.softmax((att @ self.param("w_2", init, (d, 1))).reshape(n * k, s), axis=1)  # [N K, S]
    agg = jnp.einsum("ms,msd->md", alpha, nb.reshape(n * k, s, d)).reshape(n, k, d)  # [N, K, d]
    return jax.nn.relu(drop(jnp.concatenate([own, agg], -1)) @ self.param("w_3", init, (2 * d, d)))  # [N, K, d]


class GCEGNN(nn.Module):
  """GCE-GNN backbone on packed session graphs plus per-node global neighbour tables (`batch.extra`).

  Attributes:
    num_items: n; the embedding table has n + 1 rows (row 0 = padding).
    hidden: d.
    positions: rows of the reversed position table.
    hop: global aggregation hops (official default 1; 2 on Diginetica).
    sample_num: S, sampled neighbours per item.
    dropout_local / dropout_global / dropout_gcn: the official dropout rates.
    slope: LeakyReLU slope (official `alpha` 0.2).
  """

  num_items: int
  hidden: int = 100
  positions: int = OFFICIAL_POSITIONS
  hop: int = 1
  sample_num: int = 12
  dropout_local: float = 0.0
  dropout_global: float = 0.5
  dropout_gcn: float = 0.0
  slope: float = 0.2

  @nn.compact
  def __call__(self, batch: SessionBatch, train: bool = False, head: bool = True) -> BackboneOutput:
    d, s, init = self.hidden, self.sample_num, uniform_init(self.hidden)
    g = batch.graph
    items = g.nodes["item"]  # [N]
    num_nodes, num_graphs = items.shape[0], batch.graph_mask.shape[0]
    table = self.param("embedding", init, (self.num_items + 1, d))  # [n + 1, d]
    h = table[items]  # [N, d]
    key = self.make_rng("dropout") if train else None
    node_graph = jnp.repeat(jnp.arange(num_graphs), g.n_node, total_repeat_length=num_nodes)  # [N]
    node_rank = jnp.arange(num_nodes) - (jnp.cumsum(g.n_node) - g.n_node)[node_graph]  # [N]
    node_sample = batch.sample_index[node_graph]  # [N]
    drop = lambda x, rate, salt: node_dropout(x, rate, None if key is None else jax.random.fold_in(key, salt),
                                              node_sample, node_rank)

    # Local aggregator: messages (receiver <- sender, relation) = self loops + both directions of every edge.
    snd, rcv, rev = g.senders, g.receivers, g.edges["reverse"]
    real = snd != rcv  # padding edges (pad -> pad) and repeat clicks (u -> u) are covered by the self loops
    nodes = jnp.arange(num_nodes)
    recv = jnp.concatenate([nodes, rcv, snd])  # [N + 2E]
    send = jnp.concatenate([nodes, snd, rcv])
    relation = jnp.concatenate([jnp.zeros_like(nodes), jnp.where(rev, 3, 1), jnp.full_like(snd, 2)])
    valid = jnp.concatenate([jnp.ones_like(nodes, bool), real, real & ~rev])
    h_local = LocalAggregator(d, self.slope, name="local")(h, recv, send, relation, valid)  # [N, d]

    # Global aggregator: session mean of raw embeddings, then the official hop loop.
    pos_items = items[batch.pos_node]  # [P]
    count = jnp.maximum(jax.ops.segment_sum(batch.pos_mask.astype(h.dtype), batch.pos_graph, num_graphs), 1.0)
    sess = jax.ops.segment_sum(table[pos_items] * batch.pos_mask[:, None], batch.pos_graph, num_graphs)
    sess = (sess / count[:, None])[node_graph][:, None, None, :]  # [N, 1, 1, d]
    vectors = [h[:, None, :]] + [table[batch.extra[f"nb_{k}"]] for k in range(1, self.hop + 1)]  # [N, S^k, d]
    weights = [batch.extra[f"nbw_{k}"] for k in range(1, self.hop + 1)]  # [N, S^k]
    for n_hop in range(self.hop):
      agg = GlobalAggregator(d, name=f"global_{n_hop}")  # shared by the hop levels k of this iteration
      vectors = [agg(vectors[k], vectors[k + 1].reshape(num_nodes, -1, s, d), weights[k].reshape(num_nodes, -1, s, 1),
                     sess, lambda x, salt=10 * n_hop + k: drop(x, self.dropout_gcn, salt))
                 for k in range(self.hop - n_hop)]  # [N, S^k, d] each
    h_global = vectors[0][:, 0]  # [N, d]
    h = drop(h_local, self.dropout_local, 1000) + drop(h_global, self.dropout_global, 1001)  # [N, d]

    w_1 = lambda x: x @ self.param("w_1", init, (2 * d, d))  # no bias
    select = soft_readout(self, h[batch.pos_node], batch, count, self.positions, w_1)  # [G, d]
    return BackboneOutput(local=h[batch.last_node], global_=select, items=table,
                          session=select if head else None)
