"""glibc malloc policy for the CPU forward pass (``ICH_RETAIN_CPU_MEMORY``, applied by ``python -m app serve``).

By default glibc serves every allocation above 32 MB with a fresh ``mmap`` and returns it with ``munmap`` on
free, so each forward pass page-faults its ~1-2 GB of activations in again (zero-filled by the kernel).
:func:`set_cpu_memory_retention` (``retain=True``) serves them from the heap and keeps freed memory for the next
pass (PyTorch's CPU tuning guide recommends jemalloc/tcmalloc for the same reason; this is the glibc equivalent,
no extra library). The effect on the forward pass is measured in bench/README.md.
"""

from __future__ import annotations

import ctypes
import functools
import platform

_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8  # glibc <malloc.h>
_GLIBC_DEFAULT_MMAP_MAX, _GLIBC_DEFAULT_TRIM_THRESHOLD = 65536, 128 * 1024
_KEEP_FREED_BYTES = 2**31 - 1  # mallopt takes an int
_retaining = False


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def set_cpu_memory_retention(retain: bool) -> bool:
    """Process-wide glibc malloc policy for the CPU forward pass. Returns False where it does not apply (not glibc).

    ``retain=True`` serves large allocations from the heap and keeps freed memory (see the module docstring).
    The cost: the process keeps its peak memory (the service's RSS stays at its high-water mark).
    ``retain=False`` restores glibc's defaults and releases what it can.
    It also limits glibc to one arena, because per-thread arenas ``mmap`` large blocks regardless: call it before
    the process starts threads (``python -m app serve`` does, first thing), or threads that already own an arena
    keep the default behaviour.
    """
    global _retaining
    libc = _glibc()
    if libc is None:
        return False
    if retain:
        # one arena: glibc's per-thread arenas mmap large blocks whatever M_MMAP_MAX says, and the service runs the
        # model on a worker thread
        ok = (libc.mallopt(_M_ARENA_MAX, 1) and libc.mallopt(_M_MMAP_MAX, 0)
              and libc.mallopt(_M_TRIM_THRESHOLD, _KEEP_FREED_BYTES))
    else:
        ok = (libc.mallopt(_M_MMAP_MAX, _GLIBC_DEFAULT_MMAP_MAX)
              and libc.mallopt(_M_TRIM_THRESHOLD, _GLIBC_DEFAULT_TRIM_THRESHOLD) and libc.mallopt(_M_ARENA_MAX, 0))
        libc.malloc_trim(0)
    _retaining = bool(retain and ok)
    return bool(ok)


def cpu_memory_retained() -> bool:
    """Whether :func:`set_cpu_memory_retention` (True) is in effect in this process."""
    return _retaining
