"""Scores over a large catalogue in item chunks: cross-entropy and target ranks without the [G, n] score matrix.

With `config.score_chunk = C > 0` a model returns `ChunkedScores` (its session vectors and item table) instead of
scores [G, n]. The loss's log-sum-exp over all items runs as a scan over item chunks (online max / sum), with a
custom VJP that recomputes each chunk's scores in the backward pass; the target ranks count, chunk by chunk, the
items scored strictly higher than the target. Peak activation memory is then O(G x C) instead of O(G x n); values
equal the unchunked path up to float summation order (tested). A top-K list is not needed for HR / MRR / NDCG (the
ranks give them exactly).

`score_dtype = "bfloat16"` (either path) runs the item-scoring products with bfloat16 operands and float32
accumulation (mixed precision for GPUs / TPUs: parameters, log-sum-exp and loss stay float32); the backbones' own
layers stay float32.

Backbones whose scores are not a plain dot product (TAGNN's target-aware `extra_scores`, already [G, n]) do not
support chunked scoring: `score` raises.

Row-sharded scoring (`config.shard_scores`, with `shard_items`, inside shard_map): the model sees each item table as
a `ShardedTable`, a view of this device's rows [R, d] of the table padded to D x R rows. Looking items up
(`table[ids]`) is a sharded gather: the ids of every device are all-gathered, each device reads the rows it owns
(zeros elsewhere), and a reduce-scatter returns every device its rows; the scores stay implicit (`ShardedScores`):
every device scores the sessions of *all* devices against its own rows [D x G, R], the log-sum-exp merges the
per-device maxima and sums with pmax / psum, the target's score comes from the device that owns it (psum of one
non-zero), and the rank adds up each device's count of higher-scored items. No device ever holds the whole table,
its gradient, or a [G, n] score matrix over all items (autodiff transposes the all-gather into a reduce-scatter and
the reduce-scatter into an all-gather, so each device's table gradient is complete for its rows). A backbone that
needs the whole table for anything else (TAGNN's target-aware term, S2-DHCN's convolution) cannot use it: the view
raises a clear error when it is used as an array.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import struct
from flax.core import meta

from llm4sbr_jax import cpu_kernels


def count_above(scores: jax.Array, own: jax.Array, valid: jax.Array | None = None) -> jax.Array:
  """[G] per row of scores [G, C], the columns (where `valid` [C]) scored strictly above own [G]; NaN counts as above,
  ties do not."""
  above = (scores > own[:, None]) | jnp.isnan(scores)  # [G, C]
  return jnp.sum(above if valid is None else above & valid[None, :], axis=-1)


def rank_from_count(own: jax.Array, higher: jax.Array, num_items: int) -> jax.Array:
  """1 + higher, or the last rank num_items where the target's own score is NaN; [G]."""
  return jnp.where(jnp.isnan(own), num_items, 1 + higher)


@struct.dataclass
class PaddedScores:
  """Scores [G, n] kept as the whole product [G, n + 1], the padding item's column 0 included (evaluation).

  The ranks then count higher scores on the product itself (`padded_ranks`): slicing column 0 off first would make
  XLA copy the [G, n] matrix before a custom call, or materialise the comparison before reducing it.
  """

  product: jax.Array  # [G, n + 1]; column j is item id j

  @property
  def num_items(self) -> int:
    return self.product.shape[-1] - 1

  def dense(self) -> jax.Array:
    """The scores [G, n] (column j = item id j + 1)."""
    return self.product[:, 1:]


def padded_ranks(scores: PaddedScores, labels: jax.Array) -> jax.Array:
  """1 + the number of items scored strictly higher than the target (NaN: higher), [G]; labels 0-based items.

  On CPU `cpu_kernels.count_higher` reads the product once (0.37 ms less than XLA's compare-and-reduce for SR-GNN on
  Beauty, docs/results.md); elsewhere, or without the kernels, the same count in jax.numpy.
  """
  product, columns = scores.product, labels + 1  # [G, n + 1], [G]
  own = jnp.take_along_axis(product, columns[:, None], axis=-1)[:, 0]  # [G]

  higher = cpu_kernels.on_cpu(lambda p: cpu_kernels.count_higher(p, columns, first=1),
                              lambda p: count_above(p[:, 1:], own))(product)
  return rank_from_count(own, higher, scores.num_items)


