"""Chunk storage: one async API over a folder, S3/MinIO, and a failover chain of both.

Names are imported on first use, so reading a location does not import the S3 SDK.

Example:
    >>> store = model_store("s3://sw-chunks/minilm", Settings.from_env())  # doctest: +SKIP
    >>> data = await store.load_verified("block_000.safetensors", sha256)  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "PermanentStorageError": "sw_core.exceptions",
    "RetryingBackend": "sw_core.storage.base",
    "StorageBackend": "sw_core.storage.base",
    "check_key": "sw_core.storage.base",
    "check_prefix": "sw_core.storage.base",
    "sha256_hex": "sw_core.storage.base",
    "Location": "sw_core.storage.location",
    "check_location": "sw_core.storage.location",
    "parse_location": "sw_core.storage.location",
    "backend_from_location": "sw_core.storage.factory",
    "model_store": "sw_core.storage.factory",
    "FailoverBackend": "sw_core.storage.failover",
    "FilesystemBackend": "sw_core.storage.filesystem",
    "MemoryBackend": "sw_core.storage.memory",
    "S3Backend": "sw_core.storage.s3",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sw_core.storage' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return __all__
