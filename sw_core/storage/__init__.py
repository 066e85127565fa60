"""Chunk storage: one async API over a folder, S3/MinIO, and a failover chain of both.

Example:
    >>> store = model_store("s3://sw-chunks/minilm", Settings.from_env())  # doctest: +SKIP
    >>> data = await store.load_verified("block_000.safetensors", sha256)  # doctest: +SKIP
"""

from __future__ import annotations

from sw_core.exceptions import PermanentStorageError
from sw_core.storage.base import (
    RetryingBackend,
    StorageBackend,
    check_key,
    check_prefix,
    sha256_hex,
)
from sw_core.storage.factory import Location, backend_from_location, model_store, parse_location
from sw_core.storage.failover import FailoverBackend
from sw_core.storage.filesystem import FilesystemBackend
from sw_core.storage.memory import MemoryBackend
from sw_core.storage.s3 import S3Backend

__all__ = [
    "FailoverBackend",
    "FilesystemBackend",
    "Location",
    "MemoryBackend",
    "PermanentStorageError",
    "RetryingBackend",
    "S3Backend",
    "StorageBackend",
    "backend_from_location",
    "check_key",
    "check_prefix",
    "model_store",
    "parse_location",
    "sha256_hex",
]
