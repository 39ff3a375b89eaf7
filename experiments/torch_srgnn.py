"""A PyTorch SR-GNN written from the reference equations (`../shared/reference/backbones.md` section 2), for the
parity test and as the speed baseline of `experiments/benchmark.py`. Not part of the JAX library.

It follows the official code's structure: every batch is built on the host by a per-sample Python loop that pads
each prefix to the split's longest one, takes `np.unique` of the padded row (padding item 0 included) and fills a
dense `n x 2n` normalised adjacency, then a dense GNN step, attention without softmax, the hybrid readout and scores
over `E[1:]`; Adam with coupled L2.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn


def reference_batch(seqs: Sequence[Sequence[int]], len_max: int) -> dict[str, torch.Tensor]:
  """The official `Data.get_slice` construction for one batch of prefixes (right-padded to `len_max`).

  Like the official loader it works on Python lists (every sequence padded to the split's longest at load time) and
  converts them with `torch.Tensor(list)`; those list-to-tensor copies are a large part of its cost.
  """
  inputs = [list(s) + [0] * (len_max - len(s)) for s in seqs]
  mask = [[1] * len(s) + [0] * (len_max - len(s)) for s in seqs]
  max_n_node = max(len(np.unique(row)) for row in inputs)
  items, adj, alias = [], [], []
  for row in inputs:
    node = np.unique(row)
    items.append(node.tolist() + [0] * (max_n_node - len(node)))
    u_a = np.zeros((max_n_node, max_n_node))
    for i in range(len(row) - 1):
      if row[i + 1] == 0:
        break
      u = np.where(node == row[i])[0][0]
      v = np.where(node == row[i + 1])[0][0]
      u_a[u][v] = 1
    in_sum = np.sum(u_a, 0)
    in_sum[np.where(in_sum == 0)] = 1
    a_in = np.divide(u_a, in_sum)
    out_sum = np.sum(u_a, 1)
    out_sum[np.where(out_sum == 0)] = 1
    a_out = np.divide(u_a.transpose(), out_sum)
    adj.append(np.concatenate([a_in, a_out]).transpose())
    alias.append([np.where(node == i)[0][0] for i in row])
  return {"alias": torch.Tensor(alias).long(), "adj": torch.Tensor(adj).float(), "items": torch.Tensor(items).long(),
          "mask": torch.Tensor(mask).long()}


def official_init_(model: nn.Module, hidden: int) -> None:
  """The official init of every backbone: every parameter of `model` U(-1/sqrt(d), 1/sqrt(d)), in place."""
  stdv = 1.0 / math.sqrt(hidden)
  for p in model.parameters():
    p.data.uniform_(-stdv, stdv)


class TorchSRGNN(nn.Module):
  """SR-GNN as in the official PyTorch code (parameter names kept)."""

  def __init__(self, n_node: int, hidden: int = 100, step: int = 1):
    super().__init__()
    self.hidden, self.step = hidden, step
    self.embedding = nn.Embedding(n_node, hidden)
    self.w_ih = nn.Parameter(torch.empty(3 * hidden, 2 * hidden))
    self.w_hh = nn.Parameter(torch.empty(3 * hidden, hidden))
    self.b_ih = nn.Parameter(torch.empty(3 * hidden))
    self.b_hh = nn.Parameter(torch.empty(3 * hidden))
    self.b_iah = nn.Parameter(torch.empty(hidden))
    self.b_oah = nn.Parameter(torch.empty(hidden))
    self.linear_edge_in = nn.Linear(hidden, hidden)
    self.linear_edge_out = nn.Linear(hidden, hidden)
    self.linear_one = nn.Linear(hidden, hidden)
    self.linear_two = nn.Linear(hidden, hidden)
    self.linear_three = nn.Linear(hidden, 1, bias=False)
    self.linear_transform = nn.Linear(2 * hidden, hidden)
    official_init_(self, hidden)

  def gnn_cell(self, adj: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    n = adj.shape[1]
    a_in = torch.matmul(adj[:, :, :n], self.linear_edge_in(h)) + self.b_iah
    a_out = torch.matmul(adj[:, :, n:2 * n], self.linear_edge_out(h)) + self.b_oah
    a = torch.cat([a_in, a_out], 2)
    gi = nn.functional.linear(a, self.w_ih, self.b_ih)
    gh = nn.functional.linear(h, self.w_hh, self.b_hh)
    i_r, i_i, i_n = gi.chunk(3, 2)
    h_r, h_i, h_n = gh.chunk(3, 2)
    resetgate = torch.sigmoid(i_r + h_r)
    inputgate = torch.sigmoid(i_i + h_i)
    newgate = torch.tanh(i_n + resetgate * h_n)
    return newgate + inputgate * (h - newgate)

  def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Scores [B, n_node - 1] of a `reference_batch`."""
    h = self.embedding(batch["items"])
    for _ in range(self.step):
      h = self.gnn_cell(batch["adj"], h)
    alias, mask = batch["alias"], batch["mask"]
    seq_h = torch.stack([h[i][alias[i]] for i in range(len(alias))])
    ht = seq_h[torch.arange(mask.shape[0]), torch.sum(mask, 1) - 1]
    q1 = self.linear_one(ht).view(ht.shape[0], 1, ht.shape[1])
    q2 = self.linear_two(seq_h)
    alpha = self.linear_three(torch.sigmoid(q1 + q2))
    a = torch.sum(alpha * seq_h * mask.view(mask.shape[0], -1, 1).float(), 1)
    a = self.linear_transform(torch.cat([a, ht], 1))
    return torch.matmul(a, self.embedding.weight[1:].transpose(1, 0))


TRANSPOSED_RAW = ("w_ih", "w_hh")  # raw Flax parameters stored [in, out]; torch keeps them [out, in]


def copy_flax_tree(model: nn.Module, tree: Mapping[str, Any],
                   transposed: Iterable[str] = TRANSPOSED_RAW) -> set[str]:
  """Copies every parameter of a Flax subtree into the torch attribute of the same (leaf) name.

  A sub-dict holding a `kernel` is a Dense layer: it goes to the `nn.Linear` named like the dict (kernel [in, out]
  transposed to weight [out, in], `bias` copied when present). Other sub-dicts are walked recursively (their names
  are only grouping, e.g. `gnn`, `head`). An array leaf goes to the parameter of that name (`embedding` to
  `embedding.weight`), transposed if its name is in `transposed`. Leaf names must be unique in the tree.

  Args:
    model: The torch module (parameters looked up as attributes of `model`).
    tree: The Flax parameters, e.g. `params["params"]["backbone"]`.
    transposed: Names of array leaves to transpose.

  Returns:
    The names (as in `model.named_parameters()`) of the torch parameters that were written.

  Raises:
    KeyError: A Flax name has no torch counterpart, or a shape does not match.
  """
  t = lambda x: torch.tensor(np.asarray(x), dtype=torch.float32)
  written: set[str] = set()

  def put(name: str, target: torch.Tensor, value: torch.Tensor) -> None:
    if tuple(target.shape) != tuple(value.shape):
      raise KeyError(f"{name}: torch {tuple(target.shape)} vs flax {tuple(value.shape)}")
    target.copy_(value)
    written.add(name)

  def walk(node: Mapping[str, Any]) -> None:
    for name, value in node.items():
      if isinstance(value, Mapping) and "kernel" in value:
        layer = getattr(model, name, None)
        if not isinstance(layer, nn.Linear):
          raise KeyError(f"no nn.Linear named {name!r} for the Flax Dense {name!r}")
        put(f"{name}.weight", layer.weight, t(value["kernel"]).T)
        if "bias" in value:
          put(f"{name}.bias", layer.bias, t(value["bias"]))
      elif isinstance(value, Mapping):
        walk(value)
      elif name == "embedding":
        put("embedding.weight", model.embedding.weight, t(value))
      else:
        param = getattr(model, name, None)
        if not isinstance(param, nn.Parameter):
          raise KeyError(f"no torch parameter named {name!r}")
        put(name, param, t(value).T if name in transposed else t(value))

  with torch.no_grad():
    walk(tree)
  return written


def load_flax_params(model: nn.Module, params: Mapping[str, Any]) -> None:
  """Copies a JAX bare model's backbone (`params["params"]["backbone"]`, head under `backbone/head`) into `model`.

  Raises:
    KeyError: A name or shape does not match, or a torch parameter was left unwritten.
  """
  written = copy_flax_tree(model, params["params"]["backbone"])
  missing = {name for name, _ in model.named_parameters()} - written
  if missing:
    raise KeyError(f"torch parameters not in the Flax tree: {sorted(missing)}")


def build_baseline(train: Any, num_items: int, hidden: int) -> tuple[nn.Module, Any]:
  """(model, batch builder) for the speed benchmark: the official SR-GNN pipeline."""
  del train
  return TorchSRGNN(num_items + 1, hidden), reference_batch
