"""Seeded synthetic session datasets with a learnable structure, shaped like real ones (tests and benchmarks).

Items fall into clusters; a session walks inside one cluster with occasional jumps, item popularity is Zipf-like, and
prefix lengths follow a geometric law with the requested mean, capped at `max_len`. Every session yields all its
prefix samples (as the real pipeline does), split at random into train / valid / test.
"""

from __future__ import annotations

import numpy as np

from llm4sbr_jax.dataset import PAD_NAME, ProcessedDataset, Split

# Shapes of the paper's datasets (items, mean prefix length, max prefix length).
SHAPES = {"beauty": (12101, 8.7, 202), "ml-1m": (3416, 17.6, 200), "catalog-100k": (100000, 8.7, 202),
          "catalog-1m": (1000000, 8.7, 202), "catalog-5m": (5000000, 8.7, 202)}


def _session_length_pmf(p: float, max_len: int) -> np.ndarray:
  """pmf of the session length n = clip(Geometric(p) + 1, 2, max_len + 1), indexed by n."""
  n = np.arange(max_len + 2)
  pmf = np.where(n >= 2, p * (1 - p) ** np.maximum(n - 2, 0), 0.0)
  pmf[max_len + 1] += 1.0 - pmf.sum()
  return pmf


def _geometric_p(mean_len: float, max_len: int) -> float:
  """The p whose sample-weighted mean prefix length is `mean_len` (a session of n clicks gives n - 1 prefixes of
  mean length n / 2), by bisection."""
  n = np.arange(max_len + 2)
  lo, hi = 1e-6, 1.0
  for _ in range(60):
    p = (lo + hi) / 2
    pmf = _session_length_pmf(p, max_len)
    mean = np.sum(pmf * (n - 1) * n / 2) / np.sum(pmf * (n - 1))
    lo, hi = (p, hi) if mean > mean_len else (lo, p)
  return (lo + hi) / 2


def make_dataset(num_items: int, num_samples: int, mean_len: float, max_len: int, seed: int = 0,
                 cluster_size: int = 20, valid_fraction: float = 0.1, test_fraction: float = 0.1,
                 name: str = "synthetic") -> ProcessedDataset:
  """A ProcessedDataset of about `num_samples` prefix samples (see the module docstring)."""
  rng = np.random.default_rng(seed)
  p = _geometric_p(mean_len, max_len)
  sessions, total = [], 0
  popularity = 1.0 / np.arange(1, cluster_size + 1) ** 0.8
  popularity /= popularity.sum()
  num_clusters = max(num_items // cluster_size, 1)
  while total < num_samples:
    # The first session has the longest allowed length, so the data always reaches max_len.
    n = int(min(rng.geometric(p) + 1, max_len + 1)) if sessions else max_len + 1
    cluster = rng.integers(num_clusters)
    jumps = rng.random(n) < 0.1
    clusters = np.where(jumps, rng.integers(num_clusters, size=n), cluster)
    items = clusters * cluster_size + rng.choice(cluster_size, size=n, p=popularity) + 1
    sessions.append(np.minimum(items, num_items).astype(np.int32))
    total += n - 1
  prefixes, targets, session_ids, times = [], [], [], []
  for s, seq in enumerate(sessions):
    for i in range(1, len(seq)):
      prefixes.append(seq[:i])
      targets.append(seq[i])
      session_ids.append(s)
      times.append(s * 1000 + i)
  order = rng.permutation(len(targets))
  n_test, n_valid = int(len(order) * test_fraction), int(len(order) * valid_fraction)
  parts = {"test": order[:n_test], "valid": order[n_test:n_test + n_valid], "train": order[n_test + n_valid:]}
  splits = {k: Split.from_prefixes([prefixes[i] for i in idx], [targets[i] for i in idx],
                                   [session_ids[i] for i in idx], [times[i] for i in idx])
            for k, idx in parts.items()}
  names = [PAD_NAME] + [f"item {i} (cluster {(i - 1) // cluster_size})" for i in range(1, num_items + 1)]
  return ProcessedDataset(name=name, item_names=names, raw_item_ids=[""] + [str(i) for i in range(1, num_items + 1)],
                          splits=splits, protocol={"protocol": "synthetic", "seed": seed, "mean_len": mean_len,
                                                   "max_len": max_len, "cluster_size": cluster_size})
