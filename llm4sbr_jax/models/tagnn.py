"""TAGNN (Yu et al., SIGIR 2020): SR-GNN plus target-aware attention, faithful to the official CRIPAC-DIG/TAGNN code.

TAGNN is SR-GNN's pipeline, GNN cell, init, optimiser, schedule and hybrid readout (`srgnn.py`; backbones.md
section 3) with two differences in `compute_scores`:
  * the readout attention is soft-maxed over the session's positions: `alpha = softmax_i(q^T sigmoid(W1 h_t + W2 h_i))`;
  * every candidate item v attends over the session's items with its own weights and adds the result to the session
    vector: `beta_{v,i} = softmax_i(E_v . W_t h_i)` (W_t = `linear_t`, no bias), `s_t(v) = sum_i beta_{v,i} h_i`,
    `score(v) = (s_h + s_t(v)) . E_v`. Since `s_t(v) . E_v` does not depend on `s_h`, it is returned as the backbone's
    `extra_scores` [G, n], and every head (bare, LLM4SBR concat or gate fusion) adds it to `session . E`.

Quirk fixed on purpose (backbones.md section 11 #6): the official code soft-maxes both attentions over *all* padded
positions of the split's longest session (padded positions take softmax mass: logit 0 in the target attention, the
padding node's logit in the readout). That makes a session's scores depend on the longest session of its split
(Beauty's longest prefix has 202 clicks, so a 5-click session would give 197 padding slots most of the mass) and
differ between train and test splits. Both softmaxes here run over the session's real positions only; the PyTorch
reference (`experiments/torch_tagnn.py`) has the official behaviour behind `mask_padding=False`.

Kept as the official code: every parameter U(-1/sqrt(d), 1/sqrt(d)), the torch-form GRU, the hybrid readout, Adam
with coupled L2 1e-5, batch 100, d 100, patience 10. Like our SR-GNN: the unused `linear_edge_f` is not created, and
the lr schedule is the paper's (epochs 0-2 at 1e-3, x0.1 every 3), not the official torch>=1.1 off-by-one.

Memory: the official code materialises s_t as [B, n, d]. Here the target term is computed as
`sum_i beta_{v,i} (h_i . E_v)` from two [P, n] logit matrices over the packed click positions (P ~ batch x mean
length, not batch x longest session), in item chunks of `item_chunk` columns (0 = auto: the whole catalogue while
P x n stays under `AUTO_CHUNK_ELEMENTS`, else the fewest equal chunks under it), each chunk rematerialised in the backward pass
(`jax.checkpoint`), so peak activation memory is O(P x chunk).
"""

from __future__ import annotations

import functools
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from llm4sbr_jax.graphs import SessionBatch
from llm4sbr_jax.models.base import uniform_init
from llm4sbr_jax.models.srgnn import SRGNN

AUTO_CHUNK_ELEMENTS = 1 << 24  # P x chunk float32 elements per [P, chunk] logit matrix (64 MB)


def _segment_top(logits: jax.Array, segments: jax.Array, num_segments: int) -> jax.Array:
  """Each segment's per-column max of `logits` [P, C] (0 for an empty segment), the softmax shift: [S, C], no
  gradient. `segments` [P] sorted."""
  top = jax.ops.segment_max(logits, segments, num_segments, indices_are_sorted=True)  # [S, C]
  return jax.lax.stop_gradient(jnp.where(jnp.isfinite(top), top, 0.0))


def segment_softmax_weights(logits: jax.Array, segments: jax.Array, mask: jax.Array,
                            num_segments: int) -> jax.Array:
  """Softmax of `logits` [P, C] over the rows of each segment (per column), masked rows weight 0.

  `segments` [P] must be sorted (packed positions are); a segment without a real row gets all-zero weights.
  """
  top = _segment_top(jnp.where(mask[:, None], logits, -jnp.inf), segments, num_segments)  # [S, C]
  ex = jnp.where(mask[:, None], jnp.exp(logits - top[segments]), 0.0)  # [P, C]
  den = jax.ops.segment_sum(ex, segments, num_segments, indices_are_sorted=True)  # [S, C]
  return ex / jnp.maximum(den, 1e-30)[segments]  # [P, C]


