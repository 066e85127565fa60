"""The digests a chunk is checked against: sha256 (its id) and, when the manifest has it, BLAKE3.

Every chunk and small file of a chunk set has a sha256 in its manifest: the chunk's cache id
and what older chunk sets are checked against. Chunk sets written (or upgraded with ``sw
rehash``) by this version also record a BLAKE3-256 digest; a reader then checks the bytes
against the BLAKE3 digest alone. Both are 256-bit cryptographic hashes: a chunk whose bytes
were changed cannot match either, and BLAKE3 hashes 3-5x faster than sha256 on these CPUs.

Example:
    >>> Expected.of("ba78" * 16, None).algorithm
    'sha256'
    >>> hex_digest("blake3", b"abc")[:12]
    '6437b3ac3846'
"""

from __future__ import annotations

import asyncio
import hashlib
import queue
from concurrent.futures import Executor
from dataclasses import dataclass
from os import PathLike
from typing import Literal, Protocol

import blake3

Algorithm = Literal["sha256", "blake3"]
ALGORITHMS: tuple[Algorithm, ...] = ("sha256", "blake3")

#: Payloads larger than this are hashed in a worker thread (both hashes release the GIL).
THREAD_HASH_BYTES = 1 << 20


class Hasher(Protocol):
    """What :func:`new_hasher` returns (``hashlib`` and ``blake3`` objects both fit)."""

    def update(self, data: bytes | bytearray | memoryview, /) -> object: ...

    def hexdigest(self) -> str: ...

    def copy(self) -> Hasher: ...


class DigestedEntry(Protocol):
    """A manifest entry with its digests (``ChunkInfo``, ``FileInfo``)."""

    @property
    def sha256(self) -> str: ...
    @property
    def blake3(self) -> str | None: ...


@dataclass(frozen=True)
class Expected:
    """The digest a chunk's bytes must have: ``algorithm`` and its lower-case hex value."""

    algorithm: Algorithm
    hexdigest: str

    @classmethod
    def of(cls, sha256: str, blake3_hex: str | None) -> Expected:
        """BLAKE3 when the manifest records it, else sha256."""
        if blake3_hex:
            return cls("blake3", blake3_hex.lower())
        return cls("sha256", sha256.lower())

    @classmethod
    def for_entry(cls, entry: DigestedEntry) -> Expected:
        """From a manifest entry (``ChunkInfo``/``FileInfo``: ``sha256``, optional ``blake3``)."""
        return cls.of(entry.sha256, getattr(entry, "blake3", None))

    def matches(self, actual_hex: str) -> bool:
        return actual_hex == self.hexdigest

    def __str__(self) -> str:
        return f"{self.algorithm} {self.hexdigest[:16]}..."


def new_hasher(algorithm: Algorithm) -> Hasher:
    """An incremental hasher (``update`` pieces, then ``hexdigest``)."""
    if algorithm == "blake3":
        return blake3.blake3()
    if algorithm == "sha256":
        return hashlib.sha256()
    raise ValueError(f"unknown digest algorithm {algorithm!r} (expected one of {ALGORITHMS})")


def hex_digest(algorithm: Algorithm, data: bytes | bytearray | memoryview) -> str:
    """The hex digest of ``data`` under ``algorithm``."""
    hasher = new_hasher(algorithm)
    hasher.update(data)
    return hasher.hexdigest()


async def hex_digest_async(algorithm: Algorithm, data: bytes | bytearray | memoryview) -> str:
    """:func:`hex_digest`; large payloads are hashed off the event loop."""
    if len(data) < THREAD_HASH_BYTES:
        return hex_digest(algorithm, data)
    return await asyncio.to_thread(hex_digest, algorithm, data)


def file_digests(
    path: str | PathLike[str], block_bytes: int = 8 << 20, *, length: int | None = None
) -> tuple[str, str]:
    """``(sha256, blake3)`` hex digests of a file (of its first ``length`` bytes when
    given), read once."""
    sha, b3 = hashlib.sha256(), blake3.blake3()
    left = -1 if length is None else length
    with open(path, "rb") as handle:
        while left and (block := handle.read(block_bytes if left < 0 else min(left, block_bytes))):
            sha.update(block)
            b3.update(block)
            left -= len(block) if left > 0 else 0
    if left > 0:
        raise ValueError(f"{path} is shorter than {length} bytes")
    return sha.hexdigest(), b3.hexdigest()


class OrderedHash:
    """Digest of the buffers given to :meth:`feed`, in order, hashed by one pool task.

    The buffers must stay unchanged until :meth:`hexdigest` returns.

    Example:
        >>> from concurrent.futures import ThreadPoolExecutor
        >>> with ThreadPoolExecutor(1) as pool:
        ...     digest = OrderedHash(pool)
        ...     digest.feed(memoryview(b"ab"))
        ...     digest.feed(memoryview(b"c"))
        ...     digest.hexdigest()[:12]
        'ba7816bf8f01'
    """

    def __init__(self, pool: Executor, algorithm: Algorithm = "sha256") -> None:
        self.algorithm = algorithm
        self._pieces: queue.SimpleQueue[memoryview | None] = queue.SimpleQueue()
        self._abandoned = False
        self._future = pool.submit(self._run)

    def _run(self) -> str:
        digest = new_hasher(self.algorithm)
        while (piece := self._pieces.get()) is not None:
            if not self._abandoned:
                digest.update(piece)
        return digest.hexdigest()

    def feed(self, piece: memoryview) -> None:
        """Queue the next piece of the stream."""
        self._pieces.put(piece)

    def hexdigest(self) -> str:
        """The digest of everything fed; call once, at the end (waits for the hashing)."""
        self._pieces.put(None)
        return self._future.result()

    def abandon(self) -> None:
        """Give up (the read failed): the task skips what is queued and ends."""
        self._abandoned = True
        self._pieces.put(None)
