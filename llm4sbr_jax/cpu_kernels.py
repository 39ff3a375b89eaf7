"""Our XLA:CPU kernels (`csrc/*.cc`), built with the host's C++ compiler on first use and called as FFI custom calls.

* `csr_matmul(indptr, indices, data, x, n_rows)`: `S @ x` for a CSR matrix S [n_rows, n_cols] and a dense x
  [n_cols, d] (float32): each output row accumulated in registers over its non-zeros (width specialised for d in
  16/32/64/100/128/256, any d up to 1024 otherwise), the next rows of x prefetched, x visited in column blocks of
  3/4 of the L2 cache, chunks of rows on XLA's intra-op thread pool. On Beauty's hypergraph (S: 12,101 x 12,101,
  1.85M non-zeros, d = 100): 4.8 ms per product on this 2-core CPU against 17-19 ms for `jax.experimental.sparse`'s
  CSR kernel (docs/results.md); S2-DHCN runs six of them per training step.
* `count_higher(scores, labels, first)`: per row, how many of columns [first, C) score above the label's column
  (NaN counts as above), reading the score matrix once: the evaluation's rank count on the unsliced item-score
  product (XLA materialises the [G, C] comparison before reducing it, and would copy a column slice).

The library is compiled once per (sources, jax version, compiler, CPU) into `$LLM4SBR_JAX_CACHE` (default
`~/.cache/llm4sbr_jax`; ~3 s with g++) and its targets registered. `available()` says whether that worked; callers
fall back to jax.numpy / `jax.experimental.sparse` when it did not (no compiler, another platform), and log why.
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
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

log = logging.getLogger(__name__)

CSRC = Path(__file__).resolve().parent / "csrc"
SOURCES = ("csr_matmul.cc", "count_higher.cc")  # and the header parallel_for.h
TARGETS = {"llm4sbr_csr_matmul": "Llm4sbrCsrMatmul", "llm4sbr_count_higher": "Llm4sbrCountHigher"}
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
  """Compiles `SOURCES` into `directory` (default `cache_dir()`) unless a matching build is there; returns its path.

  Raises:
    RuntimeError: no compiler, or the compiler failed (its output in the message).
  """
  compiler = compiler or os.environ.get("CXX", "g++")
  resolved = shutil.which(compiler)
  if resolved is None:
    raise RuntimeError(f"no C++ compiler {compiler!r} on PATH (set CXX) to build {', '.join(SOURCES)}")
  code = [(CSRC / name).read_bytes() for name in (*SOURCES, "parallel_for.h")]
  key = hashlib.sha256(b"\0".join([*code, jax.__version__.encode(), resolved.encode(), " ".join(FLAGS).encode(),
                                   platform.machine().encode(), _cpu_signature().encode()])).hexdigest()[:16]
  directory = Path(directory or cache_dir())
  library = directory / f"cpu_kernels-{key}.so"
  if library.exists():
    return library
  directory.mkdir(parents=True, exist_ok=True)
  fd, partial = tempfile.mkstemp(suffix=".so", dir=directory)  # concurrent builders each write their own file
  os.close(fd)
  command = [resolved, *FLAGS, "-I", jax.ffi.include_dir(), "-I", str(CSRC), *(str(CSRC / n) for n in SOURCES),
             "-o", partial]
  done = subprocess.run(command, capture_output=True, text=True, check=False)
  if done.returncode != 0:
    os.unlink(partial)
    raise RuntimeError(f"building the CPU kernels failed ({' '.join(command)}):\n{done.stderr[-4000:]}")
  os.replace(partial, library)
  return library


@functools.cache
def available() -> bool:
  """True once the kernel is built, loaded and registered for the CPU (cached; the reason is logged if not)."""
  if jax.default_backend() != "cpu":
    return False
  try:
    library = ctypes.cdll.LoadLibrary(str(build()))
    for target, symbol in TARGETS.items():
      jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, symbol)), platform="cpu")
  except (RuntimeError, OSError) as error:
    log.warning("our CPU kernels are unavailable, using jax.numpy / jax.experimental.sparse: %s", error)
    return False
  return True


def on_cpu(kernel_fn: Callable[..., Any], fallback: Callable[..., Any]) -> Callable[..., Any]:
  """`kernel_fn` where the call is lowered for the CPU and the kernels are built, else `fallback` (same arguments)."""
  if not available():
    return fallback
  return lambda *args: jax.lax.platform_dependent(*args, cpu=kernel_fn, default=fallback)


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
  call = jax.ffi.ffi_call("llm4sbr_csr_matmul", jax.ShapeDtypeStruct((n_rows, x.shape[1]), jnp.float32))
  return call(indptr.astype(jnp.int32), indices.astype(jnp.int32), data.astype(jnp.float32), x)


def count_higher(scores: jax.Array, labels: jax.Array, first: int = 0) -> jax.Array:
  """[G] int32: per row of scores [G, C], the columns in [first, C) scoring above column labels[g] (NaN: above).

  Needs `available()`. labels [G] must lie in [0, C) (the kernel fails the call otherwise).
  """
  if scores.ndim != 2 or scores.dtype != jnp.float32 or labels.shape != scores.shape[:1]:
    raise ValueError(f"count_higher: float32 scores [G, C] and labels [G] expected, got {scores.dtype} "
                     f"{scores.shape} and {labels.shape}")
  if not 0 <= first <= scores.shape[1]:
    raise ValueError(f"count_higher: first must lie in [0, {scores.shape[1]}], got {first}")
  call = jax.ffi.ffi_call("llm4sbr_count_higher", jax.ShapeDtypeStruct(scores.shape[:1], jnp.int32))
  return call(scores, labels.astype(jnp.int32), first=np.int64(first))
