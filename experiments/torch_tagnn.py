"""A PyTorch TAGNN written from the reference equations (`../shared/reference/backbones.md` section 3), for the
parity test and as a speed baseline. Not part of the JAX library.

TAGNN is SR-GNN with two attentions changed, so this module reuses `experiments/torch_srgnn.py`: the same host-side
batches (`reference_batch`, the official `utils.py` is the same logic), the same GNN cell, parameters and init. What
differs is the readout:

* the soft-attention weights over the session positions go through a softmax before the masked sum;
* a target attention gives every candidate item `n` its own session vector: `beta = softmax_L(E1 @ linear_t(hm)^T)`,
  `s_t = beta @ hm` with `hm = seq_h * mask`, and `scores[b, n] = <s_h[b] + s_t[b, n], E1[n]>` over `E1 = E[1:]`.

The official code runs both softmaxes over all `len_max` positions, padding included (the padded positions of the
target attention have logit 0 and take softmax mass). `TorchTAGNN(mask_padding=False)` reproduces that exactly;
the default `mask_padding=True` gives the padded positions `-inf` logits, which is what the JAX port does on purpose.
Like the official code, `forward` materialises `s_t` as [B, N, d]; `item_chunk` computes the same scores one slice of
items at a time to bound that memory.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from experiments.torch_srgnn import TorchSRGNN, load_flax_params, official_init_, reference_batch

__all__ = ["TorchTAGNN", "load_flax_params", "reference_batch"]


class TorchTAGNN(TorchSRGNN):
  """TAGNN as in the official PyTorch code (parameter names kept; the unused `linear_edge_f` is left out)."""

  def __init__(self, n_node: int, hidden: int = 100, step: int = 1, mask_padding: bool = True):
    """Builds the model.

    Args:
      n_node: Rows of the embedding table (number of items + 1; row 0 is padding).
      hidden: Hidden size d.
      step: GNN steps.
      mask_padding: If True, both softmaxes run over the real positions only; if False, over all `len_max`
        positions, padding included, as the official code does.
    """
    super().__init__(n_node, hidden, step)
    self.mask_padding = mask_padding
    self.linear_t = nn.Linear(hidden, hidden, bias=False)
    official_init_(self, hidden)

  def session_hidden(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Node states after the GNN, gathered to sequence positions: `seq_h` [B, L, d]."""
    h = self.embedding(batch["items"])
    for _ in range(self.step):
      h = self.gnn_cell(batch["adj"], h)
    alias = batch["alias"]
    return torch.stack([h[i][alias[i]] for i in range(len(alias))])

  def _softmax_positions(self, logits: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
    """Softmax over positions; with `mask_padding` the padded positions get `-inf` logits first."""
    if self.mask_padding:
      logits = logits.masked_fill(mask == 0, float("-inf"))
    return torch.softmax(logits, dim)

  def session_vector(self, seq_h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The hybrid session vector `s_h` [B, d] (soft attention with softmax, then `linear_transform`)."""
    ht = seq_h[torch.arange(mask.shape[0]), torch.sum(mask, 1) - 1]
    q1 = self.linear_one(ht).view(ht.shape[0], 1, ht.shape[1])
    q2 = self.linear_two(seq_h)
    alpha = self.linear_three(torch.sigmoid(q1 + q2))  # [B, L, 1]
    alpha = self._softmax_positions(alpha, mask[:, :, None], 1)
    s_g = torch.sum(alpha * seq_h * mask.view(mask.shape[0], -1, 1).float(), 1)
    return self.linear_transform(torch.cat([s_g, ht], 1))

  def target_scores(self, s_h: torch.Tensor, hm: torch.Tensor, qt: torch.Tensor, mask: torch.Tensor,
                    items: torch.Tensor) -> torch.Tensor:
    """Scores [B, n] against the item embeddings `items` [n, d] (the target attention over those items)."""
    beta = self._softmax_positions(items @ qt.transpose(1, 2), mask[:, None, :], -1)  # [B, n, L]
    s_t = beta @ hm  # [B, n, d]
    return torch.sum((s_h[:, None, :] + s_t) * items, -1)

  def forward(self, batch: Mapping[str, torch.Tensor], item_chunk: int | None = None) -> torch.Tensor:
    """Scores [B, n_node - 1] of a `reference_batch`.

    Args:
      batch: A `reference_batch` dict (alias, adj, items, mask).
      item_chunk: If given, the target attention runs over this many candidate items at a time (same values, the
        [B, N, d] tensor `s_t` is never whole); None materialises it like the official code.

    Returns:
      Scores over items 1..n_node-1 (column `i` is item `i + 1`).
    """
    mask = batch["mask"]
    seq_h = self.session_hidden(batch)
    s_h = self.session_vector(seq_h, mask)
    hm = seq_h * mask.view(mask.shape[0], -1, 1).float()
    qt = self.linear_t(hm)  # [B, L, d]; 0 at padded positions (no bias)
    e1 = self.embedding.weight[1:]
    if item_chunk is None:
      return self.target_scores(s_h, hm, qt, mask, e1)
    return torch.cat([self.target_scores(s_h, hm, qt, mask, e1[i:i + item_chunk])
                      for i in range(0, e1.shape[0], item_chunk)], 1)


def build_baseline(train: Any, num_items: int, hidden: int) -> tuple[nn.Module, Any]:
  """(model, batch builder) for the speed benchmark: the official TAGNN (padding quirk included, whole s_t)."""
  del train
  return TorchTAGNN(num_items + 1, hidden, mask_padding=False), reference_batch
