"""Keep freed host memory for reuse while a model runs on the CPU (glibc's malloc settings).

By default glibc serves every block above 32 MB with its own mmap and returns it to the system when
freed, and trims the heap top above 128 kB. A training step allocates and frees the same large
activations every time, so each step faults all of those pages in again, in system time that
grows with the input size and the batch. With mmap off, one arena and a high trim threshold the
blocks stay in the heap and are reused (page faults and step times: docs/benchmarks.md, "Host memory
reuse on the CPU"). This is what the jemalloc/tcmalloc preloads recommended for CPU training
achieve, without a library to install; resident memory stays near the step's peak.

`rtdetr train` applies it on the CPU; `rtdetr evaluate` and `inference` for a checkpoint on the CPU.

Set ``RTDETR_HOST_ALLOCATOR=default`` to keep glibc's defaults.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import sys

log = logging.getLogger(__name__)

ENV = "RTDETR_HOST_ALLOCATOR"
# mallopt(3) parameters
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: ~2 GiB of free heap top is kept

_tuned = False


def keep_freed_host_memory() -> bool:
    """Apply the settings once per process; True when they are in effect (Linux with glibc only)."""
    global _tuned
    if _tuned:
        return True
    if os.environ.get(ENV, "").strip().lower() == "default":
        log.debug("%s=default: glibc malloc left as it is", ENV)
        return False
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    # one arena first: threads that have not allocated yet then share the main heap, which can grow
    # past the 64 MB a thread arena's heap is limited to, which large blocks reach without mmap
    settings = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    _tuned = all(libc.mallopt(param, value) == 1 for param, value in settings)
    if _tuned:
        log.debug("glibc malloc: mmap off, one arena, trim threshold %d bytes", TRIM_THRESHOLD)
    return _tuned
