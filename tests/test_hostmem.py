"""Tests for hostmem: peak/current RSS and releasing freed heap memory."""

import numpy as np
import pytest

from llm4sbr_jax import hostmem


def test_rss_grows_with_touched_memory_and_peak_keeps_it():
  before, peak_before = hostmem.rss_mb(), hostmem.peak_rss_mb()
  block = np.ones(64 * 2**20 // 8)  # 64 MiB, every page written
  assert hostmem.rss_mb() - before > 48
  assert hostmem.peak_rss_mb() >= max(peak_before, hostmem.rss_mb() - 1)
  del block


def test_release_returns_fragmented_free_blocks():
  if not hostmem.release_free_memory():
    pytest.skip("no malloc_trim on this platform")
  # 64 KiB arrays come from the malloc heap (below the mmap threshold); freeing every other one leaves holes
  # that free() alone keeps mapped.
  blocks = [np.ones(8 * 1024) for _ in range(2000)]  # ~125 MiB
  del blocks[::2]
  held = hostmem.rss_mb()
  assert hostmem.release_free_memory()
  assert held - hostmem.rss_mb() > 30  # about half of the freed 62 MiB comes back
  del blocks
