"""Keeping a run's resident memory flat and small whatever the input's size (at most 512 MB at
any size).

A run allocates and frees the same large buffers again and again: Arrow chunks, pandas frames,
dlt's files. `configure` (called once by each process that loads: a run, the API server, a
cluster worker) sets two of the three things that keep what is freed from staying resident:

- pyarrow's default pool (mimalloc) keeps what Arrow frees for Arrow alone; the system pool
  hands it back to malloc, where pandas, GX and dlt reuse it (about 50 MB less at the peak).
- glibc raises its mmap threshold to the largest block freed so far (up to 32 MB), after which
  chunk-sized buffers come from the heap, where they fragment and stay; a fixed threshold keeps
  every buffer over 256 KiB in a mapping of its own, returned whole when freed (measured on
  1M rows: 578 → 522 MB peak).
- `trim` after each land gives back freed heap pages glibc would keep for reuse, after
  collecting cyclic garbage first: dlt's pipeline objects form reference cycles that hold the
  Arrow chunks a land loaded, and a process doing little else in Python (a file run, whose
  checkpoints run in the gate process) reaches a full collection rarely: 16 MB of Arrow per
  land stayed resident until one happened (1M rows: 300 → 500 MB). `freeze` once the modules
  are imported keeps that collection to the objects made since (0.16 s → 30 µs), and keeps a
  forked child from copying the pages the collector would otherwise touch.

glibc only: musl and other systems have neither mallopt's threshold nor malloc_trim, and keep
their own defaults.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import sys

import pyarrow as pa

M_MMAP_THRESHOLD = -3  # glibc's malloc.h
MMAP_THRESHOLD_BYTES = 256 * 1024

_LIBC = ctypes.CDLL(ctypes.util.find_library("c")) if sys.platform == "linux" else None
_TRIM = getattr(_LIBC, "malloc_trim", None)


def configure() -> None:
    """Arrow's frees back to malloc, and every large buffer in a mapping of its own."""
    pa.set_memory_pool(pa.system_memory_pool())
    if _TRIM is not None:  # glibc (musl's mallopt ignores the setting)
        _LIBC.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)


def freeze() -> None:
    """Leave every object alive now (modules, classes, settings) out of later collections."""
    gc.collect()
    gc.freeze()


def trim() -> None:
    """Free cyclic garbage, then return freed heap pages to the system (where malloc_trim
    exists)."""
    gc.collect()
    if _TRIM is not None:
        _TRIM(0)
