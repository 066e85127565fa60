"""Exponential backoff with jitter, shared by storage calls and job retries."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from sw_core.exceptions import is_transient
from sw_core.settings import Settings

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry a transient failure.

    Defaults: 3 attempts, 1.0 s first delay, doubling -- a Redis restart or an S3 blip of a
    few seconds is ridden out, and a failure that will not pass is reported within ~3 s.
    ``jitter`` is the fraction of each delay drawn at random (0.1 -> +-10 %).
    """

    attempts: int = 3
    initial_delay_s: float = 1.0
    multiplier: float = 2.0
    max_delay_s: float = 60.0
    jitter: float = 0.1

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(
            attempts=settings.retry_attempts,
            initial_delay_s=settings.retry_initial_delay_s,
            multiplier=settings.retry_multiplier,
            max_delay_s=settings.retry_max_delay_s,
            jitter=settings.retry_jitter,
        )

    def base_delay_s(self, failed_attempt: int) -> float:
        """Delay before the next try after attempt ``failed_attempt`` (1-based), no jitter."""
        delay = self.initial_delay_s * self.multiplier ** (failed_attempt - 1)
        return min(delay, self.max_delay_s)

    def delay_s(self, failed_attempt: int, rng: random.Random | None = None) -> float:
        """:meth:`base_delay_s` with +-``jitter`` applied."""
        base = self.base_delay_s(failed_attempt)
        if not self.jitter:
            return base
        spread = (rng or random).uniform(-self.jitter, self.jitter)
        return max(0.0, base * (1 + spread))


async def retry_async(
    call: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    what: str,
    on_retry: Callable[[int, BaseException, float], None] | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> T:
    """Run ``call`` until it succeeds, retrying transient errors per ``policy``.

    Permanent errors (see :func:`~sw_core.exceptions.is_transient`) propagate at once;
    after the last attempt the last transient error propagates.
    """
    for attempt in range(1, policy.attempts + 1):
        try:
            return await call()
        except Exception as exc:
            if not is_transient(exc) or attempt >= policy.attempts:
                raise
            delay = policy.delay_s(attempt)
            log.warning(
                "%s failed (attempt %d/%d): %s; retrying in %.2fs",
                what,
                attempt,
                policy.attempts,
                exc,
                delay,
            )
            if on_retry is not None:
                on_retry(attempt, exc, delay)
            await sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover
