"""Ask glibc to hand large freed blocks back to the system at once: /metrics bodies of megabytes come and go."""

from __future__ import annotations

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h)
LARGE_BLOCK = 1 << 20  # blocks from this size get their own mapping, unmapped when freed


def _libc() -> ctypes.CDLL | None:
    """The C library, or None where it cannot be loaded."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def trim_heap() -> bool:
    """Hand the free memory at the top and inside every glibc arena back to the system; False where not glibc."""
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is None:
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    trim(0)
    return True


def return_large_blocks() -> bool:
    """Give every block of LARGE_BLOCK or more its own mapping; False where the C library cannot (not glibc)."""
    # glibc raises its mmap threshold to the size of each mapped block freed, so after the first 14 MB body every
    # later one came from the heap, and freed bodies stayed resident: a 200-target fleet's RSS grew by ~35 MB over
    # a minute of builds (bench/fleet.py). A fixed threshold stops that adjustment.
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, LARGE_BLOCK))
