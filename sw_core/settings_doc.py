"""The settings table of the operator's guide, generated from :class:`Settings` itself.

``python -m sw_core.settings_doc docs/operations.md`` rewrites the table between the
``<!-- settings-table:begin -->`` and ``<!-- settings-table:end -->`` markers; a unit test
fails when the table in the guide differs from what this module generates, so the guide
cannot drift from the code. A field's meaning comes from :data:`MEANINGS`, else from the
``#:`` comment above the field in ``sw_core/settings.py``; a field with neither is an error.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import sys
import typing
from pathlib import Path

from sw_core import settings as settings_module
from sw_core.settings import ENV_PREFIX, Secret, Settings, _unwrap_optional

BEGIN = "<!-- settings-table:begin -->"
END = "<!-- settings-table:end -->"

#: What each setting means, for operators.
MEANINGS: dict[str, str] = {
    "redis_url": "Redis for queues, results and counters, and the chunk cache unless `SW_CACHE_REDIS_URL` is set (`redis://[:password@]host:port/db`, `rediss://` for TLS).",
    "cache_redis_url": "Redis of the chunk cache; empty = the same as `SW_REDIS_URL`. A server without persistence suits it (see scaling out).",
    "redis_sentinels": "Sentinels of the queue Redis (`host:port,host:port,...`): clients ask them for the master (named by the next setting) and follow a failover; `SW_REDIS_URL` then gives only password, database and TLS.",
    "redis_master_name": "Name of the queue Redis' master as the sentinels know it.",
    "submit_wait_replicas": "A submit returns only once this many replicas hold the job (`WAIT`); else it raises `NotReplicatedError`. 0 = do not wait.",
    "submit_wait_timeout_ms": "Longest a submit waits for the replicas of `SW_SUBMIT_WAIT_REPLICAS`.",
    "key_prefix": "Prefix of every Redis key, so deployments can share one Redis (`sw:jobs` ...).",
    "s3_endpoint": "S3/MinIO `host:port` or `http(s)://host:port`; unset = no S3.",
    "s3_bucket": "Default bucket for `sw publish` and the health check.",
    "s3_access_key": "S3 access key (secret: never logged).",
    "s3_secret_key": "S3 secret key (secret: never logged).",
    "s3_secure": "Use HTTPS for a bare `host:port` endpoint.",
    "s3_region": "Region sent to S3 (MinIO ignores it).",
    "s3_range_mb": "Objects larger than this are read in ranges of this size.",
    "s3_concurrency": "Concurrent S3 requests per process.",
    "backup_dir": "Local folder holding a copy of every chunk set (`<dir>/<model>`); reads fail over to it.",
    "cache_size_mb": "Byte budget of the shared chunk cache in Redis (LRU eviction above it). Keep it well under Redis' `maxmemory`.",
    "cache_part_mb": "Chunks are stored in the cache as parts of at most this size.",
    "cache_shards": "Shards of the chunk cache: each a Redis Cluster hash tag with its own LRU and `SW_CACHE_SIZE_MB / SW_CACHE_SHARDS` of the budget (a chunk must fit in one). Use 1 on one server, at least 4 per master on Cluster.",
    "cache_cluster": "`SW_CACHE_REDIS_URL` names a node of a Redis Cluster: each cache shard is served by the master that owns its slot.",
    "timeout_seconds": "Limit of every remote call and of every wait for a chunk.",
    "retry_attempts": "Attempts per job (and per storage call) before giving up.",
    "retry_initial_delay_s": "Delay before the first retry.",
    "retry_multiplier": "Each further retry waits this many times longer.",
    "retry_max_delay_s": "Longest delay between retries.",
    "retry_jitter": "Random spread of each delay (0.1 = +-10 %).",
    "device": "Torch device of the engine: `auto`, `cpu`, `cuda`, `cuda:1` ...",
    "compute_dtype": "Dtype the engine computes in: `auto` (float32 on CPU, the stored dtype on "
    "a GPU; for packed chunk sets bfloat16 on AVX-512 CPUs and GPUs), `float32`, `bfloat16`, "
    "`float16`. Chunks stored narrower (`sw chunk --dtype`) are widened as they arrive; "
    "`bfloat16` on a bfloat16 chunk set widens nothing (faster on AVX-512 CPUs, results of the "
    "model in bfloat16). Packed weights (GGUF, `sw chunk --quantize`) stay packed with "
    "`bfloat16` (the packed kernels) and are widened on arrival otherwise (`float32`: exactly "
    "the dequantized model; docs/engine.md).",
    "memory_budget_mb": "Memory the engine may keep weights resident in.",
    "prefetch_count": "Chunks fetched ahead of the layer being computed.",
    "compute_threads": "torch's intra-op threads on the engine's compute thread (CPU); 0 = auto: "
    "the count torch had when the engine was made (every core, or `OMP_NUM_THREADS`) while the "
    "model is resident or a batch has 8 rows or more (with packed weights: a model call of 8 "
    "token rows or more, a prompt included), one fewer while chunks stream for a smaller "
    "one, leaving a core to read and verify them (an OpenMP team waiting for a thread the "
    "fetch has descheduled made each token 3.6x slower on 2 cores).",
    "loader_threads": "Threads that read, verify and build streamed chunks off the event loop "
    "(CPU; a folder or the Redis cache in front of one). 1 keeps a read served from the page "
    "cache, which is all CPU, from taking the compute thread's core (on 2 cores 1 thread was "
    "9 % faster a token than 3 from a folder, the same from a local Redis); raise it up to "
    "`prefetch_count + 1` for a cache or disk with high latency.",
    "direct_io": "Chunk reads from a folder past the page cache (`O_DIRECT`, straight into the "
    "engine's buffer): `auto` when the chunk set is larger than half the machine's memory "
    "(it cannot stay cached, and buffered reads would evict everything else), `on`, `off`.",
    "max_batch_size": "Most jobs of one model and task run as one batch.",
    "max_input_tokens": "Longest input (tokens) a job may carry; 0: the model's own context length (its positions and, to generate, what `SW_MAX_KV_CACHE_MB` holds for one sequence).",
    "max_new_tokens_limit": "Upper bound of a generate job's `max_new_tokens`.",
    "models": "Models known without `sw register`: `name=location,...` (`s3://bucket/prefix` or a folder).",
    "claim_idle_ms": "A job held this long by a silent worker is taken over by another (XAUTOCLAIM).",
    "max_deliveries": "A job delivered more often than this (it keeps killing workers) is dead-lettered.",
    "batch_wait_ms": "How long a worker waits for more jobs to fill a batch.",
    "batch_timeout_s": "Longest a batch may run; its jobs then fail with `BatchTimeoutError` (retried, then dead-lettered). 0 = no limit.",
    "result_ttl_s": "How long job hashes (status, result) are kept.",
    "max_payload_bytes": "Largest job payload accepted (msgpack).",
    "max_result_bytes": "Largest job result stored (msgpack, float arrays as float32); a larger one dead-letters the job with `ResultTooLargeError` naming its size.",
    "heartbeat_interval_s": "Workers write their heartbeat this often.",
    "heartbeat_ttl_s": "A worker silent this long counts as dead (`sw health`, `sw monitor`).",
    "shutdown_grace_s": "On SIGTERM a worker finishes its batch within this, then hands jobs back.",
    "poll_block_ms": "Longest block of one stream read (XREADGROUP BLOCK).",
    "metrics_port": "Port of the Prometheus `/metrics` each worker serves; unset = none.",
    "api_keys": "Comma-separated keys `sw serve` accepts as `Authorization: Bearer KEY` (secret: compared in constant time, never logged); unset = no keys, and the gateway listens on loopback only.",
    "gateway_timeout_s": "Deadline of one gateway request: a job not finished by then is cancelled and the client gets 504.",
    "gateway_max_streams": "Most requests the gateway holds open at once; one more gets 429 with `Retry-After`.",
    "gateway_allowed_origins": "Browser origins (`https://app.example.com,...`; `*` = any) allowed to call the gateway from their pages (CORS); requests from any other origin are refused with 403.",
    "gateway_read_timeout_s": "A connection must send a request's headers within this (after it opens, or after the previous answer), and its body within this again; else it is closed (headers) or answered 408 (body).",
    "gateway_idle_timeout_s": "A kept-alive connection without a new request is closed after this.",
    "gateway_max_connections": "Most connections the gateway keeps open at once (streams included); one more is closed at once.",
    "alert_error_rate": "`errors / requests` of the recent window (see below) above this raises the alert (`sw stats --check`, `sw monitor --check`, `sw_alert`).",
}


def _comment_meanings() -> dict[str, str]:
    """``#:`` comments above fields in ``sw_core/settings.py``."""
    source = inspect.getsource(settings_module.Settings)
    out: dict[str, str] = {}
    pending: list[str] = []
    for line in source.splitlines():
        stripped = line.strip()
        if stripped.startswith("#:"):
            pending.append(stripped[2:].strip())
            continue
        match = re.match(r"(\w+)\s*:", stripped)
        if match and pending:
            out[match.group(1)] = " ".join(pending)
        pending = []
    return out


