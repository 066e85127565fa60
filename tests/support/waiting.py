"""The one poller of the tests: wait until a condition holds, or fail naming it.

:func:`wait_until` is for async tests (the condition may be sync or async) and returns how
long it took; :func:`wait_until_sync` is for sync tests and returns the condition's value.
Both raise :class:`AssertionError` with ``what`` in the message after ``timeout_s``.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any


def _timed_out(timeout_s: float, what: str) -> AssertionError:
    return AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")


async def wait_until(
    check: Callable[[], Any | Awaitable[Any]],
    timeout_s: float,
    what: str,
    every_s: float = 0.05,
) -> float:
    """Poll ``check`` (sync or async) until it is true; returns the seconds it took."""
    start = time.monotonic()
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return time.monotonic() - start
        if time.monotonic() - start > timeout_s:
            raise _timed_out(timeout_s, what)
        await asyncio.sleep(every_s)


def wait_until_sync(
    check: Callable[[], Any], timeout_s: float, what: str, every_s: float = 0.1
) -> Any:
    """Poll ``check`` until it returns a true value, which is returned (blocks the thread)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise _timed_out(timeout_s, what)
        time.sleep(every_s)
