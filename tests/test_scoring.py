"""Chunked scoring: log-sum-exp, its gradient, target ranks and whole runs equal the [G, n] path; memory is O(G x C)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import default
from llm4sbr_jax import dataset, metrics, scoring, synthetic, train
from llm4sbr_jax.models import base
from llm4sbr_jax.models import llm4sbr as L


def _inputs(g=12, n=103, d=8, seed=0):
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
  session = jax.random.normal(k1, (g, d))
  items = jax.random.normal(k2, (n + 1, d))
  targets = jax.random.randint(k3, (g,), 1, n + 1)
  return session, items, targets


@pytest.mark.parametrize("chunk", [10, 103, 500])
def test_cross_entropy_and_its_gradient_equal_the_full_scores(chunk):
  session, items, targets = _inputs()
  mask = jnp.arange(12) < 9  # three padding rows

  def loss(session, items, chunked):
    out = base.BackboneOutput(session, session, items)
    scores = base.score(session, out, chunk if chunked else 0)
    total, count = L.cross_entropy(scores, targets, mask)
    return total / count

  full, full_grads = jax.value_and_grad(loss, argnums=(0, 1))(session, items, False)
  value, grads = jax.value_and_grad(loss, argnums=(0, 1))(session, items, True)
  np.testing.assert_allclose(value, full, rtol=1e-6)
  for a, b in zip(grads, full_grads):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert np.all(np.asarray(grads[1][0]) == 0)  # the padding row is never scored


def test_bfloat16_products_stay_within_the_stated_tolerance_of_float32():
  session, items, targets = _inputs(g=32, n=5000, d=64)
  mask = jnp.ones(32, bool)

  def loss(session, items, chunk, dtype):
    out = base.BackboneOutput(session, session, items)
    total, count = L.cross_entropy(base.score(session, out, chunk, dtype), targets, mask)
    return total / count

  grad = jax.value_and_grad(loss, argnums=(0, 1))
  exact, exact_grads = grad(session, items, 0, "float32")
  for chunk in (0, 700):
    value, grads = grad(session, items, chunk, "bfloat16")
    assert abs(float(value) - float(exact)) < 2e-3 * abs(float(exact))  # README: loss within 0.2%
    for a, b in zip(grads, exact_grads):  # gradients within 2% of their largest entry
      assert float(jnp.max(jnp.abs(a - b))) < 2e-2 * float(jnp.max(jnp.abs(b)))
    assert float(value) != float(exact)  # the products really ran in bfloat16
  full = metrics.target_ranks(base.score(session, base.BackboneOutput(session, session, items), 0, "bfloat16"), targets)
  chunked = metrics.target_ranks(scoring.ChunkedScores(session, items, 700, "bfloat16"), targets)
  np.testing.assert_array_equal(chunked, full)


def test_ranks_equal_the_full_scores_and_ties_favour_the_target():
  session, items, targets = _inputs(g=40, n=257)
  full = metrics.target_ranks(session @ items[1:].T, targets)
  for chunk in (16, 64, 257):
    np.testing.assert_array_equal(metrics.target_ranks(scoring.ChunkedScores(session, items, chunk), targets), full)
  assert len(np.unique(full)) > 10
  tied = items.at[5].set(items[targets[0]])  # another item with exactly the target's embedding
  ranks = metrics.target_ranks(scoring.ChunkedScores(session, tied, 32), targets)
  np.testing.assert_array_equal(ranks[0], metrics.target_ranks(session @ tied[1:].T, targets)[0])


def test_a_backbone_with_extra_scores_refuses_chunking():
  session, items, _ = _inputs()
  out = base.BackboneOutput(session, session, items, extra_scores=jnp.zeros((12, 103)))
  with pytest.raises(ValueError, match="not a plain dot product"):
    base.score(session, out, 16)


def test_peak_memory_is_bounded_by_the_chunk():
  session, items, targets = _inputs(g=100, n=200_000, d=16)
  mask = jnp.ones(100, bool)

  def temp_bytes(chunk):
    def loss(session, items):
      out = base.BackboneOutput(session, session, items)
      return L.cross_entropy(base.score(session, out, chunk), targets, mask)[0]
    step = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(session, items).compile()
    return step.memory_analysis().temp_size_in_bytes

  full, chunked = temp_bytes(0), temp_bytes(4096)
  assert full > 100 * 200_000 * 4  # at least one [G, n] float32 matrix
  # The chunked step keeps the item-table-sized gradient pieces but no [G, n] matrix.
  assert chunked < full / 3, (full, chunked)


def test_a_chunked_run_trains_and_evaluates_like_the_full_one(tmp_path):
  """The large-catalogue settings together: chunked scores and the item table split over the 4 devices."""
  d = tmp_path / "data"
  dataset.save_dataset(synthetic.make_dataset(60, 300, 4.0, 15, seed=0), str(d))
  results = []
  for chunk, shard in ((0, False), (13, True)):
    c = default.get_config()
    c.dataset_dir, c.hidden, c.batch_size, c.num_epochs, c.progress = str(d), 16, 20, 2, False
    c.score_chunk, c.shard_items = chunk, shard
    results.append(train.train_and_evaluate(c, str(tmp_path / f"run{chunk}")))
  full, chunked = (r["selected"] for r in results)
  for split in ("valid", "test"):
    for k, v in full[split].items():
      assert abs(chunked[split][k] - v) < 1e-3, (split, k)
