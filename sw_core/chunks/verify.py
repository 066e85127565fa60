"""Operations on a whole chunk set in any backend: read its manifest, verify it, publish it.

A chunk set is ``manifest.json`` plus one safetensors file per chunk plus the config and
tokenizer files the manifest lists, each with its size and sha256 (see
:mod:`sw_core.chunks.manifest`). :func:`verify_chunk_set` re-hashes every one of them where they
are stored; :func:`publish_chunk_set` copies a local chunk set to a backend (manifest
last, so readers never see a manifest whose chunks are not all there) and verifies the copy.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from sw_core.chunks.chunk_set import read_manifest
from sw_core.chunks.manifest import MANIFEST_FILE, ChunkInfo, Manifest
from sw_core.chunks.safetensors_io import parse_header
from sw_core.counters import INTEGRITY_FAILURES
from sw_core.exceptions import ChunkNotFoundError, ModelError, SecurityError, StorageError
from sw_core.hashing import Expected, hex_digest_async
from sw_core.retry import RetryPolicy
from sw_core.storage.base import StorageBackend, check_key, sha256_hex
from sw_core.storage.filesystem import FilesystemBackend

#: ``progress(phase, done_bytes, total_bytes)``; phase is "upload" or "verify".
ProgressFn = Callable[[str, int, int], None]

#: What is wrong with one entry of a chunk set.
Problem = Literal[
    "missing", "size", "sha256", "blake3", "format", "unsafe", "unreadable", "manifest", "kernel"
]


@dataclass(frozen=True)
class BadEntry:
    """One chunk or file of a chunk set that failed verification."""

    name: str
    file: str
    problem: Problem
    detail: str

    def __str__(self) -> str:
        label = self.name if self.name == self.file else f"{self.name} ({self.file})"
        return f"{label}: {self.detail}"


@dataclass
class VerifyReport:
    """The outcome of :func:`verify_chunk_set`."""

    location: str
    model: str
    entries_checked: int = 0
    bytes_checked: int = 0
    bad: list[BadEntry] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.bad


@dataclass(frozen=True)
class _Entry:
    name: str
    file: str
    size_bytes: int
    sha256: str
    is_chunk: bool
    blake3: str | None = None
    #: A chunk's kernel view (:meth:`~sw_core.chunks.manifest.ChunkInfo.kernel_view`).
    kernel: ChunkInfo | None = None


def _entries(manifest: Manifest) -> list[_Entry]:
    chunks = [
        _Entry(c.name, c.file, c.size_bytes, c.sha256, True, c.blake3, c.kernel_view())
        for c in manifest.chunks
    ]
    files = [
        _Entry(f.file, f.file, f.size_bytes, f.sha256, False, f.blake3) for f in manifest.files
    ]
    return chunks + files


async def load_manifest(backend: StorageBackend) -> Manifest:
    """The manifest of the chunk set in ``backend`` (:func:`~sw_core.chunks.chunk_set.read_manifest`).

    Raises:
        ModelError: no manifest, one over the size limit, or a malformed one.
        StorageError: the backend failed (transient).
    """
    return (await read_manifest(backend))[0]


async def _check(backend: StorageBackend, entry: _Entry) -> tuple[BadEntry | None, int]:
    """Check one entry; return (the problem or None, bytes read)."""

    def bad(problem: Problem, detail: str) -> BadEntry:
        return BadEntry(entry.name, entry.file, problem, detail)

    try:
        check_key(entry.file)
    except SecurityError as exc:
        return bad("unsafe", f"unsafe file name: {exc}"), 0
    try:
        data = await backend.load(entry.file, max_size_bytes=entry.size_bytes)
    except ChunkNotFoundError:
        return bad("missing", "missing"), 0
    except SecurityError:
        return bad("size", f"size mismatch: larger than the manifest's {entry.size_bytes} bytes"), 0
    except StorageError as exc:
        return bad("unreadable", f"unreadable: {exc}"), 0
    if len(data) != entry.size_bytes:
        detail = f"size mismatch: {len(data)} bytes, the manifest says {entry.size_bytes}"
        return bad("size", detail), len(data)
    actual = await sha256_hex(data)
    if actual != entry.sha256.lower():
        backend.counters.incr(INTEGRITY_FAILURES)
        detail = f"sha256 mismatch: {actual[:16]}..., the manifest says {entry.sha256[:16]}..."
        return bad("sha256", detail), len(data)
    if entry.blake3 and await hex_digest_async("blake3", data) != entry.blake3.lower():
        backend.counters.incr(INTEGRITY_FAILURES)
        return bad("blake3", "blake3 mismatch (the sha256 matches)"), len(data)
    if entry.is_chunk:
        try:
            parse_header(data)
        except SecurityError as exc:
            return bad("format", f"invalid safetensors: {exc}"), len(data)
    if entry.kernel is not None and not await _kernel_prefix_matches(entry.kernel, data):
        backend.counters.incr(INTEGRITY_FAILURES)
        detail = f"its first {entry.kernel.size_bytes} bytes do not match the kernel digests"
        return bad("kernel", detail), len(data)
    return None, len(data)


async def _kernel_prefix_matches(view: ChunkInfo, data: bytearray) -> bool:
    """Whether the chunk's first bytes are the kernel view the manifest describes (what the
    engine reads when it computes with the stored tables)."""
    head = memoryview(data)[: view.size_bytes]
    if len(head) != view.size_bytes or await sha256_hex(head) != view.sha256.lower():
        return False
    if view.blake3 and await hex_digest_async("blake3", head) != view.blake3.lower():
        return False
    try:
        parse_header(head, prefix=True)
    except SecurityError:
        return False
    return True


async def verify_chunk_set(
    backend: StorageBackend,
    manifest: Manifest | None = None,
    *,
    progress: ProgressFn | None = None,
    concurrency: int = 2,
) -> VerifyReport:
    """Re-hash every chunk and listed file of the chunk set in ``backend``.

    Each entry is checked for presence, size, sha256 and (chunks) a valid safetensors
    header. Storage failures of one entry are reported as ``unreadable``, not raised.

    Args:
        backend: where the chunk set is.
        manifest: the manifest to check against (read from ``backend`` when omitted).
        progress: called after each entry with ("verify", done_bytes, total_bytes).
        concurrency: entries read at the same time (each is held in memory while hashed).

    Raises:
        ModelError: the manifest is missing or malformed.
    """
    if manifest is None:
        manifest = await load_manifest(backend)
    entries = _entries(manifest)
    total_bytes = sum(e.size_bytes for e in entries)
    report = VerifyReport(location=backend.describe(), model=manifest.name)
    gate = asyncio.Semaphore(max(1, concurrency))
    done_bytes = 0

    async def run(entry: _Entry) -> BadEntry | None:
        nonlocal done_bytes
        async with gate:
            problem, read_bytes = await _check(backend, entry)
        report.entries_checked += 1
        report.bytes_checked += read_bytes
        done_bytes += entry.size_bytes
        if progress is not None:
            progress("verify", done_bytes, total_bytes)
        return problem

    results = await asyncio.gather(*(run(e) for e in entries))
    report.bad = [r for r in results if r is not None]
    return report


async def publish_chunk_set(
    folder: str | Path,
    backend: StorageBackend,
    *,
    progress: ProgressFn | None = None,
    concurrency: int = 4,
) -> VerifyReport:
    """Upload the local chunk set in ``folder`` to ``backend``, then verify the remote copy.

    Every file is checked against the local manifest before it is uploaded; the manifest
    goes last, so a publish that fails half-way leaves no new manifest behind. Publishing
    over an existing chunk set replaces its objects one by one (readers of the old manifest
    meanwhile see hash mismatches and fail over to the backup).

    Returns:
        The :class:`VerifyReport` of the remote copy (``ok`` when the publish succeeded).

    Raises:
        ModelError: ``folder`` is not a chunk set or lacks a listed file.
        SecurityError: a local file does not match the manifest (nothing more is uploaded).
        StorageError: an upload failed after its retries.
    """
    folder = Path(folder)
    manifest = Manifest.load(folder)
    raw_manifest = (folder / MANIFEST_FILE).read_bytes()
    local = FilesystemBackend(folder, retry=RetryPolicy(attempts=1), timeout_s=backend.timeout_s)
    entries = _entries(manifest)
    total_bytes = sum(e.size_bytes for e in entries) + len(raw_manifest)
    gate = asyncio.Semaphore(max(1, concurrency))
    done_bytes = 0

    def advance(n_bytes: int) -> None:
        nonlocal done_bytes
        done_bytes += n_bytes
        if progress is not None:
            progress("upload", done_bytes, total_bytes)

    async def upload(entry: _Entry) -> None:
        async with gate:
            try:
                data = await local.load(entry.file, max_size_bytes=entry.size_bytes)
            except ChunkNotFoundError:
                raise ModelError(f"local chunk set {folder} lacks {entry.file}") from None
            except SecurityError as exc:
                raise SecurityError(f"local chunk set {folder} is damaged: {exc}") from None
            expected = Expected.of(entry.sha256, entry.blake3)
            actual = await hex_digest_async(expected.algorithm, data)
            if len(data) != entry.size_bytes or not expected.matches(actual):
                raise SecurityError(
                    f"local chunk set {folder} is damaged: {entry.file} does not match its "
                    f"manifest entry (size or digest); re-create it with `sw chunk`"
                )
            await backend.save(entry.file, data)
        advance(entry.size_bytes)

    try:
        async with asyncio.TaskGroup() as group:
            for entry in entries:
                group.create_task(upload(entry))
    except BaseExceptionGroup as failures:
        raise failures.exceptions[0] from None
    await backend.save(MANIFEST_FILE, raw_manifest)
    advance(len(raw_manifest))

    remote = await load_manifest(backend)
    report = await verify_chunk_set(backend, remote, progress=progress)
    if remote != manifest:
        report.bad.insert(
            0,
            BadEntry(
                MANIFEST_FILE,
                MANIFEST_FILE,
                "manifest",
                "the published manifest differs from the local one",
            ),
        )
    return report
