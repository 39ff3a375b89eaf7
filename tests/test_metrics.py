"""Ranking metrics against a brute-force reference."""

import numpy as np
import pytest

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


def test_a_nan_score_never_looks_good():
  """A diverged model: a NaN target ranks last, a NaN elsewhere counts as higher (NaN comparisons are all False,
  which would otherwise make every NaN target rank 1: HR = 100%)."""
  scores = np.array([[np.nan, np.nan, np.nan], [0.1, np.nan, 0.3], [0.1, 0.9, 0.3]], np.float32)
  np.testing.assert_array_equal(metrics.target_ranks(scores, np.array([2, 3, 2])), [3, 2, 1])
  got = metrics.finalize({k: float(v) for k, v in metrics.metric_sums(scores[:1], np.array([1]), np.ones(1, bool),
                                                                      ks=(1,)).items()})
  assert got["hr@1"] == 0.0


def test_ranks_metrics_and_paired_bootstrap():
  ranks = np.array([1, 3, 7, 25, 2, 11])
  per = metrics.ranks_metrics(ranks)
  np.testing.assert_allclose(per["hr@10"], [1, 1, 1, 0, 1, 0])
  np.testing.assert_allclose(per["mrr@5"], [1, 1 / 3, 0, 0, 0.5, 0])
  rng = np.random.default_rng(0)
  base = rng.integers(1, 60, 2000)
  better = np.maximum(1, base - 8)  # every target moves up 8 places
  ci = metrics.paired_bootstrap(base, better, num_resamples=300)
  assert 0 < ci["hr@20"][0] < ci["hr@20"][1]  # a clear improvement: the interval excludes 0
  same = metrics.paired_bootstrap(base, base, num_resamples=50)
  assert same["mrr@20"] == (0.0, 0.0)
  noise = metrics.paired_bootstrap(base, rng.permutation(base), num_resamples=300)
  assert noise["hr@20"][0] < 0 < noise["hr@20"][1]  # no difference in distribution: the interval spans 0
  with pytest.raises(ValueError, match="same test samples"):
    metrics.paired_bootstrap(base, base[:10])
