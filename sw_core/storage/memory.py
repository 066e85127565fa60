"""An in-process backend for tests: a dict of bytes, with the full retry/timeout machinery."""

from __future__ import annotations

import asyncio

from sw_core.counters import Counters
from sw_core.exceptions import ChunkNotFoundError, SecurityError
from sw_core.retry import RetryPolicy
from sw_core.storage.base import Payload, RetryingBackend, SleepFn


class MemoryBackend(RetryingBackend):
    """Objects in a dict (``objects``); same contract as the real backends.

    Tests may edit ``objects`` directly (e.g. to corrupt a copy) or subclass a ``_*_once``
    method to inject failures.
    """

    name = "memory"

    def __init__(
        self,
        objects: dict[str, bytes] | None = None,
        *,
        label: str = "memory",
        counters: Counters | None = None,
        retry: RetryPolicy | None = None,
        timeout_s: float = 30.0,
        sleep: SleepFn = asyncio.sleep,
    ) -> None:
        super().__init__(counters=counters, retry=retry, timeout_s=timeout_s, sleep=sleep)
        self.objects: dict[str, bytes] = dict(objects or {})
        self.label = label

    def describe(self) -> str:
        return f"memory:{self.label}"

    async def _load_once(self, key: str, max_size_bytes: int | None) -> bytearray:
        try:
            data = self.objects[key]
        except KeyError:
            raise ChunkNotFoundError(f"{key!r} not found in {self.describe()}") from None
        if max_size_bytes is not None and len(data) > max_size_bytes:
            raise SecurityError(
                f"{key!r} in {self.describe()} is {len(data)} bytes, over the limit of "
                f"{max_size_bytes} bytes"
            )
        return bytearray(data)

    async def _save_once(self, key: str, data: Payload) -> None:
        self.objects[key] = bytes(data)

    async def _exists_once(self, key: str) -> bool:
        return key in self.objects

    async def _list_once(self, prefix: str) -> list[str]:
        return sorted(k for k in self.objects if k.startswith(prefix))

    async def _delete_once(self, key: str) -> None:
        self.objects.pop(key, None)