def _type_name(hint: object) -> str:
    target, optional = _unwrap_optional(hint)
    name = {Secret: "secret", Path: "path"}.get(target, getattr(target, "__name__", str(target)))
    return f"{name} (optional)" if optional else str(name)


def _default(value: object) -> str:
    if value is None:
        return "unset"
    if value == "":
        return '""'
    if isinstance(value, bool):
        return "true" if value else "false"
    return f"`{value}`"


def settings_table() -> str:
    """The Markdown table: variable, type, default, meaning -- one row per setting.

    Raises:
        ValueError: a setting has no meaning in :data:`MEANINGS` nor a ``#:`` comment.
    """
    hints = typing.get_type_hints(Settings)
    comments = _comment_meanings()
    rows = ["| Variable | Type | Default | Meaning |", "|---|---|---|---|"]
    missing = []
    for field in dataclasses.fields(Settings):
        meaning = MEANINGS.get(field.name)
        if not meaning and comments.get(field.name):
            meaning = comments[field.name].replace("<", "&lt;").replace(">", "&gt;")
        if not meaning:
            missing.append(field.name)
            continue
        meaning = meaning.replace("|", "\\|")
        rows.append(
            f"| `{ENV_PREFIX}{field.name.upper()}` | {_type_name(hints[field.name])} | "
            f"{_default(field.default)} | {meaning} |"
        )
    if missing:
        raise ValueError(
            f"settings without a meaning: {', '.join(missing)}; add them to "
            "sw_core.settings_doc.MEANINGS or a '#:' comment above the field"
        )
    return "\n".join(rows)


def rewrite(text: str) -> str:
    """``text`` with the block between :data:`BEGIN` and :data:`END` replaced by the table."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"no {BEGIN} ... {END} block")
    return text[: start + len(BEGIN)] + "\n" + settings_table() + "\n" + text[end:]


def table_in(text: str) -> str:
    """The table currently between the markers of ``text``."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"no {BEGIN} ... {END} block")
    return text[start + len(BEGIN) : end].strip()


def main(argv: list[str] | None = None) -> int:
    """Rewrite the table in the given Markdown files (default ``docs/operations.md``)."""
    paths = [Path(p) for p in (argv if argv is not None else sys.argv[1:])] or [
        Path("docs/operations.md")
    ]
    for path in paths:
        path.write_text(rewrite(path.read_text()))
        print(f"settings table updated in {path}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
