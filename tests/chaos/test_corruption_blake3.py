"""Scenario 4 (corruption and tampering) again, on chunk sets whose manifests record BLAKE3
digests: every reader then checks BLAKE3 instead of sha256, and must refuse or repair the
same damaged and forged chunks."""

from __future__ import annotations

import traceback
from pathlib import Path

import pytest

from sw_core import hashing
from tests.chaos import test_corruption as scenario
from tests.support import storage
from tests.support.servers import S3Server

pytestmark = [pytest.mark.chaos]


async def test_corruption_and_tampering_are_refused_under_blake3(
    s3: S3Server,
    redis_url: str,
    redis_client,
    tmp_path: Path,
    figures,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(storage, "RECORD_BLAKE3", True)
    checked: list[str] = []
    real_hasher = hashing.new_hasher

    def counting_hasher(algorithm: hashing.Algorithm) -> hashing.Hasher:
        audit = any(f.filename.endswith("chunks/verify.py") for f in traceback.extract_stack())
        checked.append("audit" if audit else algorithm)
        return real_hasher(algorithm)

    monkeypatch.setattr(hashing, "new_hasher", counting_hasher)
    await scenario.test_corruption_and_tampering_are_refused_or_repaired(
        s3, redis_url, redis_client, tmp_path, figures
    )
    # every read (storage, cache) checked BLAKE3; sha256 was computed only by the audits
    # (`sw publish`'s check of the copy, `sw verify`), which check both digests
    assert checked.count("blake3") >= 10 and "sha256" not in checked