def target_aware_scores(hm: jax.Array, qt: jax.Array, items: jax.Array, segments: jax.Array, num_segments: int,
                        chunk: int) -> jax.Array:
  """`s_t(v) . E_v` for every item v: sum over each session's positions of softmax_i(E_v . qt_i) (h_i . E_v).

  Args:
    hm: [P, d] node states at the click positions (zero at padding positions).
    qt: [P, d] `linear_t(hm)`.
    items: [n, d] the real item rows E[1:].
    segments: [P] sorted graph of each position, padding positions in the last graph (always a padding slot).
    num_segments: G.
    chunk: items per chunk (>= n: one pass).

  Returns:
    [G, n] target-aware score term.
  """
  n = items.shape[0]
  segment_sum = functools.partial(jax.ops.segment_sum, segment_ids=segments, num_segments=num_segments,
                                  indices_are_sorted=True)

  def one_chunk(e: jax.Array) -> jax.Array:  # [C, d] -> [G, C]
    # Padding positions (hm = qt = 0) all sit in the padding graph G - 1, so no [P, C] mask is needed, and the
    # softmax is normalised after the segment sums: sum_i e^(l_i - m) v_i / sum_i e^(l_i - m), m the segment max.
    logits = qt @ e.T  # [P, C]
    ex = jnp.exp(logits - _segment_top(logits, segments, num_segments)[segments])  # [P, C]
    return segment_sum(ex * (hm @ e.T)) / jnp.maximum(segment_sum(ex), 1e-30)  # [G, C]

  if chunk >= n:
    return one_chunk(items)
  num_chunks = -(-n // chunk)
  padded = jnp.pad(items, ((0, num_chunks * chunk - n), (0, 0))).reshape(num_chunks, chunk, -1)  # [K, C, d]
  out = jax.lax.map(jax.checkpoint(one_chunk), padded)  # [K, G, C]
  return jnp.moveaxis(out, 0, 1).reshape(num_segments, num_chunks * chunk)[:, :n]  # [G, n]


def chunk_size(num_items: int, positions: int, item_chunk: int = 0) -> int:
  """Items per chunk: `item_chunk`, or (0) the fewest chunks of at most AUTO_CHUNK_ELEMENTS / positions items,
  evened out so the last chunk's padding stays below the number of chunks."""
  most = item_chunk or max(1, AUTO_CHUNK_ELEMENTS // max(positions, 1))
  num_chunks = -(-num_items // most)
  return -(-num_items // num_chunks)


class TAGNN(SRGNN):
  """TAGNN backbone: SR-GNN with a soft-maxed readout attention and target-aware item scores.

  Attributes (beyond SR-GNN's):
    item_chunk: items per chunk of the target-aware term (0 = auto, see the module docstring).
  """

  item_chunk: int = 0

  def attention_weights(self, logits: jax.Array, batch: SessionBatch) -> jax.Array:
    """Softmax of the readout logits [P, 1] over each session's real positions."""
    return segment_softmax_weights(logits, batch.pos_graph, batch.pos_mask, batch.graph_mask.shape[0])

  def extra_scores(self, seq_h: jax.Array, table: jax.Array, batch: SessionBatch) -> Optional[jax.Array]:
    """The target-aware term [G, n] (column j = item id j + 1)."""
    d = self.hidden
    hm = seq_h * batch.pos_mask[:, None]  # [P, d]
    qt = nn.Dense(d, use_bias=False, kernel_init=uniform_init(d), name="linear_t")(hm)  # [P, d]
    positions, n = hm.shape[0], table.shape[0] - 1
    return target_aware_scores(hm, qt, table[1:], batch.pos_graph, batch.graph_mask.shape[0],
                               chunk_size(n, positions, self.item_chunk))
