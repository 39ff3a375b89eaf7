"""The backbone interface shared by every session recommender, and the plain head of a bare backbone.

A *backbone* is any linen module with::

    __call__(self, batch, train: bool = False, head: bool = True) -> BackboneOutput

`batch` is opaque here (the packed session-graph batch, `llm4sbr_jax.graphs.SessionBatch`); G is the number of graph
slots in it, some of which are padding (`batch.graph_mask [G] bool`; every reduction masks with it). With
`head=True` the backbone also computes its own final session vector (`session`: SR-GNN's hybrid `linear_transform`,
GCE-GNN's soft-attention readout); the LLM4SBR module calls it with `head=False` and fuses `local` / `global_` with
the intents instead, so an unused head never creates parameters. A backbone whose scores are not a plain dot
product with the session vector returns the rest as `extra_scores` (TAGNN's target-aware term), which every head
adds. `Recommender` is the bare model: `score(session, items) + extra_scores`.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from llm4sbr_jax import scoring


class BackboneOutput(NamedTuple):
  """What a backbone hands to a head.

  Attributes:
    local: [G, d] short-term (last-click) session vector, paired with the short-term intent.
    global_: [G, d] whole-session vector, paired with the long-term intent.
    items: [n + 1, d] the item table used for scoring; row 0 is padding and is never scored.
    session: [G, d] the bare backbone's own session vector (None when called with head=False).
    extra_scores: [G, n] an additive score term independent of the session vector, or None.
  """

  local: jax.Array  # [G, d]
  global_: jax.Array  # [G, d]
  items: jax.Array  # [n + 1, d]
  session: Optional[jax.Array] = None  # [G, d]
  extra_scores: Optional[jax.Array] = None  # [G, n]


def uniform_init(d: int) -> Callable[..., jax.Array]:
  """The SR-GNN reference initialiser: every parameter ~ U(-1/sqrt(d), 1/sqrt(d)).

  The reference (`reset_parameters`) applies it to *all* parameters, biases and the embedding table included, with d
  the hidden size (not the layer's fan-in).

  Args:
    d: the hidden size.

  Returns:
    A `jax.nn.initializers`-style function `(key, shape, dtype) -> array`.
  """
  bound = 1.0 / float(d) ** 0.5

  def init(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
    return jax.random.uniform(key, shape, dtype, minval=-bound, maxval=bound)

  return init


class HybridHead(nn.Module):
  """SR-GNN's hybrid session vector: `session = W [global; local] + b` (`linear_transform`, with bias).

  Attributes:
    hidden: d, the hidden size (also sets the initialiser's bound).
  """

  hidden: int

  @nn.compact
  def __call__(self, out: BackboneOutput) -> jax.Array:
    """Returns the session vector [G, d] from a backbone's output."""
    init = uniform_init(self.hidden)
    x = jnp.concatenate([out.global_, out.local], axis=-1)  # [G, 2d]
    return nn.Dense(self.hidden, kernel_init=init, bias_init=init, name="linear_transform")(x)  # [G, d]


def score(session: jax.Array, out: BackboneOutput, chunk: int = 0, dtype: str = "float32", padded: bool = False
          ) -> jax.Array | scoring.PaddedScores | scoring.ChunkedScores | scoring.ShardedScores:
  """Scores of every real item (eq. 10 before the softmax): `session . E[1:]` plus the backbone's extra term.

  Args:
    session: [G, d] session vectors.
    out: the backbone output; its item table's row 0 (padding) is dropped (a `scoring.ShardedTable` gives
      `scoring.ShardedScores`).
    chunk: > 0: the scores stay implicit (`scoring.ChunkedScores`), consumed `chunk` items at a time.
    dtype: operand dtype of the session x item product ("bfloat16": mixed precision, float32 accumulation).
    padded: plain dot-product scores come as `scoring.PaddedScores` (the evaluation's rank count reads them unsliced).

  Returns:
    [G, n] scores; column j is item id j + 1.
  """
  if isinstance(out.items, scoring.ShardedTable):  # config.shard_scores: each device scores its own rows
    if out.extra_scores is not None or chunk:
      raise ValueError("config.shard_scores: needs plain dot-product scores without score_chunk (this backbone "
                       "adds an extra [G, n] term, or score_chunk > 0)")
    return scoring.sharded_scores(session, out.items, dtype)
  if chunk:
    if out.extra_scores is not None:
      raise ValueError("config.score_chunk: this backbone's scores are not a plain dot product (an extra [G, n] "
                       "term, e.g. TAGNN's target-aware scores); use score_chunk = 0")
    return scoring.ChunkedScores(session, out.items, chunk, dtype)
  # Column 0 dropped from the product, not row 0 from the table: the slice then fuses into what reads the scores
  # instead of copying the [n, d] table each step (0.3 ms of a 4.1 ms SR-GNN evaluation step on Beauty).
  product = scoring.product(session, out.items, dtype)  # [G, n + 1]
  if padded and out.extra_scores is None:
    return scoring.PaddedScores(product)
  scores = product[:, 1:]  # [G, n]
  return scores if out.extra_scores is None else scores + out.extra_scores


class Recommender(nn.Module):
  """A bare backbone: its own session vector scored against its item table.

  Attributes:
    backbone: a backbone module (see the module docstring); name it "backbone".
    score_chunk: > 0: implicit scores consumed in item chunks (`scoring`).
    score_dtype: operand dtype of the item-scoring product (`scoring.product`).
    padded_eval: with train=False, plain dot-product scores come as `scoring.PaddedScores` (the task's evaluation).
  """

  backbone: nn.Module
  score_chunk: int = 0
  score_dtype: str = "float32"
  padded_eval: bool = False

  @nn.compact
  def __call__(self, batch: Any, train: bool = False) -> jax.Array:
    """Returns scores [G, n]; column j is item id j + 1."""
    out = self.backbone(batch, train=train, head=True)
    return score(out.session, out, self.score_chunk, self.score_dtype, self.padded_eval and not train)  # [G, n]