@struct.dataclass
class ChunkedScores:
  """Scores [G, n] = session @ items[1:].T, never materialised; column j is item id j + 1."""

  session: jax.Array  # [G, d]
  items: jax.Array  # [n + 1, d]; row 0 (padding) is never scored
  chunk: int = struct.field(pytree_node=False)
  dtype: str = struct.field(pytree_node=False, default="float32")  # operand dtype of the score products

  @property
  def num_items(self) -> int:
    return self.items.shape[0] - 1


def product(a: jax.Array, b: jax.Array, dtype: str = "float32") -> jax.Array:
  """a @ b.T ([G, d] x [C, d] -> [G, C]) with `dtype` operands, accumulated and returned in float32."""
  return jnp.einsum("gd,cd->gc", a.astype(dtype), b.astype(dtype), preferred_element_type=jnp.float32)


def _chunked_table(items: jax.Array, chunk: int) -> tuple[jax.Array, jax.Array]:
  """items[1:] in chunks [K, C, d] (zero rows past the end) and which of those rows are items [K, C]."""
  table = items[1:]  # [n, d]
  n = table.shape[0]
  k = -(-n // chunk)
  table = jnp.pad(table, ((0, k * chunk - n), (0, 0))).reshape(k, chunk, -1)  # [K, C, d]
  return table, (jnp.arange(k * chunk) < n).reshape(k, chunk)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def logsumexp(session: jax.Array, items: jax.Array, chunk: int, dtype: str = "float32") -> jax.Array:
  """log sum_j exp(session . items[j]) over items 1..n, [G], scanning `chunk` items at a time."""
  return _lse_fwd(session, items, chunk, dtype)[0]


def _lse_fwd(session, items, chunk, dtype):
  table, valid = _chunked_table(items, chunk)
  g = session.shape[0]

  def step(carry, xs):
    peak, total = carry  # [G] each: running max and sum of exp(score - max)
    rows, ok = xs  # [C, d], [C]
    s = jnp.where(ok[None, :], product(session, rows, dtype), -jnp.inf)  # [G, C]
    new_peak = jnp.maximum(peak, jnp.max(s, axis=-1))
    total = total * jnp.exp(peak - new_peak) + jnp.sum(jnp.exp(s - new_peak[:, None]), axis=-1)
    return (new_peak, total), None

  init = (jnp.full((g,), -jnp.inf, jnp.float32), jnp.zeros((g,), jnp.float32))
  (peak, total), _ = jax.lax.scan(step, init, (table, valid))
  lse = peak + jnp.log(total)
  return lse, (session, items, lse)


def _lse_bwd(chunk, dtype, res, grad):
  session, items, lse = res
  table, valid = _chunked_table(items, chunk)

  def step(d_session, xs):
    rows, ok = xs
    p = jnp.where(ok[None, :], jnp.exp(product(session, rows, dtype) - lse[:, None]), 0.0) * grad[:, None]  # [G, C]
    return d_session + product(p, rows.T, dtype), product(p.T, session.T, dtype)  # [G, d], [C, d]

  d_session, d_rows = jax.lax.scan(step, jnp.zeros_like(session), (table, valid))
  d_items = d_rows.reshape(-1, items.shape[1])[:items.shape[0] - 1]  # [n, d]
  return d_session, jnp.concatenate([jnp.zeros_like(items[:1]), d_items])


logsumexp.defvjp(_lse_fwd, _lse_bwd)


def target_scores(scores: ChunkedScores, labels: jax.Array) -> jax.Array:
  """session_g . E[label_g + 1] [G] (labels 0-based columns)."""
  rows = scores.items[labels + 1]  # [G, d]
  return jnp.einsum("gd,gd->g", scores.session.astype(scores.dtype), rows.astype(scores.dtype),
                    preferred_element_type=jnp.float32)


def nll(scores: ChunkedScores | ShardedScores, labels: jax.Array, mask: jax.Array) -> jax.Array:
  """-log softmax(scores)[label] per real row, 0 on padding rows; [G] (labels 0-based columns)."""
  if isinstance(scores, ShardedScores):
    return jnp.where(mask, _sharded_nll(scores, labels), 0.0)
  value = logsumexp(scores.session, scores.items, scores.chunk, scores.dtype) - target_scores(scores, labels)
  return jnp.where(mask, value, 0.0)


def ranks(scores: ChunkedScores | ShardedScores, labels: jax.Array) -> jax.Array:
  """1 + the number of items scored strictly higher than the target, [G] (labels 0-based columns).

  Chunked: two scans over the chunks: the first reads each target's score out of its chunk's product, the second
  counts, so every comparison is between values of the same matrix product (exact ties favour the target, as
  unchunked). Row-sharded: the target's score comes from its owner's product, and the counts are summed over devices.
  """
  if isinstance(scores, ShardedScores):
    return _sharded_ranks(scores, labels)
  table, valid = _chunked_table(scores.items, scores.chunk)
  offsets = jnp.arange(table.shape[0]) * scores.chunk  # [K]

  def own_score(own, xs):
    rows, start = xs
    inside = (labels >= start) & (labels < start + scores.chunk)  # [G]
    picked = jnp.take_along_axis(product(scores.session, rows, scores.dtype),
                                 jnp.clip(labels - start, 0, scores.chunk - 1)[:, None], axis=-1)[:, 0]
    return jnp.where(inside, picked, own), None

  def count(total, xs):
    rows, ok = xs
    s = product(scores.session, rows, scores.dtype)  # [G, C]
    return total + count_above(s, own, ok), None

  own, _ = jax.lax.scan(own_score, jnp.zeros(labels.shape, jnp.float32), (table, offsets))
  total, _ = jax.lax.scan(count, jnp.zeros(labels.shape, jnp.int32), (table, valid))
  return rank_from_count(own, total, scores.num_items)


class ShardedTable:
  """An item table [rows, d] stored split over the devices of `axis`: this device holds rows [i R, (i + 1) R).

  What a backbone may do with it: `table[ids]` (a sharded gather, any shape of int ids) and hand it to
  `base.score` (implicit `ShardedScores`). It is not an array: any other use raises, naming the option.
  """

  def __init__(self, shard: jax.Array, rows: int, axis: str):
    self.shard, self.rows, self.axis = shard, rows, axis  # [R, d], true rows, mesh axis name

  @property
  def shape(self) -> tuple[int, int]:  # the whole table's (what flax checks against the param's declared shape)
    return (self.rows, self.shard.shape[1])

  @property
  def dtype(self):
    return self.shard.dtype

  def __getitem__(self, ids: jax.Array) -> jax.Array:
    """Rows `ids` [...] of the whole table -> [..., d]: all-gather the ids, read own rows, reduce-scatter."""
    if not hasattr(ids, "dtype") or not jnp.issubdtype(ids.dtype, jnp.integer):
      self.__jax_array__()  # a slice or other index: the backbone wants the table as a whole
    ids = jnp.asarray(ids)
    r = self.shard.shape[0]
    wanted = jax.lax.all_gather(ids.reshape(-1), self.axis) - jax.lax.axis_index(self.axis) * r  # [D, M]
    mine = (wanted >= 0) & (wanted < r)
    rows = jnp.where(mine[..., None], self.shard[jnp.clip(wanted, 0, r - 1)], 0.0)  # [D, M, d]
    return jax.lax.psum_scatter(rows, self.axis, scatter_dimension=0).reshape(ids.shape + (-1,))  # [..., d]

  def __jax_array__(self):
    raise TypeError("config.shard_scores: this backbone uses its item table as a whole (not only `table[ids]` "
                    "lookups and scoring), which a row-sharded table cannot serve; use shard_scores=False")

  __array__ = __jax_array__


class ShardedRows(struct.PyTreeNode, meta.AxisMetadata):
  """The param box that hands a backbone its table as a `ShardedTable` (flax unboxes params on access)."""

  shard: jax.Array  # [R, d]
  rows: int = struct.field(pytree_node=False)
  axis: str = struct.field(pytree_node=False)

  def unbox(self) -> ShardedTable:
    return ShardedTable(self.shard, self.rows, self.axis)

  def replace_boxed(self, val: jax.Array) -> ShardedRows:
    return self.replace(shard=val)

  def add_axis(self, index: int, params: dict) -> ShardedRows:
    raise NotImplementedError("a row-sharded item table cannot gain an axis")

  def remove_axis(self, index: int, params: dict) -> ShardedRows:
    raise NotImplementedError("a row-sharded item table cannot lose an axis")


@struct.dataclass
class ShardedScores:
  """Scores [G, n] = session @ table[1:].T of a `ShardedTable`, never materialised (module docstring)."""

  session: jax.Array  # [G, d], this device's sessions
  shard: jax.Array  # [R, d], this device's rows of the padded table (global row i R + j = item id i R + j)
  rows: int = struct.field(pytree_node=False)  # n + 1 (row 0 is padding and never scored)
  axis: str = struct.field(pytree_node=False)
  dtype: str = struct.field(pytree_node=False, default="float32")

  @property
  def num_items(self) -> int:
    return self.rows - 1


IMPLICIT = (ChunkedScores, ShardedScores)  # score types consumed by `nll` / `ranks` without a [G, n] matrix


def sharded_scores(session: jax.Array, table: ShardedTable, dtype: str = "float32") -> ShardedScores:
  return ShardedScores(session, table.shard, table.rows, table.axis, dtype)


def _sharded_products(scores: ShardedScores, labels: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Every device's sessions x this device's rows [D G, R] (-inf off the items), each target's score [D G] (from
  its owner), and where this device's sessions sit in the gathered rows (offset)."""
  r, g = scores.shard.shape[0], scores.session.shape[0]
  first = jax.lax.axis_index(scores.axis) * r
  ids = first + jnp.arange(r)  # [R] item id of each row
  x = product(jax.lax.all_gather(scores.session, scores.axis, tiled=True), scores.shard, scores.dtype)  # [D G, R]
  x = jnp.where(((ids >= 1) & (ids < scores.rows))[None, :], x, -jnp.inf)
  col = jax.lax.all_gather(labels, scores.axis, tiled=True) + 1 - first  # [D G] target's row here
  owned = (col >= 0) & (col < r)
  picked = jnp.take_along_axis(x, jnp.clip(col, 0, r - 1)[:, None], axis=-1)[:, 0]
  target = jax.lax.psum(jnp.where(owned, picked, 0.0), scores.axis)  # [D G]: one device's value plus zeros
  return x, target, jax.lax.axis_index(scores.axis) * g


def _sharded_nll(scores: ShardedScores, labels: jax.Array) -> jax.Array:
  x, target, start = _sharded_products(scores, labels)
  peak = jax.lax.pmax(jax.lax.stop_gradient(jnp.max(x, axis=-1)), scores.axis)  # [D G]
  lse = peak + jnp.log(jax.lax.psum(jnp.sum(jnp.exp(x - peak[:, None]), axis=-1), scores.axis))
  return jax.lax.dynamic_slice_in_dim(lse - target, start, scores.session.shape[0])  # [G]


def _sharded_ranks(scores: ShardedScores, labels: jax.Array) -> jax.Array:
  x, target, start = _sharded_products(scores, labels)
  higher = jax.lax.psum(count_above(x, target), scores.axis)  # [D G]
  rank = rank_from_count(target, higher, scores.num_items)
  return jax.lax.dynamic_slice_in_dim(rank, start, scores.session.shape[0])  # [G]
