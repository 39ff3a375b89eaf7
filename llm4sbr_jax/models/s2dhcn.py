"""S2-DHCN (Xia et al., AAAI 2021), faithful to the current official xiaxin1998/DHCN code, and its hypergraph.

The hypergraph (host side, vectorised; backbones.md section 5.2): one hyperedge per *training sample*, holding the
unique items of its prefix (the augmented training prefixes, as the official `Data(train_data)`; targets are not in
any hyperedge), weights W = I. `A = D^-1 H B^-1 H^T` with B the hyperedge sizes and D the item degrees; an item in
no training prefix has an empty row (official: its X_h is E / (L + 1)). Validation and test samples never feed it.
Two exact ways to apply A inside the jitted step, both as CSR sparse x dense products with a hand-written adjoint, so
the backward pass runs the same kernel on the transposed matrix. The kernel (`kernel`): on CPU our own
(`llm4sbr_jax/cpu_kernels.py`, 2.5x faster than the next option on Beauty) where the host can build it, else
`jax.experimental.sparse` (one CSR kernel call on CPU, cuSPARSE on GPU, always on a non-CPU platform):
  * `matrix`: the symmetric `S = H B^-1 H^T` (the official precomputed n x n product), then `D^-1`; S's non-zeros
    grow with the square of hyperedge sizes (1.85M on Beauty);
  * `factored`: `D^-1 H (B^-1 (H^T X))` through the incidences (1.23M on Beauty, each visited twice per product),
    whose cost grows linearly with hyperedge size: the better choice for long sessions.
  `form="auto"` picks `matrix` when nnz(S) <= 2 x incidences (the non-zeros each form visits per product); an
  explicit `factored` never builds S.
Item channel: `X_h = mean(X0, A X0, ..., A^L X0)`, X0 = E (n rows, no padding row as official; lookups go through
a prepended zero row).

Session (`generate_sess_emb`): the click sequence reversed (position 0 = the most recent click), `z = tanh(W_1
[p_rev ; x_i] + b_1)`, `z = sigmoid(glu1(z) + glu2(mean_i x_i))`, `beta = z w_2` (no softmax), `theta_h = sum_i
beta_i x_i`, with x_i the rows of X_h; scores `theta_h . X_h` (the convolved table, quirk 11). The position table
has max(200, longest prefix) rows (the official 200 would not cover Beauty's 202-click prefixes).

Line-graph channel and self-supervision (training only, as official; `loss` collection, term `ssl`):
  * per batch, inside the step: Jaccard overlap of the batch's sessions' unique item sets (static [G, G], diagonal 0,
    empty slots isolated), `D^-1 (A + I)`, L layers, mean over layers, starting from the mean of the RAW item
    embeddings over the session's clicks, **detached** from E as in the official code (stop_gradient);
  * `pos = theta_h . theta_l`, `neg = theta_l . corrupt(theta_h)` with corrupt = a random row permutation among the
    batch's real sessions, then a random column permutation, both from the step key (`make_rng('dropout')`);
    `ssl = sum_b -log(1e-8 + sigmoid(pos)) - log(1e-8 + (1 - sigmoid(neg)))`, with 1 - sigmoid(neg) computed as
    sigmoid(-neg) (quirk fixed on purpose: XLA's constant folding of the official form gives log(0) = -inf once
    the sigmoid saturates in float32; the official float32 value there is -log(1e-8); ours is finite too and differs
    only where neg > ~17);
  * the term is reported as (sum, count) and weighted `beta x batch_size` by the registry, so the objective is the
    official `CE + beta * sum` for a full batch and scales with the real count for a short one.
Under data parallelism each device builds the line graph and the corruption of its own shard only (like the
uniformity pairs), so with beta > 0 the objective depends on the device count; with beta = 0 it does not (tested).
Training as the official code: Adam lr 1e-3, no weight decay, no lr schedule (`official` in the registry).
Official evaluation quirks fixed on purpose: the test set is not shuffled and no sample is evaluated twice (the
official last batch overlaps the previous one); selection on a validation split as for every backbone.

LLM4SBR pairing: `global_` = theta_h (the whole-session readout) with the long-term intent, `local` = the last
click's row of X_h with the short-term one; the bare session vector is theta_h.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp
from jax.experimental import sparse as jsparse

from llm4sbr_jax import cpu_kernels
from llm4sbr_jax.dataset import Split
from llm4sbr_jax.graphs import SessionBatch
from llm4sbr_jax.models.base import BackboneOutput, uniform_init
from llm4sbr_jax.models.gcegnn import OFFICIAL_POSITIONS, soft_readout

FORMS = ("auto", "matrix", "factored")
KERNELS = ("auto", "native", "bcsr")


@dataclasses.dataclass(frozen=True, eq=False)
class Hypergraph:
  """A = D^-1 H B^-1 H^T over items 1..n (row i - 1 = item i), in one of the two forms (module docstring).

  Attributes:
    form: "matrix" or "factored".
    num_items: n.
    num_edges: hyperedges (training samples).
    dinv: [n] 1 / item degree (0 for an item in no hyperedge).
    arrays: the form's CSR matrices (and the hyperedge weights B^-1 of the factored form).
    nnz: non-zeros of S (None for the factored form, which does not build it); incidences: non-zeros of H.
    build_seconds: host time to build it.
    kernel: "native" (`cpu_kernels` on CPU, `jax.experimental.sparse` elsewhere) or "bcsr" (that one everywhere).
  """

  form: str
  num_items: int
  num_edges: int
  dinv: np.ndarray
  arrays: dict
  nnz: Optional[int]
  incidences: int
  build_seconds: float
  kernel: str = "bcsr"

  def apply(self, x: jax.Array) -> jax.Array:
    """A @ x for x [n, d] (differentiable; the adjoint runs the same CSR kernel on the transposed matrix)."""
    a, native = self.arrays, self.kernel == "native"
    if self.form == "matrix":
      return self.dinv[:, None] * _csr_product(a["s"], a["s"], native)(x)  # S is symmetric: its own adjoint
    to_items = _csr_product(a["h"], a["ht"], native)  # H (n x E), adjoint H^T
    to_edges = _csr_product(a["ht"], a["h"], native)  # H^T (E x n), adjoint H
    return self.dinv[:, None] * to_items(a["binv"][:, None] * to_edges(x))


def _matmul(matrix: jsparse.BCSR, native: bool) -> Callable[[jax.Array], jax.Array]:
  """x -> matrix @ x: `cpu_kernels` when lowered for the CPU (if `native`), else `BCSR @ dense`."""
  bcsr = lambda x: matrix @ x
  if not native:
    return bcsr
  return cpu_kernels.on_cpu(
      lambda x: cpu_kernels.csr_matmul(matrix.indptr, matrix.indices, matrix.data, x, matrix.shape[0]), bcsr)


def _csr_product(matrix: jsparse.BCSR, adjoint: jsparse.BCSR, native: bool) -> Callable[[jax.Array], jax.Array]:
  """x -> matrix @ x with `adjoint` (matrix^T) @ g as its VJP, both through the same CSR sparse-dense kernel.

  `BCSR @ dense` is one XLA custom call on CPU (2.3-2.6x faster than a gather + scatter-add of the entries on
  Beauty's 1.85M non-zeros x 100 columns; `cpu_kernels` is 2.5x faster again), cuSPARSE on GPU; the VJP is written
  out so that the backward pass uses the kernel instead of differentiating through the sparse format.
  """
  forward, backward = _matmul(matrix, native), _matmul(adjoint, native)
  op = jax.custom_vjp(forward)
  op.defvjp(lambda x: (forward(x), None), lambda _, g: (backward(g),))
  return op


def _bcsr(m: sp.csr_matrix) -> jsparse.BCSR:
  m = m.astype(np.float32)
  m.sort_indices()  # column-sorted rows: each cache-blocked pass of the native kernel stays within its block
  return jsparse.BCSR.from_scipy_sparse(m)


def _csr(rows: np.ndarray, cols: np.ndarray, values: np.ndarray, shape: tuple[int, int]) -> jsparse.BCSR:
  return _bcsr(sp.csr_matrix((values, (rows, cols)), shape=shape))


def build_hypergraph(train: Split, num_items: int, form: str = "auto", kernel: str = "auto") -> Hypergraph:
  """The hypergraph of `train`'s prefixes (one hyperedge per sample) in `form` (see the module docstring).

  `kernel`: "native", "bcsr", or "auto" (native where `cpu_kernels` builds on this CPU host, else bcsr).
  """
  if form not in FORMS:
    raise ValueError(f"config.s2dhcn.form: expected one of {FORMS}, got {form!r}")
  if kernel not in KERNELS:
    raise ValueError(f"config.s2dhcn.kernel: expected one of {KERNELS}, got {kernel!r}")
  if kernel == "auto":
    kernel = "native" if cpu_kernels.available() else "bcsr"
  elif kernel == "native" and jax.default_backend() == "cpu" and not cpu_kernels.available():
    raise RuntimeError("config.s2dhcn.kernel='native': the CPU kernel could not be built (see the warning above); "
                       "use 'auto' or 'bcsr'")
  start = time.perf_counter()
  items = np.asarray(train.items, np.int64)
  num_edges = len(train)
  edge_of = np.repeat(np.arange(num_edges, dtype=np.int64), np.diff(np.asarray(train.offsets, np.int64)))
  keys = np.unique(edge_of * (num_items + 1) + items)  # unique (hyperedge, item): sorted by edge, then item
  e_edge, e_item = keys // (num_items + 1), keys % (num_items + 1) - 1  # item ids 1..n -> rows 0..n-1
  size = np.bincount(e_edge, minlength=num_edges).astype(np.float64)
  degree = np.bincount(e_item, minlength=num_items).astype(np.float64)
  dinv = np.where(degree > 0, 1.0 / np.maximum(degree, 1.0), 0.0).astype(np.float32)
  binv = np.where(size > 0, 1.0 / np.maximum(size, 1.0), 0.0)
  s = None
  if form != "factored":
    ht = sp.csr_matrix((np.ones(len(keys)), (e_edge, e_item)), shape=(num_edges, num_items))
    s = (ht.T @ sp.diags(binv) @ ht).tocsr()
    if form == "auto":
      form = "matrix" if s.nnz <= 2 * len(keys) else "factored"
  if form == "matrix":
    arrays = {"s": _bcsr(s)}
  else:
    ones = np.ones(len(keys), np.float32)
    arrays = {"ht": _csr(e_edge, e_item, ones, (num_edges, num_items)),
              "h": _csr(e_item, e_edge, ones, (num_items, num_edges)), "binv": binv.astype(np.float32)}
  return Hypergraph(form, num_items, num_edges, dinv, arrays, None if s is None else int(s.nnz), int(len(keys)),
                    time.perf_counter() - start, kernel)


def layer_mean(x: jax.Array, propagate: Callable[[jax.Array], jax.Array], layers: int) -> jax.Array:
  """mean over l = 0..L of propagate^l(x): both channels' output (the item table X_h, the line-graph theta_l)."""
  total = x
  for _ in range(layers):
    x = propagate(x)
    total = total + x
  return total / (layers + 1)


def line_graph(items: jax.Array, node_graph: jax.Array, num_graphs: int, num_items: int) -> jax.Array:
  """The batch's line graph `D^-1 (A + I)` [G, G]: Jaccard overlap of the sessions' unique item sets.

  The shared items of every pair of sessions, whichever product is smaller for the static shapes: through the
  session x item incidence ([G, n + 1] by a scatter, then its Gram matrix: G^2 (n + 1) multiply-adds) or through
  node pairs of the same item (`member^T same member`: G N^2). Both count exactly (sums of 0/1 in float32).
  ML-100K's long sessions (N = 9,128 nodes a batch, n = 1,345) take the incidence: 14M instead of 8.4G.

  Args:
    items: [N] item id per node (0 = padding node); a session's nodes are its unique items.
    node_graph: [N] graph slot of each node.
    num_graphs: G.
    num_items: n (item ids 1..n).
  """
  real = items > 0  # [N]
  member = jax.nn.one_hot(node_graph, num_graphs) * real[:, None]  # [N, G]
  if (num_items + 1) <= items.shape[0] ** 2 // num_graphs:
    incidence = jnp.zeros((num_graphs, num_items + 1)).at[node_graph, items].add(real.astype(jnp.float32))
    inter = incidence @ incidence.T  # [G, G]
  else:
    same = ((items[:, None] == items[None, :]) & real[:, None] & real[None, :]).astype(member.dtype)  # [N, N]
    inter = member.T @ same @ member  # [G, G]
  size = jnp.sum(member, axis=0)  # [G]
  jaccard = inter / jnp.maximum(size[:, None] + size[None, :] - inter, 1.0)
  adj = jnp.where(jnp.eye(num_graphs, dtype=bool), 1.0, jaccard)  # A + I (the official A has a zero diagonal)
  return adj / jnp.sum(adj, axis=1, keepdims=True)


def corruption(key: jax.Array, graph_mask: jax.Array, hidden: int) -> tuple[jax.Array, jax.Array]:
  """(row permutation [G] mapping real slots to real slots, column permutation [d]) of the SSL corruption."""
  row_key, col_key = jax.random.split(key)
  num_graphs = graph_mask.shape[0]
  shuffled = jnp.argsort(jnp.where(graph_mask, jax.random.uniform(row_key, (num_graphs,)), 2.0))  # real ones first
  real_slots = jnp.argsort(~graph_mask, stable=True)  # the real slots in order, then the empty ones
  rows = jnp.arange(num_graphs).at[real_slots].set(shuffled)
  return rows, jax.random.permutation(col_key, hidden)


def ssl_terms(theta_h: jax.Array, theta_l: jax.Array, rows: jax.Array, cols: jax.Array, graph_mask: jax.Array
              ) -> tuple[jax.Array, jax.Array]:
  """The official contrastive loss summed over the real sessions, and their count."""
  pos = jnp.sum(theta_h * theta_l, -1)  # [G]
  neg = jnp.sum(theta_l * theta_h[rows][:, cols], -1)  # [G]
  # 1 - sigmoid(neg) as sigmoid(-neg): XLA folds the official `1e-8 + (1 - sigmoid(neg))` into
  # `(1e-8 + 1) - sigmoid(neg)`, which is 0 in float32 once the sigmoid rounds to 1 (neg > ~17): log(0) made a
  # Beauty run's loss NaN at epoch 6. Equal in exact arithmetic; finite (at most -log 1e-8) always.
  per = -jnp.log(1e-8 + jax.nn.sigmoid(pos)) - jnp.log(1e-8 + jax.nn.sigmoid(-neg))
  mask = graph_mask.astype(per.dtype)
  return jnp.sum(per * mask), jnp.sum(mask)


class S2DHCN(nn.Module):
  """S2-DHCN backbone on packed session batches (see the module docstring).

  Attributes:
    num_items: n; the embedding table has n rows (no padding row).
    hypergraph: the training hypergraph (`build_hypergraph`).
    hidden: d.
    layers: L, hypergraph and line-graph layers (official 3).
    positions: rows of the reversed position table.
  """

  num_items: int
  hypergraph: Hypergraph
  hidden: int = 100
  layers: int = 3
  positions: int = OFFICIAL_POSITIONS

  @nn.compact
  def __call__(self, batch: SessionBatch, train: bool = False, head: bool = True) -> BackboneOutput:
    d, init = self.hidden, uniform_init(self.hidden)
    g = batch.graph
    num_graphs = batch.graph_mask.shape[0]
    embedding = self.param("embedding", init, (self.num_items, d))  # [n, d]
    zero = jnp.zeros((1, d), embedding.dtype)
    table = jnp.concatenate([zero, layer_mean(embedding, self.hypergraph.apply, self.layers)])  # [n + 1, d]
    pos_items = g.nodes["item"][batch.pos_node]  # [P]
    mask = batch.pos_mask[:, None].astype(table.dtype)  # [P, 1]
    count = jnp.maximum(jax.ops.segment_sum(batch.pos_mask.astype(table.dtype), batch.pos_graph, num_graphs), 1.0)
    w_1 = nn.Dense(d, kernel_init=init, bias_init=init, name="w_1")
    theta_h = soft_readout(self, table[pos_items], batch, count, self.positions, w_1)  # [G, d]

    if train:  # the line-graph channel only feeds the self-supervised term
      raw = jnp.concatenate([zero, embedding])[pos_items] * mask  # [P, d]
      x = jax.lax.stop_gradient(jax.ops.segment_sum(raw, batch.pos_graph, num_graphs) / count[:, None])  # [G, d]
      node_graph = jnp.repeat(jnp.arange(num_graphs), g.n_node, total_repeat_length=g.nodes["item"].shape[0])
      conv = line_graph(g.nodes["item"], node_graph, num_graphs, self.num_items)  # [G, G]
      theta_l = layer_mean(x, lambda v: conv @ v, self.layers)  # [G, d]
      rows, cols = corruption(self.make_rng("dropout"), batch.graph_mask, d)
      self.sow("losses", "ssl", ssl_terms(theta_h, theta_l, rows, cols, batch.graph_mask),
               reduce_fn=lambda _, v: v, init_fn=tuple)
    last = table[g.nodes["item"][batch.last_node]]  # [G, d]
    return BackboneOutput(local=last, global_=theta_h, items=table, session=theta_h if head else None)
