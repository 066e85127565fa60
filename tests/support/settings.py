"""The one builder of test settings: short claims, polls and retry delays.

:func:`fast_settings` starts from :data:`BASE` and applies a profile, then the caller's
overrides. The profiles keep the values each group of tests was tuned with:

- :data:`PIPELINE` (the default): in-process consumers and worker processes of the
  pipeline tests, with two models ``m1`` and ``m2`` registered by location;
- :data:`OPS`: worker processes of the operations tests, reading chunks through
  :class:`~tests.support.handlers.ChunkReadingHandler`;
- :data:`CHAOS`: the reliability suite (small batches, a small cache).

Nothing comes from ``SW_*`` variables of the environment.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sw_core.settings import Settings

#: What every profile shares.
BASE: dict[str, Any] = {
    "poll_block_ms": 100,
    "batch_wait_ms": 5,
}

PIPELINE: dict[str, Any] = {
    "models": "m1=/srv/m1,m2=/srv/m2",
    "claim_idle_ms": 1000,
    "retry_initial_delay_s": 0.2,
    "retry_jitter": 0.1,
    "heartbeat_interval_s": 0.2,
    "heartbeat_ttl_s": 2,
    "shutdown_grace_s": 5,
}

OPS: dict[str, Any] = {
    "claim_idle_ms": 2000,
    "retry_initial_delay_s": 0.05,
    "retry_jitter": 0.0,
    "heartbeat_interval_s": 0.25,
    "heartbeat_ttl_s": 2,
    "shutdown_grace_s": 5,
    "timeout_seconds": 10,
    "handler": "tests.support.handlers:ChunkReadingHandler",
}

CHAOS: dict[str, Any] = {
    "claim_idle_ms": 1500,
    "max_batch_size": 4,
    "retry_initial_delay_s": 0.2,
    "retry_max_delay_s": 2.0,
    "retry_jitter": 0.1,
    "heartbeat_interval_s": 0.5,
    "heartbeat_ttl_s": 3,
    "shutdown_grace_s": 10,
    "timeout_seconds": 5,
    "cache_size_mb": 64,
}


def fast_settings(
    redis_url: str, profile: Mapping[str, Any] = PIPELINE, **overrides: Any
) -> Settings:
    """Settings for tests: :data:`BASE`, then ``profile``, then ``overrides``."""
    return Settings.from_env({}, **{"redis_url": redis_url, **BASE, **profile, **overrides})
