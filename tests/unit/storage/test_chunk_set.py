"""verify_chunk_set / publish_chunk_set / load_manifest on real folders and in memory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sw_core.chunks.manifest import MANIFEST_FILE
from sw_core.chunks.verify import load_manifest, publish_chunk_set, verify_chunk_set
from sw_core.counters import INTEGRITY_FAILURES
from sw_core.exceptions import ModelError, SecurityError
from sw_core.storage import FilesystemBackend, MemoryBackend
from sw_core.utils import calculate_chunk_hash
from tests.support.storage import flip_data_byte, make_chunk_set


async def test_a_good_chunk_set_verifies(tmp_path: Path) -> None:
    manifest = make_chunk_set(tmp_path)
    seen: list[tuple[str, int, int]] = []

    report = await verify_chunk_set(FilesystemBackend(tmp_path), progress=lambda *a: seen.append(a))

    assert report.ok, report.bad
    assert report.model == "tiny"
    assert report.entries_checked == len(manifest.chunks) + len(manifest.files) == 6
    total = manifest.total_bytes + manifest.files[0].size_bytes
    assert report.bytes_checked == total
    assert len(seen) == 6 and seen[-1] == ("verify", total, total)


async def test_every_kind_of_damage_is_named(tmp_path: Path) -> None:
    make_chunk_set(tmp_path)
    flip_data_byte(tmp_path / "block_001.safetensors")
    (tmp_path / "block_002.safetensors").unlink()
    with (tmp_path / "head.safetensors").open("ab") as handle:
        handle.write(b"extra")
    (tmp_path / "config.json").write_text("{}")
    backend = FilesystemBackend(tmp_path)

    report = await verify_chunk_set(backend)

    problems = {bad.name: bad.problem for bad in report.bad}
    assert problems == {
        "block_001": "sha256",
        "block_002": "missing",
        "head": "size",
        "config.json": "size",
    }
    assert "block_001 (block_001.safetensors): sha256 mismatch" in str(report.bad[0])
    assert backend.counters.get(INTEGRITY_FAILURES) == 1


async def test_a_chunk_that_hashes_right_but_is_not_safetensors(tmp_path: Path) -> None:
    manifest = make_chunk_set(tmp_path)
    garbage = b"\xff" * 64
    (tmp_path / "embeddings.safetensors").write_bytes(garbage)
    raw = json.loads((tmp_path / MANIFEST_FILE).read_text())
    raw["chunks"][0].update(size_bytes=len(garbage), sha256=calculate_chunk_hash(garbage))
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(raw))
    assert manifest.chunks[0].name == "embeddings"

    report = await verify_chunk_set(FilesystemBackend(tmp_path))

    assert [(b.name, b.problem) for b in report.bad] == [("embeddings", "format")]


async def test_unsafe_file_names_in_a_manifest_are_reported(tmp_path: Path) -> None:
    make_chunk_set(tmp_path)
    raw = json.loads((tmp_path / MANIFEST_FILE).read_text())
    raw["chunks"][1]["file"] = "../../etc/passwd"
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(raw))

    report = await verify_chunk_set(FilesystemBackend(tmp_path))

    assert [(b.name, b.problem) for b in report.bad] == [("block_000", "unsafe")]


async def test_load_manifest_errors_are_model_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not a chunk set"):
        await load_manifest(MemoryBackend())
    with pytest.raises(ModelError, match="malformed"):
        await load_manifest(MemoryBackend({MANIFEST_FILE: b'{"format_version": 1}'}))
    with pytest.raises(ModelError, match="over the limit"):
        await load_manifest(MemoryBackend({MANIFEST_FILE: b" " * ((16 << 20) + 1)}))


async def test_publish_uploads_manifest_last_and_verifies(tmp_path: Path) -> None:
    manifest = make_chunk_set(tmp_path / "local")
    order: list[str] = []

    class Recording(MemoryBackend):
        async def _save_once(self, key: str, data: object) -> None:
            order.append(key)
            await super()._save_once(key, data)  # type: ignore[arg-type]

    remote = Recording()
    report = await publish_chunk_set(tmp_path / "local", remote)

    assert report.ok and report.entries_checked == 6
    assert order[-1] == MANIFEST_FILE
    assert sorted(order[:-1]) == sorted([c.file for c in manifest.chunks] + ["config.json"])
    assert remote.objects[MANIFEST_FILE] == (tmp_path / "local" / MANIFEST_FILE).read_bytes()


async def test_publish_refuses_a_damaged_local_set_without_a_manifest(tmp_path: Path) -> None:
    make_chunk_set(tmp_path / "local")
    flip_data_byte(tmp_path / "local" / "block_000.safetensors")
    remote = MemoryBackend()

    with pytest.raises(SecurityError, match=r"block_000\.safetensors"):
        await publish_chunk_set(tmp_path / "local", remote)

    assert MANIFEST_FILE not in remote.objects
