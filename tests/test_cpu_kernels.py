"""Our CPU kernels: the CSR product equal to scipy's (every width path, empty rows, rectangular, cache blocks, one
call per device under shard_map); the rank count equal to numpy's with ties and NaNs; the build cache; errors."""

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp
from jax.sharding import Mesh, PartitionSpec as P

from llm4sbr_jax import cpu_kernels

pytestmark = pytest.mark.skipif(not cpu_kernels.available(), reason="no C++ compiler to build the kernel")


def _random_csr(rows, cols, density, seed):
  m = sp.random(rows, cols, density=density, format="csr", dtype=np.float32, random_state=seed)
  keep = np.ones(rows, np.float32)
  keep[rows // 2] = 0  # an empty row
  m = (sp.diags(keep) @ m).tocsr()
  m.eliminate_zeros()
  return m


def _product(m, x):
  return jax.jit(lambda x: cpu_kernels.csr_matmul(jnp.asarray(m.indptr), jnp.asarray(m.indices),
                                                 jnp.asarray(m.data), x, m.shape[0]))(x)


@pytest.mark.parametrize("d", [1, 16, 17, 100, 300])  # specialised widths (16, 100) and the generic loop
def test_equals_scipy(d):
  m = _random_csr(700, 333, 0.05, seed=d)  # more rows than one thread chunk, rectangular
  x = np.random.default_rng(d).standard_normal((333, d)).astype(np.float32)
  np.testing.assert_allclose(np.asarray(_product(m, jnp.asarray(x))), m @ x, rtol=1e-5, atol=1e-5)


def test_no_rows_and_no_nonzeros():
  x = jnp.ones((5, 4), jnp.float32)
  assert _product(sp.csr_matrix((0, 5), dtype=np.float32), x).shape == (0, 4)
  np.testing.assert_array_equal(np.asarray(_product(sp.csr_matrix((3, 5), dtype=np.float32), x)), np.zeros((3, 4)))


def test_one_call_per_device_under_shard_map():
  m = _random_csr(200, 200, 0.1, seed=0)
  devices = jax.devices()
  x = np.random.default_rng(0).standard_normal((len(devices), 200, 8)).astype(np.float32)
  mesh = Mesh(np.array(devices), ("d",))
  f = jax.jit(jax.shard_map(lambda v: _product(m, v[0])[None], mesh=mesh, in_specs=P("d"), out_specs=P("d")))
  out = np.asarray(f(jnp.asarray(x)))
  for k in range(len(devices)):
    np.testing.assert_allclose(out[k], m @ x[k], rtol=1e-5, atol=1e-5)


def test_build_is_cached_and_missing_compiler_is_named(tmp_path):
  first = cpu_kernels.build(tmp_path)
  stamp = os.stat(first).st_mtime_ns
  assert cpu_kernels.build(tmp_path) == first and os.stat(first).st_mtime_ns == stamp
  assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no partial files left
  with pytest.raises(RuntimeError, match=re.escape("no C++ compiler 'no-such-c++' on PATH")):
    cpu_kernels.build(tmp_path / "other", compiler="no-such-c++")


def test_bad_arguments_are_named():
  m = _random_csr(10, 6, 0.3, seed=1)
  args = jnp.asarray(m.indptr), jnp.asarray(m.indices), jnp.asarray(m.data)
  with pytest.raises(ValueError, match="float32"):
    cpu_kernels.csr_matmul(*args, jnp.ones((6, 3), jnp.int32), 10)
  with pytest.raises(ValueError, match="indptr"):
    cpu_kernels.csr_matmul(*args, jnp.ones((6, 3), jnp.float32), 11)
  with pytest.raises(ValueError, match="1024"):
    cpu_kernels.csr_matmul(*args, jnp.ones((6, 1025), jnp.float32), 10)


def test_bad_structure_is_named():
  x = jnp.ones((6, 3), jnp.float32)
  with pytest.raises(ValueError, match=re.escape("column indices must lie in [0, 6), got [0, 6]")):
    cpu_kernels.csr_matmul(jnp.array([0, 1, 2]), jnp.array([0, 6]), jnp.ones(2), x, 2)
  with pytest.raises(ValueError, match="indptr must rise from 0 to nnz = 2"):
    cpu_kernels.csr_matmul(jnp.array([0, 2, 1]), jnp.array([0, 1]), jnp.ones(2), x, 2)


@pytest.mark.parametrize("sort", [True, False])
def test_cache_blocks_with_sorted_and_unsorted_rows(sort):
  # x is 8 MB: several column blocks (one per ~3/4 of the L2 cache) unless the L2 holds it all
  m = _random_csr(300, 20000, 0.01, seed=3)
  if not sort:  # reverse each row's entries: every pass still uses each non-zero exactly once
    for i in range(m.shape[0]):
      lo, hi = m.indptr[i], m.indptr[i + 1]
      m.indices[lo:hi], m.data[lo:hi] = m.indices[lo:hi][::-1].copy(), m.data[lo:hi][::-1].copy()
  x = np.random.default_rng(3).standard_normal((20000, 100)).astype(np.float32)
  np.testing.assert_allclose(np.asarray(_product(m, jnp.asarray(x))), m @ x, rtol=1e-5, atol=1e-5)


def test_count_higher_equals_numpy_with_ties_and_nans():
  rng = np.random.default_rng(0)
  scores = rng.integers(0, 5, (37, 300)).astype(np.float32)  # many ties: equal scores are not higher
  scores[3, 10:20] = np.nan  # NaN scores count as higher
  labels = rng.integers(0, 300, 37).astype(np.int32)
  labels[5] = 0  # a label in the skipped column still gives its score as the threshold
  for first in (0, 1, 300):
    got = np.asarray(jax.jit(lambda s, l, f=first: cpu_kernels.count_higher(s, l, f))(scores, labels))
    t = scores[np.arange(37), labels][:, None]
    want = np.sum(~(scores[:, first:] <= t), axis=1)
    np.testing.assert_array_equal(got, want)
  with pytest.raises(ValueError, match="first must lie in"):
    cpu_kernels.count_higher(jnp.asarray(scores), jnp.asarray(labels), 301)
  with pytest.raises(ValueError, match="labels"):
    cpu_kernels.count_higher(jnp.asarray(scores), jnp.asarray(labels[:5]), 1)
