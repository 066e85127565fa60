"""Opening a chunk set: location -> storage backend -> size-limited manifest -> pin check.

Every reader of chunk sets goes through here: the engine, inference workers, loaders and the
``sw`` commands. :meth:`ChunkSet.open` reads and checks the manifest at once;
:func:`open_store` gives the backend and pin without reading anything (the engine's sources
and the loaders read the manifest later, through :func:`read_set_file`).

Example:
    >>> async with await ChunkSet.open("s3://sw-chunks/minilm", settings) as chunk_set:  # doctest: +SKIP
    ...     print(chunk_set.manifest.name, len(chunk_set.manifest.chunks))
"""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING

from sw_core.chunks.manifest import MANIFEST_FILE, MAX_FILE_BYTES, MAX_MANIFEST_BYTES, Manifest
from sw_core.chunks.pin import check_pin
from sw_core.counters import Counters
from sw_core.exceptions import ChunkNotFoundError, ModelError, SecurityError
from sw_core.settings import Settings
from sw_core.storage.location import Location, parse_location

if TYPE_CHECKING:
    from sw_core.storage.base import StorageBackend


def open_store(
    location: str,
    settings: Settings,
    *,
    model: str | None = None,
    counters: Counters | None = None,
    with_backup: bool = True,
) -> tuple[StorageBackend, Location]:
    """The storage backend of a chunk-set location and the parsed location (with its pin).

    With ``with_backup`` an ``s3://`` location gets the local backup folder behind it
    (``settings.backup_dir``, see :func:`sw_core.storage.model_store`); without it the
    location alone is read (``sw verify`` and ``sw register`` check that very location).
    Nothing is read yet.

    Raises:
        ConfigError: the location is malformed.
    """
    from sw_core.storage.factory import backend_from_location, model_store

    parsed = parse_location(location)
    if with_backup:
        return model_store(location, settings, model, counters=counters), parsed
    return backend_from_location(location, settings, counters=counters), parsed


async def read_manifest(backend: StorageBackend, pin: str | None = None) -> tuple[Manifest, bytes]:
    """The manifest of the chunk set in ``backend`` and its bytes, checked against ``pin``.

    Raises:
        ModelError: no manifest, one over the size limit, or a malformed one.
        SecurityError: the manifest does not hash to ``pin``.
        StorageError: the backend failed (transient).
    """
    where = backend.describe()
    try:
        raw = bytes(await backend.load(MANIFEST_FILE, max_size_bytes=MAX_MANIFEST_BYTES))
    except ChunkNotFoundError as exc:
        raise ModelError(f"{where} is not a chunk set: no {MANIFEST_FILE} ({exc})") from None
    except SecurityError as exc:
        raise ModelError(f"{MANIFEST_FILE} of {where} is refused: {exc}") from None
    check_pin(raw, pin, where)
    try:
        return Manifest.from_json(raw), raw
    except ModelError as exc:
        raise ModelError(f"{MANIFEST_FILE} of {where}: {exc}") from None


async def read_set_file(store: StorageBackend, name: str, pin: str | None = None) -> bytes:
    """A small file of the chunk set in ``store`` (a storage backend), size-limited;
    ``manifest.json`` checked against ``pin``.

    Raises:
        SecurityError: over the size limit, or the manifest does not hash to ``pin``.
        ChunkNotFoundError: no such file.
    """
    is_manifest = name == MANIFEST_FILE
    limit = MAX_MANIFEST_BYTES if is_manifest else MAX_FILE_BYTES
    data = bytes(await store.load(name, max_size_bytes=limit))
    if is_manifest:
        check_pin(data, pin, store.describe())
    return data


@dataclass
class ChunkSet:
    """An opened chunk set: where it is, its backend, and its checked manifest."""

    location: Location
    backend: StorageBackend
    manifest: Manifest
    manifest_bytes: bytes

    @classmethod
    async def open(
        cls,
        location: str,
        settings: Settings,
        *,
        model: str | None = None,
        counters: Counters | None = None,
        with_backup: bool = True,
    ) -> ChunkSet:
        """Open the chunk set at ``location`` (see :func:`open_store`) and read its manifest.

        Raises:
            ConfigError: a malformed location.
            ModelError: no chunk set there (no or a malformed manifest).
            SecurityError: the manifest does not hash to the location's pin.
            StorageError: the storage failed (transient).
        """
        backend, parsed = open_store(
            location, settings, model=model, counters=counters, with_backup=with_backup
        )
        try:
            manifest, raw = await read_manifest(backend, parsed.manifest_sha256)
        except BaseException:
            await backend.close()
            raise
        return cls(parsed, backend, manifest, raw)

    @property
    def pin(self) -> str | None:
        """The manifest pin of the location, if it has one."""
        return self.location.manifest_sha256

    async def read_file(self, name: str) -> bytes:
        """A small file of the chunk set (size-limited; the manifest is checked against the
        pin)."""
        return await read_set_file(self.backend, name, self.pin)

    async def close(self) -> None:
        await self.backend.close()

    async def __aenter__(self) -> ChunkSet:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
