"""Chunked and row-sharded scoring: log-sum-exp, its gradient, target ranks and whole runs equal the [G, n] path;
chunked memory is O(G x C)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import default
from llm4sbr_jax import cpu_kernels, dataset, metrics, scoring, synthetic, train
from llm4sbr_jax.models import base
from llm4sbr_jax.models import llm4sbr as L

P = jax.sharding.PartitionSpec


def _inputs(g=12, n=103, d=8, seed=0):
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
  session = jax.random.normal(k1, (g, d))
  items = jax.random.normal(k2, (n + 1, d))
  targets = jax.random.randint(k3, (g,), 1, n + 1)
  return session, items, targets


@pytest.mark.parametrize("kernel", [True, False])
def test_padded_evaluation_ranks_equal_the_dense_ranks(kernel, monkeypatch):
  """`PaddedScores` ranks (our CPU count kernel, or the jax.numpy count) equal those of the [G, n] scores, with ties
  and NaN scores."""
  if not kernel:
    monkeypatch.setattr(cpu_kernels, "available", lambda: False)
  rng = np.random.default_rng(0)
  session = jnp.asarray(rng.integers(-2, 3, (13, 6)).astype(np.float32))  # small integers: exact, many ties
  items = rng.integers(-2, 3, (42, 6)).astype(np.float32)
  items[7, 2] = np.nan  # an item scored NaN: above every target, or the last rank as a target
  items = jnp.asarray(items)
  targets = rng.integers(1, 42, 13)
  targets[4] = 7
  out = base.BackboneOutput(session, session, items)
  padded = base.score(session, out, padded=True)
  assert isinstance(padded, scoring.PaddedScores)
  ranks = jax.jit(lambda s, t: metrics.target_ranks(s, t))  # a new function: no trace shared with the other case
  assert ("llm4sbr_count_higher" in ranks.lower(padded, targets).as_text()) == kernel
  got = ranks(padded, targets)
  want = np.array([1 + np.sum(~(row <= row[t - 1])) if not np.isnan(row[t - 1]) else 41
                   for row, t in zip(np.asarray(session @ items[1:].T), targets)])
  np.testing.assert_array_equal(np.asarray(got), want)
  np.testing.assert_array_equal(np.asarray(metrics.target_ranks(padded.dense(), targets)), want)
  assert int(got[4]) == 41 and len(set(np.asarray(got).tolist())) > 3


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


def _row_sharded(session, items, targets, mask):
  """Loss (mean nll), its gradients and the ranks with `items` split over the 4 devices' rows (shard_scores)."""
  rows, per = items.shape[0], -(-items.shape[0] // 4)
  padded = jnp.pad(items, ((0, 4 * per - rows), (0, 0)))
  mesh = jax.sharding.Mesh(np.asarray(jax.local_devices()), ("data",))
  spec = P("data")

  def per_device(session, shard, targets, mask):
    table = scoring.ShardedTable(shard, rows, "data")
    scores = base.score(session, base.BackboneOutput(session, session, table))
    total, count = L.cross_entropy(scores, targets, mask)
    return jax.lax.psum(total, "data") / jax.lax.psum(count, "data"), metrics.target_ranks(scores, targets)

  def loss(session, padded):
    return jax.shard_map(lambda *a: per_device(*a)[0], mesh=mesh, in_specs=(spec,) * 4, out_specs=P(),
                         check_vma=False)(session, padded, targets, mask)

  value, (d_session, d_padded) = jax.value_and_grad(loss, argnums=(0, 1))(session, padded)
  ranks = jax.shard_map(lambda *a: per_device(*a)[1], mesh=mesh, in_specs=(spec,) * 4, out_specs=spec,
                        check_vma=False)(session, padded, targets, mask)
  return value, (d_session, d_padded[:rows]), ranks


def test_row_sharded_scores_equal_the_full_scores_with_ties_and_padding():
  """shard_scores over 4 devices: loss, gradients and ranks equal the full [G, n] path (targets on the first and
  last device, an exact tie across devices, padding rows of the batch and of the table)."""
  session, items, targets = _inputs(g=12, n=101)  # 102 rows: padded to 104, 26 a device
  targets = targets.at[0].set(1).at[1].set(101).at[2].set(5)  # first and last item (devices 0 and 3)
  items = items.at[60].set(items[5])  # item 60 (device 2) ties target item 5 (device 0) exactly
  mask = jnp.arange(12) % 4 != 3  # three padding rows
  value, grads, ranks = _row_sharded(session, items, targets, mask)

  def loss(session, items):
    total, count = L.cross_entropy(base.score(session, base.BackboneOutput(session, session, items)), targets, mask)
    return total / count

  full, full_grads = jax.value_and_grad(loss, argnums=(0, 1))(session, items)
  np.testing.assert_allclose(value, full, rtol=1e-6)
  for a, b in zip(grads, full_grads):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert np.all(np.asarray(grads[1][0]) == 0)  # the padding row is never scored
  np.testing.assert_array_equal(ranks, metrics.target_ranks(session @ items[1:].T, targets))


def test_nan_scores_rank_as_the_full_path_does():
  session, items, targets = _inputs(g=8, n=50)
  session = session.at[1].set(jnp.nan)  # a diverged row: every score NaN, its target ranks last
  items = items.at[7].set(jnp.nan)  # one NaN item: counts as higher than every target
  full = metrics.target_ranks(session @ items[1:].T, targets)
  assert full[1] == 50 and np.all(np.asarray(full)[[0, 2, 3]] >= 2)
  np.testing.assert_array_equal(metrics.target_ranks(scoring.ChunkedScores(session, items, 16), targets), full)
  session = jnp.concatenate([session] * 4)  # 8 sessions a device
  targets = jnp.concatenate([targets] * 4)
  _, _, ranks = _row_sharded(session, items, targets, jnp.ones(32, bool))
  np.testing.assert_array_equal(ranks, jnp.concatenate([full] * 4))


def test_row_sharded_lookups_equal_a_plain_gather():
  items = jax.random.normal(jax.random.PRNGKey(1), (30, 4))  # 30 rows: padded to 32 over 4 devices
  ids = jax.random.randint(jax.random.PRNGKey(2), (4, 6, 3), 0, 30)  # each device looks up a [6, 3] block
  mesh = jax.sharding.Mesh(np.asarray(jax.local_devices()), ("data",))

  def lookup(shard, ids):
    return scoring.ShardedTable(shard, 30, "data")[ids[0]][None]

  def total(padded):
    got = jax.shard_map(lookup, mesh=mesh, in_specs=(P("data"), P("data")), out_specs=P("data"),
                        check_vma=False)(padded, ids)
    return jnp.sum(got ** 2), got

  (_, got), grad = jax.value_and_grad(total, has_aux=True)(jnp.pad(items, ((0, 2), (0, 0))))
  np.testing.assert_array_equal(got, items[ids])
  np.testing.assert_allclose(grad[:30], jax.grad(lambda t: jnp.sum(t[ids] ** 2))(items), rtol=1e-6)
  table = scoring.ShardedTable(items[:8], 30, "data")
  with pytest.raises(TypeError, match="shard_scores"):
    table[1:]  # pylint: disable=pointless-statement
  with pytest.raises(TypeError, match="shard_scores"):
    jnp.asarray(table)


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
  """The large-catalogue settings: chunked scores with the item table split over the 4 devices, and each device
  scoring its own rows (`shard_scores`), both train and evaluate like the plain run."""
  d = tmp_path / "data"
  dataset.save_dataset(synthetic.make_dataset(60, 300, 4.0, 15, seed=0), str(d))
  results = []
  for chunk, shard, rows in ((0, False, False), (13, True, False), (0, True, True)):
    c = default.get_config()
    c.dataset_dir, c.hidden, c.batch_size, c.num_epochs, c.progress = str(d), 16, 20, 2, False
    c.score_chunk, c.shard_items, c.shard_scores = chunk, shard, rows
    results.append(train.train_and_evaluate(c, str(tmp_path / f"run{chunk}{rows}")))
  full, *others = (r["selected"] for r in results)
  for other in others:
    for split in ("valid", "test"):
      for k, v in full[split].items():
        assert abs(other[split][k] - v) < 1e-3, (split, k)
