"""A PyTorch GCE-GNN written from the reference equations (`../shared/reference/backbones.md` section 4), for the
parity test and as a speed baseline. Not part of the JAX library.

It follows the official code (CCIIPLab/GCE-GNN after commit 089d021: the global attention feature is
`[s * h_nb ; w]` and `s` is the session MEAN of the raw item embeddings):

* the global item graph is counted once over the full training sessions (`reference_global_graph`, pairs up to 3
  clicks apart in both directions, top `sample_num` neighbours by raw count) and sampled once to a fixed
  [n+1, S] table (`reference_handle_adj`, with replacement for items with fewer than S neighbours);
* every sample is built on the host by a Python loop (`reference_batch`): the prefix is reversed (most recent click
  first) and right-padded to the split's longest, the unique-node list (padding item 0 included) is padded to the
  same length, and the session graph carries relation codes 1 (self), 2 (out), 3 (in), 4 (both) found on the
  reversed order;
* the forward is a local attention over the session graph (`-9e15` off the edges), a `hop`-level global attention
  over the sampled neighbours, `dropout(h_local) + dropout(h_global)`, and a soft-attention readout with reversed
  position embeddings and no softmax; scores over `E[1:]`.

The official `LocalAggregator.bias`, `GlobalAggregator.bias` and `CombineGraph.linear_transform` are created (and
get weight decay) but never used in the forward; they are left out here.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from experiments.torch_srgnn import official_init_

__all__ = ["GlobalAggregator", "LocalAggregator", "TorchGCEGNN", "load_flax_params", "reference_batch",
           "reference_global_graph", "reference_handle_adj"]


def reference_global_graph(seqs: Sequence[Sequence[int]], num_items: int,
                           sample_num: int = 12) -> tuple[list[list[int]], list[list[int]]]:
  """The official `build_graph.py`: the global neighbour lists and their raw co-occurrence counts.

  Args:
    seqs: The full (unaugmented) training sessions, item ids 1..num_items.
    num_items: Largest item id; the lists have num_items + 1 entries (entry 0 stays empty).
    sample_num: Neighbours kept per item.

  Returns:
    (adj, weight): `adj[a]` lists the neighbours of `a` by count, descending (ties in first-seen order, Python's
    stable sort), truncated to `sample_num`; `weight[a]` their counts.
  """
  relation = []
  for s in seqs:
    for k in range(1, 4):
      for j in range(len(s) - k):
        relation.append((s[j], s[j + k]))
        relation.append((s[j + k], s[j]))
  counts: list[dict[int, int]] = [{} for _ in range(num_items + 1)]
  for a, b in relation:
    counts[a][b] = counts[a].get(b, 0) + 1
  adj, weight = [], []
  for c in counts:
    ranked = sorted(c.items(), reverse=True, key=lambda x: x[1])[:sample_num]
    adj.append([b for b, _ in ranked])
    weight.append([w for _, w in ranked])
  return adj, weight


def reference_handle_adj(adj: Sequence[Sequence[int]], weight: Sequence[Sequence[int]], num_items: int,
                         sample_num: int, rng: np.random.RandomState) -> tuple[np.ndarray, np.ndarray]:
  """The official `utils.handle_adj`: a fixed sample of `sample_num` neighbours per item.

  Items with at least `sample_num` neighbours get a permutation of them (choice without replacement), items with
  fewer get `sample_num` draws with replacement, items with none (and item 0) keep zero rows.

  Args:
    adj: Neighbour lists from `reference_global_graph` (indexed by item id).
    weight: Their counts.
    num_items: Largest item id.
    sample_num: Neighbours per item.
    rng: The random state (the official code uses the global numpy state, seeded 2020 in `main.py`).

  Returns:
    (adj_entity, num_entity), both int64 [num_items + 1, sample_num].
  """
  adj_entity = np.zeros([num_items + 1, sample_num], dtype=np.int64)
  num_entity = np.zeros([num_items + 1, sample_num], dtype=np.int64)
  for entity in range(1, num_items + 1):
    neighbour, neighbour_weight = list(adj[entity]), list(weight[entity])
    n = len(neighbour)
    if n == 0:
      continue
    picked = rng.choice(list(range(n)), size=sample_num, replace=n < sample_num)
    adj_entity[entity] = np.array([neighbour[i] for i in picked])
    num_entity[entity] = np.array([neighbour_weight[i] for i in picked])
  return adj_entity, num_entity


def reference_batch(seqs: Sequence[Sequence[int]], len_max: int) -> dict[str, torch.Tensor]:
  """The official `utils.handle_data` + `Data.__getitem__` for one batch of prefixes, stacked like the DataLoader.

  Args:
    seqs: Prefixes in click order, item ids >= 1.
    len_max: The split's longest prefix (longer prefixes keep their last `len_max` clicks, as `handle_data` does
      when given `train_len`).

  Returns:
    alias [B, L] (node index of each reversed position), adj [B, L, L] float relation codes 0..4, items [B, L]
    (sorted unique node ids incl. 0 when padded, padded with 0 to L), mask [B, L], inputs [B, L] (the reversed,
    right-padded prefix); L = len_max.
  """
  rows, masks = [], []
  for s in seqs:
    le = len(s)
    if le < len_max:
      rows.append(list(reversed(s)) + [0] * (len_max - le))
      masks.append([1] * le + [0] * (len_max - le))
    else:
      rows.append(list(reversed(s[-len_max:])))
      masks.append([1] * len_max)
  alias, adjs, items = [], [], []
  for u_input in np.asarray(rows):
    node = np.unique(u_input)
    items.append(node.tolist() + (len_max - len(node)) * [0])
    adj = np.zeros((len_max, len_max))
    for i in np.arange(len(u_input) - 1):
      u = np.where(node == u_input[i])[0][0]
      adj[u][u] = 1
      if u_input[i + 1] == 0:
        break
      v = np.where(node == u_input[i + 1])[0][0]
      if u == v or adj[u][v] == 4:
        continue
      adj[v][v] = 1
      if adj[v][u] == 2:
        adj[u][v] = 4
        adj[v][u] = 4
      else:
        adj[u][v] = 2
        adj[v][u] = 3
    adjs.append(adj)
    alias.append([np.where(node == i)[0][0] for i in u_input])
  return {"alias": torch.tensor(np.asarray(alias)).long(), "adj": torch.tensor(np.asarray(adjs)).float(),
          "items": torch.tensor(np.asarray(items)).long(), "mask": torch.tensor(np.asarray(masks)).long(),
          "inputs": torch.tensor(np.asarray(rows)).long()}


class LocalAggregator(nn.Module):
  """Session-graph attention with one vector per relation code (`a_0..a_3` for codes 1..4)."""

  def __init__(self, dim: int, alpha: float):
    super().__init__()
    self.alpha = alpha
    for k in range(4):
      setattr(self, f"a_{k}", nn.Parameter(torch.empty(dim, 1)))

  def forward(self, h: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
    """`softmax_j(e_code(i,j)(i, j)) @ h`, with `-9e15` where there is no edge; h [B, N, d], adj [B, N, N]."""
    pair = h[:, :, None, :] * h[:, None, :, :]  # [B, N, N, d]: h_i * h_j
    logits = torch.full_like(adj, -9e15)
    for k in range(4):
      e_k = F.leaky_relu(torch.matmul(pair, getattr(self, f"a_{k}")).squeeze(-1), self.alpha)
      logits = torch.where(adj.eq(k + 1), e_k, logits)
    return torch.matmul(torch.softmax(logits, -1), h)


class GlobalAggregator(nn.Module):
  """One hop of attention over the sampled global neighbours (`w_1` (d+1, d), `w_2` (d, 1), `w_3` (2d, d))."""

  def __init__(self, dim: int, dropout: float):
    super().__init__()
    self.dim, self.dropout = dim, dropout
    self.w_1 = nn.Parameter(torch.empty(dim + 1, dim))
    self.w_2 = nn.Parameter(torch.empty(dim, 1))
    self.w_3 = nn.Parameter(torch.empty(2 * dim, dim))

  def forward(self, self_vectors: torch.Tensor, neighbour_vector: torch.Tensor, neighbour_weight: torch.Tensor,
              session: torch.Tensor) -> torch.Tensor:
    """New node vectors [B, M, d].

    Args:
      self_vectors: [B, M, d].
      neighbour_vector: [B, M, S, d].
      neighbour_weight: Raw co-occurrence counts [B, M, S].
      session: The session mean repeated per node [B, M, d].
    """
    feature = torch.cat([session[:, :, None, :] * neighbour_vector, neighbour_weight[..., None]], -1)
    att = torch.matmul(F.leaky_relu(torch.matmul(feature, self.w_1), negative_slope=0.2), self.w_2).squeeze(-1)
    att = torch.softmax(att, -1)[..., None]  # over the S neighbours
    neighbour = torch.sum(att * neighbour_vector, -2)
    out = F.dropout(torch.cat([self_vectors, neighbour], -1), self.dropout, training=self.training)
    return torch.relu(torch.matmul(out, self.w_3)).view(self_vectors.shape[0], -1, self.dim)


class TorchGCEGNN(nn.Module):
  """GCE-GNN as in the official PyTorch code (`CombineGraph`; parameter names kept, unused ones left out)."""

  def __init__(self, num_node: int, adj_all: np.ndarray, num: np.ndarray, hidden: int = 100, hop: int = 1,
               sample_num: int = 12, dropout_local: float = 0.0, dropout_global: float = 0.5,
               dropout_gcn: float = 0.0, alpha: float = 0.2, max_len: int = 200):
    """Builds the model.

    Args:
      num_node: Rows of the embedding table (number of items + 1; row 0 is padding).
      adj_all: Sampled global neighbours [num_node, sample_num] (`reference_handle_adj`).
      num: Their raw counts [num_node, sample_num].
      hidden: Hidden size d.
      hop: Global hops (`n_iter`).
      sample_num: Neighbours per item (S).
      dropout_local: Dropout on h_local.
      dropout_global: Dropout on h_global.
      dropout_gcn: Dropout inside each global aggregator (on `[self ; neighbour]`).
      alpha: LeakyReLU slope of the local aggregator.
      max_len: Rows of the position embedding (200 in the official code).
    """
    super().__init__()
    self.dim, self.hop, self.sample_num = hidden, hop, sample_num
    self.dropout_local, self.dropout_global = dropout_local, dropout_global
    self.register_buffer("adj_all", torch.as_tensor(np.asarray(adj_all)).long(), persistent=False)
    self.register_buffer("num", torch.as_tensor(np.asarray(num)).float(), persistent=False)
    self.local_agg = LocalAggregator(hidden, alpha)
    self.global_agg: list[GlobalAggregator] = []
    for i in range(hop):  # registered as agg_gcn_{i}, as in the official state dict
      agg = GlobalAggregator(hidden, dropout_gcn)
      self.add_module(f"agg_gcn_{i}", agg)
      self.global_agg.append(agg)
    self.embedding = nn.Embedding(num_node, hidden)
    self.pos_embedding = nn.Embedding(max_len, hidden)
    self.w_1 = nn.Parameter(torch.empty(2 * hidden, hidden))
    self.w_2 = nn.Parameter(torch.empty(hidden, 1))
    self.glu1 = nn.Linear(hidden, hidden)
    self.glu2 = nn.Linear(hidden, hidden, bias=False)
    official_init_(self, hidden)

  def local_and_global(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(h_local, h_global), each [B, N, d] over the unique-node list, before the combining dropout."""
    items, mask = batch["items"], batch["mask"]
    b, n = items.shape
    h = self.embedding(items)
    h_local = self.local_agg(h, batch["adj"])

    neighbours, weights = [items], []
    for _ in range(self.hop):
      last = neighbours[-1].reshape(-1)
      neighbours.append(self.adj_all[last].view(b, -1))
      weights.append(self.num[last].view(b, -1))
    vectors = [self.embedding(i) for i in neighbours]
    maskf = mask.float()
    session = torch.sum(self.embedding(batch["inputs"]) * maskf[..., None], 1) / torch.sum(maskf, -1)[:, None]
    session_info = [session[:, None, :].expand(-1, vectors[i].shape[1], -1) for i in range(self.hop)]
    for n_hop in range(self.hop):
      vectors = [self.global_agg[n_hop](vectors[k], vectors[k + 1].view(b, -1, self.sample_num, self.dim),
                                        weights[k].view(b, -1, self.sample_num), session_info[k])
                 for k in range(self.hop - n_hop)]
    return h_local, vectors[0].view(b, n, self.dim)

  def node_hidden(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """`dropout(h_local) + dropout(h_global)` [B, N, d] (dropout only in training mode)."""
    h_local, h_global = self.local_and_global(batch)
    h_local = F.dropout(h_local, self.dropout_local, training=self.training)
    h_global = F.dropout(h_global, self.dropout_global, training=self.training)
    return h_local + h_global

  def encode(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(select [B, d], seq_h [B, L, d]): the session vector and the per-position hidden (reversed positions)."""
    h = self.node_hidden(batch)
    alias, mask = batch["alias"], batch["mask"]
    seq_h = torch.stack([h[i][alias[i]] for i in range(len(alias))])
    maskf = mask.float()[..., None]
    b, length = seq_h.shape[:2]
    pos = self.pos_embedding.weight[:length][None].expand(b, -1, -1)  # position 0 = most recent click
    hs = (torch.sum(seq_h * maskf, -2) / torch.sum(maskf, 1))[:, None, :].expand(-1, length, -1)
    nh = torch.tanh(torch.matmul(torch.cat([pos, seq_h], -1), self.w_1))
    nh = torch.sigmoid(self.glu1(nh) + self.glu2(hs))
    beta = torch.matmul(nh, self.w_2) * maskf  # no softmax
    return torch.sum(beta * seq_h, 1), seq_h

  def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Scores [B, num_node - 1] of a `reference_batch` (column `i` is item `i + 1`)."""
    select, _ = self.encode(batch)
    return torch.matmul(select, self.embedding.weight[1:].transpose(1, 0))


def load_flax_params(model: TorchGCEGNN, params: Mapping[str, Any]) -> None:
  """Copies the JAX GCE-GNN parameters (`params["params"]["backbone"]`) into `model`.

  Raw matrices (`a_k`, `w_1`, `w_2`, `w_3`) are used as `x @ w` in both frameworks and copied as they are; only the
  Dense kernels (`glu1`, `glu2`) are transposed.

  Raises:
    KeyError: A parameter is missing from the Flax tree.
    ValueError: A shape does not match.
  """
  bb = params["params"]["backbone"]
  t = lambda x: torch.tensor(np.asarray(x), dtype=torch.float32)
  pairs = [(model.embedding.weight, bb["embedding"]), (model.pos_embedding.weight, bb["pos_embedding"]),
           (model.w_1, bb["w_1"]), (model.w_2, bb["w_2"]),
           (model.glu1.weight, t(bb["glu1"]["kernel"]).T), (model.glu1.bias, bb["glu1"]["bias"]),
           (model.glu2.weight, t(bb["glu2"]["kernel"]).T)]
  pairs += [(getattr(model.local_agg, f"a_{k}"), bb["local"][f"a_{k}"]) for k in range(4)]
  for i, agg in enumerate(model.global_agg):
    pairs += [(getattr(agg, name), bb[f"global_{i}"][name]) for name in ("w_1", "w_2", "w_3")]
  with torch.no_grad():
    for target, value in pairs:
      value = t(value)
      if target.shape != value.shape:
        raise ValueError(f"shape {tuple(value.shape)} does not fit {tuple(target.shape)}")
      target.copy_(value)


def build_baseline(train: Any, num_items: int, hidden: int) -> tuple[nn.Module, Any]:
  """(model, batch builder) for the speed benchmark: the official GCE-GNN, global graph from `train` built with the
  official Python loops (timed into nothing here: the benchmark reports our vectorised build separately)."""
  from llm4sbr_jax.models import gcegnn  # pylint: disable=g-import-not-at-top  (numpy only)
  items, offsets = gcegnn.graph_sequences(train)
  seqs = [items[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:])]
  adj, weight = reference_global_graph(seqs, num_items)
  adj_all, num = reference_handle_adj(adj, weight, num_items, 12, np.random.RandomState(2020))
  max_len = max(200, int(train.lengths.max()))
  return TorchGCEGNN(num_items + 1, adj_all, num, hidden, max_len=max_len), reference_batch
