"""A PyTorch S2-DHCN written from the reference equations (`../shared/reference/backbones.md` section 5), for the
parity tests and as a speed baseline. Not part of the JAX library.

It follows the official code (xiaxin1998/DHCN @ b39ec89, `util.py`, `model.py`, `main.py`):

* the hypergraph is built once, on the host, with scipy (`reference_hypergraph`): one hyperedge per training
  PREFIX (the augmented samples, targets not included) holding its unique items, and `A = D^-1 H B^-1 H^T`
  (n x n, item `i` on row `i - 1`, hyperedge weights W = I); items in no prefix get zero rows;
* every batch is built on the host by the official `Data.get_slice` + `Data.get_overlap` (`reference_batch`),
  including the O(B^2) Python double loop for the Jaccard overlap of the sessions' item sets (padding 0 removed),
  `A_hat = overlap + I` and `D_hat = diag(1 / rowsum(A_hat))`; sessions are padded to the BATCH's longest one;
* the embedding table has NO padding row (`n` rows); lookups prepend a zero row, so item `i` reads row `i - 1`;
* hypergraph channel: `X_h = mean(E, A E, A^2 E, A^3 E)`; the session vector reads `X_h` along the REVERSED
  prefix (position 0 = most recent click) with reversed position embeddings, a gated soft attention without
  softmax (`w_1` with bias on `[pos ; seq_h]`, `glu1`, `glu2`, `w_2`), and the scores are `theta_h @ X_h^T`
  (against the CONVOLVED item embeddings);
* line-graph channel: the mean of the session's RAW item embeddings (repeats included), DETACHED (the official
  code goes through `.cpu().detach().numpy()`, so no gradient reaches `E` from it), then `L` layers of
  `(D_hat A_hat) @ x`, mean over the `L + 1`;
* SSL loss: `sum_b -log(1e-8 + sig(pos)) - log(1e-8 + 1 - sig(neg))` (a SUM over the batch) with the negatives
  from a row-then-column shuffle of `theta_h`; the training objective is `CE(scores + 1e-8, targets) + beta *
  ssl`; Adam without weight decay (`TorchDHCN.weight_decay = 0.0`; the parsed `--l2` is never used).

Differences from the official code, none of which changes a value:

* the official `HyperConv` / `LineConv` average their layers with `np.sum(list_of_tensors, 0)`, which current
  numpy refuses for tensors that require grad; here a left-to-right Python sum (the same arithmetic);
* the official per-row copies into a `[self.batch_size, L, d]` buffer (which only works for full batches) and the
  per-row numpy round trip of the line-graph input are vectorised: a gather over the actual batch, `.detach()`;
* `session_len` is a float tensor (the official one is int64; `float / long` divides the same);
* the position table has `positions` rows (official: 200; `build_baseline` uses max(200, longest train prefix)).

Not reproduced: the Tmall-only readout without position embeddings (`generate_sess_emb_npos`). The Nowplaying-only
pruning of adjacency entries below 0.05 is available as `reference_hypergraph(..., prune_below=0.05)`.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn
from torch.nn import functional as F

from experiments.torch_srgnn import official_init_

__all__ = ["TorchDHCN", "build_baseline", "load_flax_params", "reference_batch", "reference_hypergraph"]


def reference_hypergraph(prefixes: Sequence[Sequence[int]], num_items: int,
                         prune_below: float | None = None) -> torch.Tensor:
  """The official `util.Data.__init__` hypergraph: `A = D^-1 H B^-1 H^T` as a torch sparse COO float32 tensor.

  Args:
    prefixes: The training prefixes (one hyperedge each; their unique items), item ids 1..num_items.
    num_items: Number of items n (the matrix is n x n; item `i` is row/column `i - 1`).
    prune_below: Drop entries below this value after normalising (the official code does so with 0.05 for
      Nowplaying only; the rows are not renormalised). None keeps every entry.

  Returns:
    A coalesced sparse COO float32 tensor [n, n]. Rows of items that occur in no prefix are zero.
  """
  # H^T: hyperedges x items, 0/1 (official `data_masks`).
  indptr, indices = [0], []
  for p in prefixes:
    unique = np.unique(np.asarray(p, dtype=np.int64))
    indices.extend((unique - 1).tolist())
    indptr.append(indptr[-1] + len(unique))
  h_t = sp.csr_matrix((np.ones(len(indices), dtype=np.int64), indices, indptr), shape=(len(prefixes), num_items))
  with np.errstate(divide="ignore"):  # items of degree 0: 1/0 is never multiplied by a stored entry
    inv_edge = 1.0 / np.asarray(h_t.sum(axis=1)).reshape(1, -1)  # B^-1, one entry per hyperedge
    inv_degree = 1.0 / np.asarray(h_t.sum(axis=0)).reshape(1, -1)  # D^-1, one entry per item
  b_h_t = h_t.T.multiply(inv_edge).T  # B^-1 H^T: rows scaled by 1 / |e|
  d_h = h_t.multiply(inv_degree).T  # D^-1 H: rows scaled by 1 / deg(item)
  adjacency = sp.csr_matrix(d_h @ b_h_t).tocoo()
  values, rows, cols = adjacency.data, adjacency.row, adjacency.col
  if prune_below is not None:
    keep = values >= prune_below
    values, rows, cols = values[keep], rows[keep], cols[keep]
  index = torch.as_tensor(np.vstack([rows, cols]).astype(np.int64))
  return torch.sparse_coo_tensor(index, torch.as_tensor(values, dtype=torch.float32), (num_items, num_items),
                                 check_invariants=True).coalesce()


def reference_batch(seqs: Sequence[Sequence[int]], len_max: int) -> dict[str, torch.Tensor]:
  """The official `Data.get_slice` + `Data.get_overlap` (+ the tensor conversions of `model.forward`) for a batch.

  Args:
    seqs: Prefixes in click order, item ids >= 1.
    len_max: Ignored. Kept for the signature of the other references: official DHCN pads every batch to the
      batch's own longest prefix, not to the split's.

  Returns:
    session_item [B, L] (right-padded with 0), session_len [B, 1] float (clicks, repeats included),
    reversed_sess_item [B, L] (the reversed prefix, right-padded), mask [B, L], A [B, B] float (Jaccard overlap of
    the sessions' item sets, padding removed, plus I), D [B, B] float (diag of 1 / rowsum(A)); L = longest prefix.
  """
  del len_max
  lengths = [len(np.nonzero(s)[0]) for s in seqs]
  longest = max(lengths)
  session_item, session_len, reversed_items, mask = [], [], [], []
  for s, n in zip(seqs, lengths):
    s = list(s)
    session_len.append([n])
    session_item.append(s + [0] * (longest - n))
    mask.append([1] * n + [0] * (longest - n))
    reversed_items.append(list(reversed(s)) + [0] * (longest - n))
  # get_overlap: Jaccard of the unique non-padding items, upper triangle mirrored, then + I.
  b = len(session_item)
  overlap = np.zeros((b, b))
  for i in range(b):
    set_i = set(session_item[i])
    set_i.discard(0)
    for j in range(i + 1, b):
      set_j = set(session_item[j])
      set_j.discard(0)
      overlap[i][j] = overlap[j][i] = float(len(set_i & set_j)) / float(len(set_i | set_j))
  overlap = overlap + np.diag([1.0] * b)
  degree = np.diag(1.0 / np.sum(overlap, 1))
  return {"session_item": torch.Tensor(session_item).long(), "session_len": torch.Tensor(session_len),
          "reversed_sess_item": torch.Tensor(reversed_items).long(), "mask": torch.Tensor(mask).long(),
          "A": torch.Tensor(overlap), "D": torch.Tensor(degree)}


def _layer_mean(layers: list[torch.Tensor]) -> torch.Tensor:
  """(x_0 + x_1 + ... + x_L) / (L + 1), summed left to right."""
  return sum(layers[1:], layers[0]) / len(layers)


class TorchDHCN(nn.Module):
  """S2-DHCN as in the official PyTorch code (`DHCN`; parameter names kept)."""

  weight_decay = 0.0  # the official Adam has none (`--l2` is parsed but never used)

  def __init__(self, num_items: int, adjacency: torch.Tensor, hidden: int = 100, layers: int = 3,
               beta: float = 0.01, positions: int = 200):
    """Builds the model.

    Args:
      num_items: Number of items n (rows of the embedding table; no padding row).
      adjacency: The hypergraph matrix [n, n] from `reference_hypergraph` (kept as a non-persistent buffer).
      hidden: Hidden size d.
      layers: Propagation layers L of both channels.
      beta: Weight of the SSL loss in `training_loss`.
      positions: Rows of the position table (official: 200); must cover the longest session of a batch.
    """
    super().__init__()
    self.hidden, self.layers, self.beta = hidden, int(layers), beta
    self.register_buffer("adjacency", adjacency, persistent=False)
    self.embedding = nn.Embedding(num_items, hidden)
    self.pos_embedding = nn.Embedding(positions, hidden)
    self.w_1 = nn.Linear(2 * hidden, hidden)
    self.w_2 = nn.Parameter(torch.empty(hidden, 1))
    self.glu1 = nn.Linear(hidden, hidden)
    self.glu2 = nn.Linear(hidden, hidden, bias=False)
    official_init_(self, hidden)

  def item_embeddings(self) -> torch.Tensor:
    """X_h [n, d]: the official `HyperConv`, the mean of `A^l E` over l = 0..L."""
    x = self.embedding.weight
    out = [x]
    for _ in range(self.layers):
      x = torch.sparse.mm(self.adjacency, x)
      out.append(x)
    return _layer_mean(out)

  def session_embedding(self, batch: Mapping[str, torch.Tensor], item_emb: torch.Tensor) -> torch.Tensor:
    """theta_h [B, d]: the official `generate_sess_emb` over `item_emb` (X_h) along the reversed prefixes."""
    table = torch.cat([item_emb.new_zeros(1, item_emb.shape[1]), item_emb], 0)  # row 0 = padding
    seq_h = table[batch["reversed_sess_item"]]  # [B, L, d], most recent click first
    b, length = seq_h.shape[:2]
    hs = (torch.sum(seq_h, 1) / batch["session_len"])[:, None, :].expand(-1, length, -1)
    mask = batch["mask"].float()[..., None]
    pos = self.pos_embedding.weight[:length][None].expand(b, -1, -1)
    nh = torch.tanh(self.w_1(torch.cat([pos, seq_h], -1)))
    nh = torch.sigmoid(self.glu1(nh) + self.glu2(hs))
    weight = torch.matmul(nh, self.w_2) * mask  # no softmax
    return torch.sum(weight * seq_h, 1)

  def line_embedding(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """theta_l [B, d]: the official `LineConv` on the raw, detached item embeddings."""
    raw = self.embedding.weight.detach()  # official: a numpy round trip, so no gradient
    table = torch.cat([raw.new_zeros(1, raw.shape[1]), raw], 0)
    x = torch.sum(table[batch["session_item"]], 1) / batch["session_len"]
    da = torch.mm(batch["D"], batch["A"]).float()
    out = [x]
    for _ in range(self.layers):
      x = torch.mm(da, x)
      out.append(x)
    return _layer_mean(out)

  def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Scores [B, n] of a `reference_batch` (column `i` is item `i + 1`): `theta_h @ X_h^T`."""
    item_emb = self.item_embeddings()
    return torch.mm(self.session_embedding(batch, item_emb), item_emb.transpose(1, 0))

  def ssl_loss(self, theta_h: torch.Tensor, theta_l: torch.Tensor, row_perm: torch.Tensor | None = None,
               col_perm: torch.Tensor | None = None) -> torch.Tensor:
    """The official `DHCN.SSL` (unweighted; a SUM over the batch).

    `pos = <theta_h, theta_l>`, `neg = <theta_l, corrupted>` with `corrupted = theta_h[row_perm][:, col_perm]`,
    loss = `sum_b -log(1e-8 + sigmoid(pos)) - log(1e-8 + 1 - sigmoid(neg))`.

    Args:
      theta_h: Hypergraph session vectors [B, d].
      theta_l: Line-graph session vectors [B, d].
      row_perm: Permutation of the B rows; None draws `torch.randperm(B)` (first, as official).
      col_perm: Permutation of the d columns; None draws `torch.randperm(d)` (after the rows, as official).

    Returns:
      The scalar loss.
    """
    if row_perm is None:
      row_perm = torch.randperm(theta_h.shape[0])
    corrupted = theta_h[row_perm]
    if col_perm is None:
      col_perm = torch.randperm(corrupted.shape[1])
    corrupted = corrupted[:, col_perm]
    pos = torch.sum(theta_h * theta_l, 1)
    neg = torch.sum(theta_l * corrupted, 1)
    return torch.sum(-torch.log(1e-8 + torch.sigmoid(pos)) - torch.log(1e-8 + (1 - torch.sigmoid(neg))))

  def training_loss(self, batch: Mapping[str, torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
    """The official training objective: `CE(scores + 1e-8, targets) + beta * ssl_loss` (random permutations).

    Args:
      batch: A `reference_batch`.
      targets: 0-based targets [B] (item id - 1).
    """
    item_emb = self.item_embeddings()
    theta_h = self.session_embedding(batch, item_emb)
    scores = torch.mm(theta_h, item_emb.transpose(1, 0))
    ssl = self.ssl_loss(theta_h, self.line_embedding(batch))
    return F.cross_entropy(scores + 1e-8, targets) + self.beta * ssl


def load_flax_params(model: TorchDHCN, params: Mapping[str, Any]) -> None:
  """Copies the JAX S2-DHCN parameters (`params["params"]["backbone"]`) into `model`.

  Expected leaves: `embedding` [n, d], `pos_embedding` [P, d], `w_1` {kernel [2d, d], bias [d]}, `w_2` [d, 1],
  `glu1` {kernel [d, d], bias [d]}, `glu2` {kernel [d, d]}. Dense kernels ([in, out]) are transposed to torch
  weights ([out, in]); `w_2` is used as `x @ w_2` in both and copied as it is.

  Raises:
    KeyError: A name is missing from the Flax tree, the tree holds a leaf with no torch counterpart, or a torch
      parameter was left unwritten.
    ValueError: A shape does not match.
  """
  backbone = params["params"]["backbone"]
  plan = {"embedding": ("embedding.weight", False), "pos_embedding": ("pos_embedding.weight", False),
          "w_1/kernel": ("w_1.weight", True), "w_1/bias": ("w_1.bias", False), "w_2": ("w_2", False),
          "glu1/kernel": ("glu1.weight", True), "glu1/bias": ("glu1.bias", False),
          "glu2/kernel": ("glu2.weight", True)}

  leaves = {}

  def walk(node: Mapping[str, Any], prefix: str) -> None:
    for name, value in node.items():
      if isinstance(value, Mapping):
        walk(value, f"{prefix}{name}/")
      else:
        leaves[f"{prefix}{name}"] = value

  walk(backbone, "")
  extra = sorted(set(leaves) - set(plan))
  if extra:
    raise KeyError(f"Flax backbone leaves with no torch counterpart: {extra}")
  torch_params = dict(model.named_parameters())
  written = set()
  with torch.no_grad():
    for flax_name, (torch_name, transpose) in plan.items():
      if flax_name not in leaves:
        raise KeyError(f"Flax backbone has no {flax_name!r} (needed for torch {torch_name!r})")
      value = torch.tensor(np.asarray(leaves[flax_name]), dtype=torch.float32)
      value = value.T if transpose else value
      target = torch_params[torch_name]
      if tuple(target.shape) != tuple(value.shape):
        raise ValueError(f"{flax_name} -> {torch_name}: shape {tuple(value.shape)}"
                         f"{' (transposed)' if transpose else ''} does not fit {tuple(target.shape)}")
      target.copy_(value)
      written.add(torch_name)
  missing = sorted(set(torch_params) - written)
  if missing:
    raise KeyError(f"torch parameters not written from the Flax tree: {missing}")


def build_baseline(train: Any, num_items: int, hidden: int) -> tuple[nn.Module, Any]:
  """(model, batch builder) for the speed benchmark: the official S2-DHCN, hypergraph from `train`'s prefixes
  (built once here with scipy, the official way), positions = max(200, longest train prefix)."""
  adjacency = reference_hypergraph([train.prefix(i) for i in range(len(train))], num_items)
  positions = max(200, int(np.max(train.lengths)))
  return TorchDHCN(num_items, adjacency, hidden, positions=positions), reference_batch
