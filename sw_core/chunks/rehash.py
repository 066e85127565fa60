"""Add BLAKE3 digests to an existing chunk set (``sw rehash``).

Every chunk and listed file is read once, checked against the sha256 the manifest already
holds (so nothing unverified gets a new digest), and hashed with BLAKE3; then
``manifest.json`` is rewritten with both digests. The chunk files do not change, so their
ids (the sha256) and the cache entries stay valid. The manifest's bytes do change: a
location pinned to the old manifest (``LOCATION#sha256=``) must be pinned again
(:func:`~sw_core.chunks.pin.pin_location` over the returned bytes).
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import TYPE_CHECKING

from sw_core.chunks.manifest import MANIFEST_FILE, ChunkInfo, FileInfo, Manifest
from sw_core.exceptions import SecurityError
from sw_core.hashing import hex_digest

if TYPE_CHECKING:
    from sw_core.storage.base import StorageBackend


def _digests(data: bytearray) -> tuple[str, str]:
    return hex_digest("sha256", data), hex_digest("blake3", data)


async def _blake3_of(backend: StorageBackend, entry: ChunkInfo | FileInfo) -> str:
    """The BLAKE3 digest of one entry's bytes, after checking their size and sha256."""
    data = await backend.load(entry.file, max_size_bytes=entry.size_bytes)
    sha256, blake3_hex = await asyncio.to_thread(_digests, data)
    if len(data) != entry.size_bytes or sha256 != entry.sha256.lower():
        raise SecurityError(
            f"{entry.file!r} in {backend.describe()} does not match its manifest entry (size or "
            "sha256): run `sw verify` and repair the chunk set before adding digests to it"
        )
    if entry.blake3 and entry.blake3.lower() != blake3_hex:
        raise SecurityError(
            f"{entry.file!r} in {backend.describe()} does not match the blake3 its manifest "
            "already records"
        )
    return blake3_hex


async def add_blake3(backend: StorageBackend, manifest: Manifest) -> tuple[Manifest, bytes]:
    """Write ``manifest`` back to ``backend`` with a BLAKE3 digest for every chunk and file.

    Returns the new manifest and its bytes (pin them again if the location was pinned).

    Raises:
        SecurityError: an entry does not match its manifest (nothing is written).
        ChunkNotFoundError, StorageError: the backend failed (nothing is written).
    """
    chunks = [dataclasses.replace(c, blake3=await _blake3_of(backend, c)) for c in manifest.chunks]
    files = [dataclasses.replace(f, blake3=await _blake3_of(backend, f)) for f in manifest.files]
    updated = dataclasses.replace(manifest, chunks=chunks, files=files)
    raw = updated.to_json().encode()
    await backend.save(MANIFEST_FILE, raw)
    return updated, raw
