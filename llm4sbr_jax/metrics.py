"""Top-K ranking metrics over the full item set, as sums and counts (padding rows masked).

HR@K is the paper's "P@K" (the target is among the top K; one target per sample, so it equals Recall@K). MRR@K is
1/rank when rank <= K else 0, averaged over *all* samples: the LLM4SBR reference code's MRR@5/@10 drop ranks 6-20 from
the denominator, which we do not copy. NDCG@K = 1/log2(rank + 1) when rank <= K. The rank counts the items scored
strictly higher than the target, plus one (ties resolved in the target's favour; the reference's `topk` breaks them
arbitrarily). A diverged model never looks good: a NaN score counts as higher than the target, a NaN target ranks
last. Items already in the session are not excluded (as in the reference).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from llm4sbr_jax import scoring

KS = (5, 10, 20)


def target_ranks(scores: jax.Array | scoring.PaddedScores | scoring.ChunkedScores | scoring.ShardedScores,
                 targets: jax.Array) -> jax.Array:
  """1-based rank of each target. scores [G, n] (column j = item j + 1), targets [G] item ids >= 1."""
  if isinstance(scores, scoring.PaddedScores):
    return scoring.padded_ranks(scores, jnp.clip(targets - 1, 0, scores.num_items - 1))
  if isinstance(scores, scoring.IMPLICIT):
    return scoring.ranks(scores, jnp.clip(targets - 1, 0, scores.num_items - 1))
  label = jnp.clip(targets - 1, 0, scores.shape[-1] - 1)
  own = jnp.take_along_axis(scores, label[:, None], axis=-1)[:, 0]  # [G]
  return scoring.rank_from_count(own, scoring.count_above(scores, own), scores.shape[-1])


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


def batch_ranks(scores: jax.Array, batch) -> dict[str, jax.Array]:
  """Per graph slot: the target's rank and the sample's row in its split (-1 on padding slots)."""
  return {"rank": target_ranks(scores, batch.targets).astype(jnp.int32),
          "index": jnp.where(batch.graph_mask, batch.sample_index, -1).astype(jnp.int32)}


def ranks_metrics(ranks: np.ndarray, ks: Sequence[int] = KS) -> dict[str, np.ndarray]:
  """Per-sample HR@K / MRR@K / NDCG@K (0-1) from 1-based ranks [..., N]; their mean over N is `finalize`'s / 100."""
  ranks = np.asarray(ranks, np.float64)
  out = {}
  for k in ks:
    hit = ranks <= k
    out[f"hr@{k}"] = hit.astype(np.float64)
    out[f"mrr@{k}"] = np.where(hit, 1.0 / ranks, 0.0)
    out[f"ndcg@{k}"] = np.where(hit, 1.0 / np.log2(ranks + 1.0), 0.0)
  return out


def paired_bootstrap(base: np.ndarray, other: np.ndarray, num_resamples: int = 1000, seed: int = 0,
                     ks: Sequence[int] = KS) -> dict[str, tuple[float, float]]:
  """95% paired-bootstrap interval of the improvement % of `other` over `base` per metric.

  Args:
    base, other: 1-based ranks [N] of the same test samples under two models.
    num_resamples: bootstrap resamples of the N samples (with replacement, the same rows for both models).

  Returns:
    {metric: (2.5th, 97.5th percentile of 100 * (other - base) / base)}; (nan, nan) when base's mean is 0 in a
    resample.
  """
  base, other = np.asarray(base), np.asarray(other)
  if base.shape != other.shape:
    raise ValueError(f"paired bootstrap needs the same test samples: {base.shape} vs {other.shape}")
  idx = np.random.default_rng(seed).integers(0, len(base), size=(num_resamples, len(base)))
  mb, mo = ranks_metrics(base[idx], ks), ranks_metrics(other[idx], ks)
  out = {}
  for name in mb:
    b, o = mb[name].mean(1), mo[name].mean(1)
    with np.errstate(divide="ignore", invalid="ignore"):
      gain = np.where(b > 0, 100.0 * (o - b) / b, np.nan)
    out[name] = tuple(np.percentile(gain, [2.5, 97.5])) if np.all(np.isfinite(gain)) else (np.nan, np.nan)
  return out


def finalize(sums: Mapping[str, float]) -> dict[str, float]:
  """Percent means (the papers' convention) from accumulated sums."""
  count = float(sums["count"])
  return {k: 100.0 * float(v) / max(count, 1.0) for k, v in sums.items() if k != "count"}
