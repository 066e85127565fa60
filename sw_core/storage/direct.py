"""Reading chunk files past the page cache (``O_DIRECT``), straight into the engine's buffer.

A chunk set larger than the machine's memory cannot stay in the page cache: every sweep
reads it from the disk again, and buffered reads then cost a second copy (page cache ->
buffer) and fill the page cache with pages that are evicted before they are read again --
pushing out everything else the host caches, the worker's own program files included.
``O_DIRECT`` reads let the disk write into the engine's buffer itself (one copy, by DMA) and
leave the page cache alone. They need a buffer aligned to the block size (the engine's pooled
buffers are page-aligned mappings) and aligned lengths: the aligned bulk of a file is read
directly into the buffer, the last partial block through a small aligned bounce buffer.

Where ``O_DIRECT`` is refused (tmpfs, some network file systems: ``EINVAL``) a buffered read
is used and the file's pages are dropped afterwards (``POSIX_FADV_DONTNEED``).

:func:`wants_direct` is the ``SW_DIRECT_IO=auto`` rule: direct reads for a chunk set larger
than half the machine's memory, buffered ones (which the page cache serves at memory speed
after the first pass) for a set that fits.
"""

from __future__ import annotations

import errno
import mmap
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

#: Alignment of direct reads: offsets, lengths and buffer addresses (a page: safe for every
#: logical block size up to 4 KiB).
ALIGN = 4096
#: Bytes of one read request; big enough for the disk's full bandwidth from one stream.
PIECE_BYTES = 64 << 20
#: What ``SW_DIRECT_IO`` accepts.
MODES = ("auto", "on", "off")


def memory_bytes() -> int:
    """Physical memory of the machine."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def wants_direct(mode: str, set_bytes: int, memory: int | None = None) -> bool:
    """Whether chunk reads of a set of ``set_bytes`` go past the page cache."""
    if mode == "on":
        return True
    if mode == "off":
        return False
    return set_bytes > (memory if memory is not None else memory_bytes()) // 2


def address(buffer: bytearray | memoryview) -> int:
    """Where ``buffer``'s first byte is in memory."""
    return int(np.frombuffer(buffer, dtype=np.uint8).ctypes.data)


def is_aligned(view: memoryview) -> bool:
    """Whether ``view`` starts on an :data:`ALIGN` boundary."""
    if view.nbytes == 0:
        return False
    return address(view) % ALIGN == 0


class DirectUnsupported(OSError):
    """The file system refuses ``O_DIRECT``."""


def read_direct(
    path: Path, out: memoryview, size: int, feed: Callable[[memoryview], object] | None = None
) -> None:
    """Read the ``size`` bytes of ``path`` into ``out[:size]`` (``out`` aligned) with
    ``O_DIRECT``; ``feed`` gets each piece as soon as it landed (a hash on another thread
    while the next piece is read).

    Raises:
        DirectUnsupported: the file system refuses direct I/O (read it buffered instead);
            nothing was read or fed then.
        OSError: the file cannot be read; a short read (the file changed size) is ``EIO``.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            raise DirectUnsupported(exc.errno, f"O_DIRECT refused for {path}") from exc
        raise
    done = 0
    try:
        bulk = size - size % ALIGN
        while done < bulk:
            n = os.preadv(fd, [out[done : min(bulk, done + PIECE_BYTES)]], done)
            if n <= 0:
                raise OSError(errno.EIO, f"{path} ended after {done} of {size} bytes")
            if feed is not None:
                feed(out[done : done + n])
            done += n
        if bulk < size:
            _read_tail(fd, path, out, bulk, size)
            if feed is not None:
                feed(out[bulk:size])
    except OSError as exc:
        if exc.errno == errno.EINVAL and done == 0:
            raise DirectUnsupported(exc.errno, f"O_DIRECT refused for {path}") from exc
        raise
    finally:
        os.close(fd)


def _read_tail(fd: int, path: Path, out: memoryview, start: int, size: int) -> None:
    """The last partial block, through an aligned bounce buffer."""
    with mmap.mmap(-1, ALIGN) as bounce:
        view = memoryview(bounce)
        try:
            n = os.preadv(fd, [view], start)
            if n < size - start:
                raise OSError(errno.EIO, f"{path} ended after {start + n} of {size} bytes")
            out[start:size] = view[: size - start]
        finally:
            view.release()


def drop_cached(fd: int) -> None:
    """Ask the kernel to forget the file's cached pages (after a buffered read)."""
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except OSError:
        pass
