"""arq glue: what a worker process runs beside arq's own job loop.

arq calls ``on_startup`` once its Redis pool is up and ``on_shutdown`` when it stops (after a
SIGTERM/SIGINT, which arq handles). An inference node starts the stream consumer, the
heartbeat and a chunk loader (it serves ``load_chunk`` too, so one process is a whole node);
a loader-only node starts the heartbeat and the loader. Shutdown drains the consumer (the
batch in flight finishes within ``shutdown_grace_s``, untouched entries are handed back).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from dataclasses import dataclass
from typing import Any

from arq.worker import func
from redis.asyncio import Redis

from sw_core.counters import Counters
from sw_core.keys import Keys
from sw_core.ops.prometheus import MetricsServer, maybe_start_metrics_server
from sw_core.pipeline.registry import ModelRegistry
from sw_core.queue_redis import queue_redis
from sw_core.settings import Settings, redact_url
from workers.arq_compat import tolerate_redis_outages
from workers.arq_redis import arq_redis_settings
from workers.chunks.loader import ChunkLoader, load_chunk
from workers.chunks.protocol import LOAD_CHUNK, job_deserializer, job_serializer
from workers.heartbeat import Heartbeat, default_worker_name
from workers.jobs.consumer import JobConsumer
from workers.jobs.handlers import BatchHandler, close_handler, load_handler

log = logging.getLogger(__name__)

#: arq polls its queue this often (seconds); its default 0.5 s caps a worker near 200 loads/s.
POLL_DELAY_S = 0.05


@dataclass
class Node:
    """The parts of one running worker process."""

    settings: Settings
    redis: Redis
    loader: ChunkLoader
    heartbeat: Heartbeat
    consumer: JobConsumer | None = None
    handler: BatchHandler | None = None
    metrics: MetricsServer | None = None
    name: str = ""
    kind: str = ""
    preloading: asyncio.Task[None] | None = None

    async def stop(self) -> None:
        """Drain the consumer, then stop the heartbeat and close everything."""
        if self.metrics is not None:
            self.metrics.stop()
        if self.preloading is not None and not self.preloading.done():
            self.preloading.cancel()
        try:
            if self.consumer is not None:
                await self.consumer.stop()
        finally:
            await self.heartbeat.stop()
            if self.handler is not None:
                await close_handler(self.handler)
            await self.loader.close()
            await self.redis.aclose()


async def start_node(ctx: dict[str, Any], *, settings: Settings, kind: str, consume: bool) -> Node:
    """Start a node's parts and keep them in arq's ``ctx`` (``ctx["loader"]``, ``ctx["node"]``)."""
    counters = Counters()
    redis = queue_redis(settings)
    name = settings.worker_name or default_worker_name()
    loader = ChunkLoader(redis, settings, counters=counters)
    consumer = handler = None
    if consume:
        handler = await load_handler(settings)
        consumer = JobConsumer(redis, settings, handler, name=name)
    report = consumer.report if consumer is not None else loader.report
    heartbeat = Heartbeat(
        redis, settings, worker_id=name, kind=kind, report=report, counters=counters
    )
    node = Node(settings, redis, loader, heartbeat, consumer, handler, name=name, kind=kind)
    ctx["loader"] = loader
    ctx["node"] = node
    await heartbeat.start()
    node.metrics = maybe_start_metrics_server(settings)
    if consumer is not None:
        await consumer.start()
    preload = [m.strip() for m in settings.preload_models.split(",") if m.strip()]
    if preload and handler is not None and hasattr(handler, "preload"):
        # in the background: heartbeats, loads and jobs go on meanwhile (a job for a model
        # being preloaded waits for the same engine instead of opening another)
        node.preloading = asyncio.create_task(handler.preload(preload), name="preload")
    return node


async def _banner(node: Node) -> str:
    """The start-up line: who this worker is and what it works with (no password)."""
    settings = node.settings
    try:
        models = ",".join(await ModelRegistry(node.redis, settings).all()) or "none registered"
    except Exception as exc:  # the banner must not stop a worker
        models = f"unknown ({type(exc).__name__})"
    parts = [
        f"worker {node.name} started: kind={node.kind}",
        f"pid={os.getpid()}",
        f"models={models}",
        f"budget={settings.memory_budget_mb} MiB",
        f"cache={settings.cache_size_mb} MiB",
        f"max_batch={settings.max_batch_size}",
        f"redis={redact_url(settings.redis_url)}",
        f"prefix={settings.key_prefix}",
    ]
    if node.consumer is not None:
        parts.append(f"handler={settings.handler}")
    return " ".join(parts)


async def _on_startup(ctx: dict[str, Any], *, settings: Settings, kind: str, consume: bool) -> None:
    node = await start_node(ctx, settings=settings, kind=kind, consume=consume)
    log.info(await _banner(node), extra={"event": "start", "worker": node.name})


async def _on_shutdown(ctx: dict[str, Any]) -> None:
    node: Node | None = ctx.pop("node", None)
    if node is not None:
        await node.stop()
        done = node.consumer.jobs_done if node.consumer is not None else 0
        failed = node.consumer.jobs_failed if node.consumer is not None else 0
        log.info(
            "worker %s exits: %d jobs done, %d failed attempts, %d chunk loads from storage",
            node.name,
            done,
            failed,
            node.loader.storage_loads,
            extra={"event": "exit", "worker": node.name},
        )


def worker_options(settings: Settings, *, inference: bool) -> dict[str, Any]:
    """arq ``Worker`` keyword arguments of an inference node (consumer + loader) or of a
    loader-only worker. ``arq workers.Settings`` / ``workers.LoaderSettings`` use these.

    Adapts arq in this process first (:func:`~workers.arq_compat.tolerate_redis_outages`)."""
    tolerate_redis_outages()
    kind = "inference" if inference else "loader"
    load_timeout_s = max(60.0, settings.timeout_seconds * (settings.retry_attempts + 1))
    return {
        "functions": [
            func(load_chunk, name=LOAD_CHUNK, timeout=load_timeout_s, keep_result=0, max_tries=1)
        ],
        "queue_name": Keys(settings.key_prefix).arq_queue,
        "redis_settings": arq_redis_settings(settings),
        "job_serializer": job_serializer,
        "job_deserializer": job_deserializer,
        "poll_delay": POLL_DELAY_S,
        "keep_result": 0,
        "max_jobs": max(2, settings.s3_concurrency),
        "health_check_interval": 30,
        # On SIGTERM arq stops picking loads and lets running ones finish before it cancels
        # anything; cancelling a load in its last step would make arq skip on_shutdown,
        # and with it the consumer's drain. The drain itself gets shutdown_grace_s after.
        "job_completion_wait": max(1, int(settings.shutdown_grace_s)),
        "on_startup": functools.partial(
            _on_startup, settings=settings, kind=kind, consume=inference
        ),
        "on_shutdown": _on_shutdown,
    }
