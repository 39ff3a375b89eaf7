"""Ranking metrics against a brute-force reference."""

import numpy as np

from llm4sbr_jax import metrics


def test_metrics_match_brute_force_and_count_every_sample():
  rng = np.random.default_rng(0)
  scores = rng.normal(size=(50, 40)).astype(np.float32)
  targets = rng.integers(1, 41, size=50)
  mask = np.ones(50, bool)
  mask[45:] = False  # padding rows
  sums = metrics.metric_sums(scores, targets, mask)
  got = metrics.finalize({k: float(v) for k, v in sums.items()})
  ranks = np.array([1 + np.sum(scores[i] > scores[i, t - 1]) for i, t in enumerate(targets)])[:45]
  for k in (5, 10, 20):
    hit = ranks <= k
    np.testing.assert_allclose(got[f"hr@{k}"], 100 * hit.mean(), rtol=1e-5)
    # Every real sample is in the denominator (the reference code's MRR@5/@10 drop ranks k+1..20).
    np.testing.assert_allclose(got[f"mrr@{k}"], 100 * np.mean(np.where(hit, 1 / ranks, 0)), rtol=1e-5)
    np.testing.assert_allclose(got[f"ndcg@{k}"], 100 * np.mean(np.where(hit, 1 / np.log2(ranks + 1), 0)), rtol=1e-5)
  assert float(sums["count"]) == 45


def test_rank_is_one_for_the_top_item():
  scores = np.array([[0.1, 0.9, 0.3]], np.float32)
  assert int(metrics.target_ranks(scores, np.array([2]))[0]) == 1
  assert int(metrics.target_ranks(scores, np.array([1]))[0]) == 3
