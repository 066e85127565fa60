"""The storage contract's integrity checks under BLAKE3, on every backend (folder, S3 via
minio against moto, memory)."""

from __future__ import annotations

import pytest

from sw_core.counters import INTEGRITY_FAILURES
from sw_core.exceptions import SecurityError
from sw_core.hashing import hex_digest
from sw_core.storage import StorageBackend
from sw_core.utils import calculate_chunk_hash
from tests.integration.storage.test_contract import backend  # noqa: F401 - the fixture

ORIGINAL = b"original!!" * 100_000


async def test_load_verified_refuses_a_corrupt_copy_under_blake3(backend: StorageBackend) -> None:  # noqa: F811
    corrupted = bytearray(ORIGINAL)
    corrupted[-3] ^= 1
    await backend.save("c", bytes(corrupted))
    sha, b3 = calculate_chunk_hash(ORIGINAL), hex_digest("blake3", ORIGINAL)
    with pytest.raises(SecurityError, match="corrupt: blake3"):
        await backend.load_verified("c", sha, blake3=b3)
    assert backend.counters.get(INTEGRITY_FAILURES) == 1
    await backend.save("c", ORIGINAL)
    assert bytes(await backend.load_verified("c", sha, blake3=b3)) == ORIGINAL
    # the right sha256 is no pass when the blake3 is wrong: blake3 is what is checked
    with pytest.raises(SecurityError, match="blake3"):
        await backend.load_verified("c", sha, blake3=hex_digest("blake3", b"other"))
