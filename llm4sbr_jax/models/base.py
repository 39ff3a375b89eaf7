"""The backbone interface shared by every session recommender, and the plain head of a bare backbone.

A *backbone* is any linen module with::

    __call__(self, batch, train: bool = False) -> BackboneOutput

`batch` is opaque here (the backbone's own padded graph batch); G is the number of graph slots in it, some of which
are padding (the caller carries a `graph_mask [G] bool` alongside and every reduction masks with it).

A bare backbone is trained with `HybridHead` + `score` (SR-GNN's `linear_transform` and dot-product scoring); the
LLM4SBR module (`llm4sbr_jax.models.llm4sbr`) replaces the head by its fusion.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp


class BackboneOutput(NamedTuple):
  """What a backbone hands to a head.

  Attributes:
    local: [G, d] local session vector (SR-GNN: the last clicked item's node state).
    global_: [G, d] global session vector (SR-GNN: the attention readout over the session's items).
    items: [n + 1, d] the item table used for scoring; row 0 is padding and is never scored.
  """

  local: jax.Array  # [G, d]
  global_: jax.Array  # [G, d]
  items: jax.Array  # [n + 1, d]


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


def score(session: jax.Array, items: jax.Array) -> jax.Array:
  """Dot-product scores of every real item (eq. 10 before the softmax).

  Args:
    session: [G, d] session vectors.
    items: [n + 1, d] item table; row 0 (padding) is dropped.

  Returns:
    [G, n] scores; column j is item id j + 1.
  """
  return session @ items[1:].T  # [G, n]
