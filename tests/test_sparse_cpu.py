"""The native CSR kernel: equal to scipy's product (every width path, empty rows, rectangular), one call per device
under shard_map, its build cache, and clear errors for bad arguments or a missing compiler."""

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp
from jax.sharding import Mesh, PartitionSpec as P

from llm4sbr_jax import sparse_cpu

pytestmark = pytest.mark.skipif(not sparse_cpu.available(), reason="no C++ compiler to build the kernel")


def _random_csr(rows, cols, density, seed):
  m = sp.random(rows, cols, density=density, format="csr", dtype=np.float32, random_state=seed)
  keep = np.ones(rows, np.float32)
  keep[rows // 2] = 0  # an empty row
  m = (sp.diags(keep) @ m).tocsr()
  m.eliminate_zeros()
  return m


def _product(m, x):
  return jax.jit(lambda x: sparse_cpu.csr_matmul(jnp.asarray(m.indptr), jnp.asarray(m.indices),
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
  first = sparse_cpu.build(tmp_path)
  stamp = os.stat(first).st_mtime_ns
  assert sparse_cpu.build(tmp_path) == first and os.stat(first).st_mtime_ns == stamp
  assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no partial files left
  with pytest.raises(RuntimeError, match=re.escape("no C++ compiler 'no-such-c++' on PATH")):
    sparse_cpu.build(tmp_path / "other", compiler="no-such-c++")


def test_bad_arguments_are_named():
  m = _random_csr(10, 6, 0.3, seed=1)
  args = jnp.asarray(m.indptr), jnp.asarray(m.indices), jnp.asarray(m.data)
  with pytest.raises(ValueError, match="float32"):
    sparse_cpu.csr_matmul(*args, jnp.ones((6, 3), jnp.int32), 10)
  with pytest.raises(ValueError, match="indptr"):
    sparse_cpu.csr_matmul(*args, jnp.ones((6, 3), jnp.float32), 11)
  with pytest.raises(ValueError, match="1024"):
    sparse_cpu.csr_matmul(*args, jnp.ones((6, 1025), jnp.float32), 10)


def test_bad_structure_is_named():
  x = jnp.ones((6, 3), jnp.float32)
  with pytest.raises(ValueError, match=re.escape("column indices must lie in [0, 6), got [0, 6]")):
    sparse_cpu.csr_matmul(jnp.array([0, 1, 2]), jnp.array([0, 6]), jnp.ones(2), x, 2)
  with pytest.raises(ValueError, match="indptr must rise from 0 to nnz = 2"):
    sparse_cpu.csr_matmul(jnp.array([0, 2, 1]), jnp.array([0, 1]), jnp.ones(2), x, 2)


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
