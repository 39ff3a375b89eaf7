"""Host memory: peak resident set size, and handing freed heap memory back to the OS.

XLA compilation and the intent builders free hundreds of MB of small heap blocks; glibc keeps them mapped (they
count in RSS) until `malloc_trim` returns them. Training calls `release_free_memory` after compiling and after
loading the intents so those freed blocks do not sit under the intent arrays for the rest of the run.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import resource
import sys


@functools.lru_cache(maxsize=1)
def _malloc_trim():
  """glibc's `malloc_trim`, or None where the C library has none (macOS, musl)."""
  name = ctypes.util.find_library("c")
  try:
    return getattr(ctypes.CDLL(name), "malloc_trim") if name else None
  except (OSError, AttributeError):
    return None


def release_free_memory() -> bool:
  """Returns freed heap memory to the OS; False where the platform offers no way to (nothing is done then)."""
  trim = _malloc_trim()
  if trim is None:
    return False
  trim(0)
  return True


def peak_rss_mb() -> float:
  """This process's peak resident set size in MiB (`ru_maxrss` is KiB on Linux, bytes on macOS)."""
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def rss_mb() -> float:
  """Current resident set size in MiB (Linux `/proc/self/statm`; falls back to the peak elsewhere)."""
  try:
    with open("/proc/self/statm") as f:
      pages = int(f.read().split()[1])
  except OSError:
    return peak_rss_mb()
  return pages * resource.getpagesize() / 2**20
