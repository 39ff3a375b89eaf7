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
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import struct


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


def nll(scores: ChunkedScores, labels: jax.Array, mask: jax.Array) -> jax.Array:
  """-log softmax(scores)[label] per real row, 0 on padding rows; [G] (labels 0-based columns)."""
  value = logsumexp(scores.session, scores.items, scores.chunk, scores.dtype) - target_scores(scores, labels)
  return jnp.where(mask, value, 0.0)


def ranks(scores: ChunkedScores, labels: jax.Array) -> jax.Array:
  """1 + the number of items scored strictly higher than the target, [G] (labels 0-based columns).

  Two scans over the chunks: the first reads each target's score out of its chunk's product, the second counts, so
  every comparison is between values of the same matrix product (exact ties favour the target, as unchunked).
  """
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
    return total + jnp.sum((product(scores.session, rows, scores.dtype) > own[:, None]) & ok[None, :], axis=-1), None

  own, _ = jax.lax.scan(own_score, jnp.zeros(labels.shape, jnp.float32), (table, offsets))
  total, _ = jax.lax.scan(count, jnp.zeros(labels.shape, jnp.int32), (table, valid))
  return 1 + total
