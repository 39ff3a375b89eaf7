"""Top-K ranking metrics over the full item set, as sums and counts (padding rows masked).

HR@K is the paper's "P@K" (the target is among the top K; one target per sample, so it equals Recall@K). MRR@K is
1/rank when rank <= K else 0, averaged over *all* samples: the LLM4SBR reference code's MRR@5/@10 drop ranks 6-20 from
the denominator, which we do not copy. NDCG@K = 1/log2(rank + 1) when rank <= K. The rank counts the items scored
strictly higher than the target, plus one (ties resolved in the target's favour; the reference's `topk` breaks them
arbitrarily). Items already in the session are not excluded (as in the reference).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp

KS = (5, 10, 20)


def target_ranks(scores: jax.Array, targets: jax.Array) -> jax.Array:
  """1-based rank of each target. scores [G, n] (column j = item j + 1), targets [G] item ids >= 1."""
  label = jnp.clip(targets - 1, 0, scores.shape[-1] - 1)
  target_score = jnp.take_along_axis(scores, label[:, None], axis=-1)  # [G, 1]
  return 1 + jnp.sum(scores > target_score, axis=-1)  # [G]


def metric_sums(scores: jax.Array, targets: jax.Array, mask: jax.Array,
                ks: Sequence[int] = KS) -> dict[str, jax.Array]:
  """Sums of HR@K, MRR@K and NDCG@K over real rows, plus `count`."""
  rank = target_ranks(scores, targets).astype(jnp.float32)  # [G]
  m = mask.astype(jnp.float32)
  out = {"count": jnp.sum(m)}
  for k in ks:
    hit = (rank <= k).astype(jnp.float32) * m
    out[f"hr@{k}"] = jnp.sum(hit)
    out[f"mrr@{k}"] = jnp.sum(hit / rank)
    out[f"ndcg@{k}"] = jnp.sum(hit / jnp.log2(rank + 1.0))
  return out


def batch_metric_sums(scores: jax.Array, batch) -> dict[str, jax.Array]:
  """`metric_sums` of a packed batch (its targets and graph mask)."""
  return metric_sums(scores, batch.targets, batch.graph_mask)


def finalize(sums: Mapping[str, float]) -> dict[str, float]:
  """Percent means (the papers' convention) from accumulated sums."""
  count = float(sums["count"])
  return {k: 100.0 * float(v) / max(count, 1.0) for k, v in sums.items() if k != "count"}
