"""SR-GNN (Wu et al., AAAI 2019) on packed jraph session graphs, faithful to the official PyTorch code.

Reference behaviour (`../shared/reference/backbones.md` section 2.3):
  * every parameter, the embedding table included, ~ U(-1/sqrt(d), 1/sqrt(d));
  * gated GNN step: `a_in = A_in (h W_in + b_in) + b_iah`, `a_out = A_out (h W_out + b_out) + b_oah`, a torch-form GRU
    update `h = c + z * (h - c)`; the dense normalised adjacency of the reference becomes a weighted sum over the
    packed edges (`w_in = 1/indeg`, `w_out = 1/outdeg`), which is the same sum without the padding;
  * attention without softmax: `alpha = q^T sigmoid(W1 h_t + W2 h_i)` (q without bias), `s_g = sum_i alpha_i h_i`;
  * the hybrid readout `W [s_g; h_t] + b` (`HybridHead`, with `head=True`) and scores over `E[1:]` (`base.py`).
The reference's unused `linear_edge_f` is not created (it only receives weight decay and never affects an output).

LLM4SBR pairing: `global_` = s_g (the attention readout over the whole session) pairs with the long-term intent,
`local` = h_t (the last click's node state) with the short-term one, as in the official LLM4SBR code.

TAGNN (`tagnn.py`) is this module with two hooks overridden: the attention weights and an extra score term.
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from llm4sbr_jax.graphs import SessionBatch
from llm4sbr_jax.models.base import BackboneOutput, HybridHead, uniform_init


class GatedGraphStep(nn.Module):
  """One SR-GNN propagation step (the reference `GNNCell`) over packed directed edges."""

  hidden: int

  @nn.compact
  def __call__(self, h: jax.Array, batch: SessionBatch) -> jax.Array:
    """Args: h [N, d] node states. Returns the updated node states [N, d]."""
    d, init = self.hidden, uniform_init(self.hidden)
    g = batch.graph
    num_nodes = h.shape[0]
    dense = lambda name: nn.Dense(d, kernel_init=init, bias_init=init, name=name)
    h_in = dense("linear_edge_in")(h)  # [N, d]
    h_out = dense("linear_edge_out")(h)  # [N, d]
    # Row v of A_in averages v's predecessors; row u of A_out averages u's successors.
    a_in = jax.ops.segment_sum(h_in[g.senders] * g.edges["w_in"][:, None], g.receivers, num_nodes)  # [N, d]
    a_out = jax.ops.segment_sum(h_out[g.receivers] * g.edges["w_out"][:, None], g.senders, num_nodes)  # [N, d]
    a = jnp.concatenate([a_in + self.param("b_iah", init, (d,)), a_out + self.param("b_oah", init, (d,))], -1)
    gi = a @ self.param("w_ih", init, (2 * d, 3 * d)) + self.param("b_ih", init, (3 * d,))  # [N, 3d]
    gh = h @ self.param("w_hh", init, (d, 3 * d)) + self.param("b_hh", init, (3 * d,))  # [N, 3d]
    i_r, i_z, i_n = jnp.split(gi, 3, axis=-1)
    h_r, h_z, h_n = jnp.split(gh, 3, axis=-1)
    r = jax.nn.sigmoid(i_r + h_r)
    z = jax.nn.sigmoid(i_z + h_z)
    c = jnp.tanh(i_n + r * h_n)
    return c + z * (h - c)  # torch GRU form: (1 - z) * c + z * h


class SRGNN(nn.Module):
  """SR-GNN backbone: the local (last item) and global (attention) session vectors and the item table.

  Attributes:
    num_items: n; the embedding table has n + 1 rows (row 0 = padding).
    hidden: d.
    steps: number of gated GNN steps (reference default 1).
  """

  num_items: int
  hidden: int = 100
  steps: int = 1

  def attention_weights(self, logits: jax.Array, batch: SessionBatch) -> jax.Array:
    """SR-GNN uses the attention logits [P, 1] as weights directly (no softmax)."""
    del batch
    return logits

  def extra_scores(self, seq_h: jax.Array, table: jax.Array, batch: SessionBatch) -> Optional[jax.Array]:
    """SR-GNN scores are a plain dot product: no extra term."""
    del seq_h, table, batch
    return None

  @nn.compact
  def __call__(self, batch: SessionBatch, train: bool = False, head: bool = True) -> BackboneOutput:
    del train  # no dropout in SR-GNN
    d, init = self.hidden, uniform_init(self.hidden)
    table = self.param("embedding", init, (self.num_items + 1, d))  # [n + 1, d]
    h = table[batch.graph.nodes["item"]]  # [N, d]
    step = GatedGraphStep(d, name="gnn")
    for _ in range(self.steps):
      h = step(h, batch)
    num_graphs = batch.graph_mask.shape[0]
    seq_h = h[batch.pos_node]  # [P, d]
    ht = h[batch.last_node]  # [G, d]
    q1 = nn.Dense(d, kernel_init=init, bias_init=init, name="linear_one")(ht)  # [G, d]
    q2 = nn.Dense(d, kernel_init=init, bias_init=init, name="linear_two")(seq_h)  # [P, d]
    logits = nn.Dense(1, use_bias=False, kernel_init=init, name="linear_three")(
        jax.nn.sigmoid(q1[batch.pos_graph] + q2))  # [P, 1]
    weighted = self.attention_weights(logits, batch) * seq_h * batch.pos_mask[:, None]  # [P, d]
    s_g = jax.ops.segment_sum(weighted, batch.pos_graph, num_graphs)  # [G, d]
    out = BackboneOutput(local=ht, global_=s_g, items=table, extra_scores=self.extra_scores(seq_h, table, batch))
    return out._replace(session=HybridHead(d, name="head")(out)) if head else out
