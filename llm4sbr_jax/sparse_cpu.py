"""A CSR sparse x dense product for XLA:CPU (`csrc/csr_matmul.cc`), built with the host's C++ compiler on first use.

`csr_matmul(indptr, indices, data, x, n_rows)` is one XLA custom call that computes `S @ x` for a CSR matrix S
[n_rows, n_cols] and a dense x [n_cols, d] (float32). Each output row is accumulated in registers over its
non-zeros (width specialised for d in 16/32/64/100/128/256, any d up to 1024 otherwise), the next rows of x are
prefetched, and chunks of rows run on XLA's own intra-op thread pool. On Beauty's hypergraph (S: 12,101 x 12,101,
1.85M non-zeros, d = 100) it takes ~7.6 ms per product on this 2-core CPU against ~19 ms for
`jax.experimental.sparse`'s CSR kernel (docs/results.md); S2-DHCN runs six of them per training step.

The library is compiled once per (source, jax version, compiler, CPU) into `$LLM4SBR_JAX_CACHE` (default
`~/.cache/llm4sbr_jax`; ~2 s with g++) and registered as the FFI target `TARGET`. `available()` says whether that
worked; callers fall back to `jax.experimental.sparse` when it did not (no compiler, another platform), and log why.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

log = logging.getLogger(__name__)

TARGET = "llm4sbr_csr_matmul"
SOURCE = Path(__file__).resolve().parent / "csrc" / "csr_matmul.cc"
FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-w")


def _cpu_signature() -> str:
  """The CPU's feature flags (the library is built with -march=native), or the processor name off Linux."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      return next((line for line in f if line.startswith("flags")), platform.processor())
  except OSError:
    return platform.processor()


def cache_dir() -> Path:
  return Path(os.environ.get("LLM4SBR_JAX_CACHE", Path.home() / ".cache" / "llm4sbr_jax"))


def build(directory: Optional[Path] = None, compiler: Optional[str] = None) -> Path:
  """Compiles `SOURCE` into `directory` (default `cache_dir()`) unless a matching build is there; returns its path.

  Raises:
    RuntimeError: no compiler, or the compiler failed (its output in the message).
  """
  compiler = compiler or os.environ.get("CXX", "g++")
  resolved = shutil.which(compiler)
  if resolved is None:
    raise RuntimeError(f"no C++ compiler {compiler!r} on PATH (set CXX) to build {SOURCE.name}")
  source = SOURCE.read_bytes()
  key = hashlib.sha256(b"\0".join([source, jax.__version__.encode(), resolved.encode(), " ".join(FLAGS).encode(),
                                   platform.machine().encode(), _cpu_signature().encode()])).hexdigest()[:16]
  directory = Path(directory or cache_dir())
  library = directory / f"csr_matmul-{key}.so"
  if library.exists():
    return library
  directory.mkdir(parents=True, exist_ok=True)
  fd, partial = tempfile.mkstemp(suffix=".so", dir=directory)  # concurrent builders each write their own file
  os.close(fd)
  command = [resolved, *FLAGS, "-I", jax.ffi.include_dir(), str(SOURCE), "-o", partial]
  done = subprocess.run(command, capture_output=True, text=True, check=False)
  if done.returncode != 0:
    os.unlink(partial)
    raise RuntimeError(f"building {SOURCE.name} failed ({' '.join(command)}):\n{done.stderr[-4000:]}")
  os.replace(partial, library)
  return library


@functools.cache
def available() -> bool:
  """True once the kernel is built, loaded and registered for the CPU (cached; the reason is logged if not)."""
  if jax.default_backend() != "cpu":
    return False
  try:
    library = ctypes.cdll.LoadLibrary(str(build()))
    jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(library.Llm4sbrCsrMatmul), platform="cpu")
  except (RuntimeError, OSError) as error:
    log.warning("native CSR kernel unavailable, using jax.experimental.sparse: %s", error)
    return False
  return True


def _check_structure(indptr: np.ndarray, indices: np.ndarray, n_cols: int) -> None:
  if indptr[0] != 0 or indptr[-1] != len(indices) or np.any(np.diff(indptr) < 0):
    raise ValueError(f"csr_matmul: indptr must rise from 0 to nnz = {len(indices)}")
  if len(indices) and (indices.min() < 0 or indices.max() >= n_cols):
    raise ValueError(f"csr_matmul: column indices must lie in [0, {n_cols}), got [{indices.min()}, {indices.max()}]")


def csr_matmul(indptr: jax.Array, indices: jax.Array, data: jax.Array, x: jax.Array, n_rows: int) -> jax.Array:
  """S @ x on the CPU for S in CSR form (int32 indptr [n_rows + 1], int32 indices / float32 data [nnz]).

  Needs `available()`. x [n_cols, d] float32 -> [n_rows, d]. Shapes are checked here and in the kernel; the CSR
  structure (indptr rising from 0 to nnz, column indices in [0, n_cols)) here when the arrays are concrete: the
  kernel reads x at the given indices unchecked, so traced ones must be valid.
  """
  if x.ndim != 2 or x.dtype != jnp.float32:
    raise ValueError(f"csr_matmul: x must be float32 [n_cols, d], got {x.dtype} {x.shape}")
  if indptr.shape != (n_rows + 1,) or indices.shape != data.shape or indices.ndim != 1:
    raise ValueError(f"csr_matmul: indptr [{n_rows + 1}] and equal-length indices / data expected, got "
                     f"{indptr.shape}, {indices.shape}, {data.shape}")
  if x.shape[1] > 1024:
    raise ValueError(f"csr_matmul: at most 1024 columns, got {x.shape[1]}")
  try:  # the kernel trusts the structure: check it where it is concrete (S2-DHCN's constants: once per trace)
    _check_structure(np.asarray(indptr), np.asarray(indices), x.shape[0])
  except jax.errors.TracerArrayConversionError:
    pass
  call = jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct((n_rows, x.shape[1]), jnp.float32))
  return call(indptr.astype(jnp.int32), indices.astype(jnp.int32), data.astype(jnp.float32), x)
