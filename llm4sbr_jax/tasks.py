"""Model + loss terms for a config: what the generic training loop optimises.

A task exposes `init(rng, batch) -> params` and `terms(params, batch, train) -> (scores [G, n], {name: (sum, count)})`
with a `spec` {name: (weight, is_log_mean)} telling the parallel step how to combine the terms over devices.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax

from llm4sbr_jax.models.llm4sbr import cross_entropy
from llm4sbr_jax.models.srgnn import SRGNNRecommender


@dataclasses.dataclass(frozen=True)
class Task:
  model: nn.Module
  spec: Mapping[str, tuple[float, bool]]
  terms_fn: Callable[[Any, Any, bool], tuple[jax.Array, Mapping[str, tuple[jax.Array, jax.Array]]]]

  def init(self, rng: jax.Array, batch: Any) -> Any:
    return self.model.init(rng, batch, train=False)

  def terms(self, params: Any, batch: Any, train: bool):
    return self.terms_fn(params, batch, train)


def build_task(config: Any, num_items: int) -> Task:
  """The task named by `config.model`."""
  if config.model == "srgnn":
    model = SRGNNRecommender(num_items=num_items, hidden=config.hidden, steps=config.gnn_steps)

    def terms(params, batch, train):
      scores = model.apply(params, batch, train=train)  # [G, n]
      return scores, {"ce": cross_entropy(scores, batch.targets, batch.graph_mask)}

    return Task(model=model, spec={"ce": (1.0, False)}, terms_fn=terms)
  raise ValueError(f"config.model: unknown model {config.model!r}; expected 'srgnn'")
