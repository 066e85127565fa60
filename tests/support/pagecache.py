"""How much of a file the page cache holds, asked of the kernel: ``mincore`` over a mapping
of the file (mapping reads nothing)."""

from __future__ import annotations

import ctypes
import mmap
import os
from pathlib import Path

import numpy as np

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]


def cached_pages(path: Path) -> tuple[int, int]:
    """(pages of ``path`` in the page cache, pages of the file)."""
    size = path.stat().st_size
    pages = -(-size // mmap.PAGESIZE)
    residency = np.zeros(pages, dtype=np.uint8)
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), size, prot=mmap.PROT_READ) as m:
        address = np.frombuffer(m, dtype=np.uint8).ctypes.data
        if _libc.mincore(address, size, residency.ctypes.data) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
    return int((residency & 1).sum()), pages
