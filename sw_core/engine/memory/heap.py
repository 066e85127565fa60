"""Keep freed chunk buffers from piling up in the C heap.

Chunk buffers of 1-16 MiB are allocated and freed by the thousand while a model streams,
from several threads. glibc's malloc raises its mmap threshold after the first such buffer
is freed, so later ones come from per-thread heap arenas that keep freed memory: measured
with SmolLM2 streaming under a 64 MiB budget, the process grew by about 300 MiB more than
the weights it held. A fixed threshold of 1 MiB makes every large buffer its own mapping,
returned to the system on free (the growth drops to the budget plus about 50 MiB).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
import threading

#: glibc's ``mallopt`` parameter number for M_MMAP_THRESHOLD.
_M_MMAP_THRESHOLD = -3
#: Allocations at least this large get their own mapping.
MMAP_THRESHOLD_BYTES = 1 << 20

_done = False
_lock = threading.Lock()


def limit_heap_retention(threshold_bytes: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Fix glibc's mmap threshold (once per process); False where there is no glibc."""
    global _done
    with _lock:
        if _done:
            return True
        if not sys.platform.startswith("linux"):
            return False
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
        except (OSError, AttributeError):
            return False
        mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        mallopt.restype = ctypes.c_int
        _done = bool(mallopt(_M_MMAP_THRESHOLD, int(threshold_bytes)))
        return _done
