"""The chunk-load protocol between inference workers and loaders, in one place.

An inference worker that misses the chunk cache takes the chunk's load lease
(``Keys.chunk_lock``, :data:`LOAD_LEASE_MS`) and enqueues one arq job named
:data:`LOAD_CHUNK` on the loaders' queue (:func:`arq_pool`), with the id :func:`load_job_id`
and msgpack as the serializer (never arq's default, pickle). The loader keeps the lease alive
every :data:`LEASE_REFRESH_S` while it works; waiters check every :data:`LEASE_CHECK_S` that
someone still holds it. The outcome is announced on ``Keys.chunk_ready(sha256)``.
"""

from __future__ import annotations

import functools

import msgpack
from arq.connections import ArqRedis, create_pool

from sw_core.keys import Keys
from sw_core.settings import Settings
from workers.arq_redis import arq_redis_settings

#: arq function name of chunk loads.
LOAD_CHUNK = "load_chunk"

#: arq's default serializer is pickle: both sides use msgpack instead.
job_serializer = functools.partial(msgpack.packb, use_bin_type=True)
job_deserializer = functools.partial(msgpack.unpackb, raw=False)

#: TTL of a chunk-load lease while a loader holds it (a dead loader frees the chunk by then).
LOAD_LEASE_MS = 5_000
#: How often a loading loader extends its lease.
LEASE_REFRESH_S = 1.5
#: How often a waiter checks that someone still holds the load lease (else it asks again).
LEASE_CHECK_S = 1.0


def load_job_id(sha256: str, key_prefix: str, token: str) -> str:
    """arq job id of one load attempt of one chunk in one deployment.

    Single flight comes from the lease (``Keys.chunk_lock``), not from the job id: an id
    per attempt means a loader killed mid-load (whose arq in-progress key lives on for the
    job timeout) does not block the next attempt. arq keeps job ids in global ``arq:job:*``
    keys, hence the deployment's prefix.
    """
    return f"{key_prefix}:load:{sha256}:{token}"


async def arq_pool(settings: Settings) -> ArqRedis:
    """An arq pool that enqueues onto the loaders' queue with the msgpack serializer."""
    return await create_pool(
        arq_redis_settings(settings),
        job_serializer=job_serializer,
        job_deserializer=job_deserializer,
        default_queue_name=Keys(settings.key_prefix).arq_queue,
    )
