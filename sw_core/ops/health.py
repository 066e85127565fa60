"""Health checks for people (``sw health``) and readiness probes (:func:`check_health`).

Each check ends ``ok``, ``warn`` (works, but an operator should look), ``fail`` or
``skip`` (not configured). The report is healthy when no check failed:

- Redis answers ``PING``; its ``maxmemory-policy`` is safe for queues (``noeviction`` or
  ``volatile-*``; ``allkeys-*`` may evict the job stream: warn) and ``maxmemory`` leaves room
  for the chunk cache's budget;
- storage: the S3 bucket (``SW_S3_BUCKET`` and the buckets of registered ``s3://`` models)
  exists when ``SW_S3_ENDPOINT`` is set; ``SW_BACKUP_DIR`` and registered model folders are
  readable;
- workers of each required kind (``inference``, ``loader``) are heartbeating within
  ``SW_HEARTBEAT_TTL_S``;
- the error rate is under ``SW_ALERT_ERROR_RATE`` (warn only).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from sw_core.keys import Keys
from sw_core.ops.monitor import StreamingMonitor
from sw_core.queue_redis import queue_redis_sync
from sw_core.settings import Settings, redact_url

if TYPE_CHECKING:
    import urllib3
    from minio import Minio

Status = Literal["ok", "warn", "fail", "skip"]
#: Worker kinds required by default.
DEFAULT_REQUIRED_KINDS: tuple[str, ...] = ("inference", "loader")
#: Longest wait for any single check's network call.
CHECK_TIMEOUT_S = 5.0
#: Policies under which Redis never drops the queues (``volatile-*`` only evicts keys with a
#: TTL; the stream, the retries and the dead letters have none).
SAFE_POLICY_PREFIXES: tuple[str, ...] = ("noeviction", "volatile-")


@dataclass(frozen=True)
class Check:
    """One check's outcome."""

    name: str
    status: Status
    detail: str


@dataclass
class HealthReport:
    """Every check; :attr:`ok` when none failed."""

    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.status != "fail" for c in self.checks)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.status == "fail"]

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checks": [
                {"name": c.name, "status": c.status, "detail": c.detail} for c in self.checks
            ],
        }


def check_health(
    settings: Settings,
    *,
    require_kinds: Sequence[str] = DEFAULT_REQUIRED_KINDS,
    check_storage: bool = True,
    host: str | None = None,
) -> HealthReport:
    """Run every check (blocking, each network call bounded by :data:`CHECK_TIMEOUT_S`).

    Args:
        settings: what to check (Redis URL, S3, backup folder, heartbeat TTL).
        require_kinds: worker kinds that must have at least one live worker.
        check_storage: also check S3 and the folders.
        host: only workers on this host count (a container's health check: its own
            worker, not any worker of the cluster).
    """
    import redis

    timeout_s = min(CHECK_TIMEOUT_S, settings.timeout_seconds)
    report = HealthReport()
    where = redact_url(settings.redis_url)
    client = queue_redis_sync(settings, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    try:
        try:
            client.ping()
        except redis.RedisError as exc:
            report.checks.append(Check("redis", "fail", f"{where} unreachable: {exc}"))
            for kind in require_kinds:
                report.checks.append(Check(f"{kind} workers", "fail", "unknown: Redis is down"))
            if check_storage:
                report.checks.extend(_storage_checks(settings, {}, timeout_s))
            return report
        report.checks.append(Check("redis", "ok", f"{where} answers PING"))
        report.checks.append(_memory_check(client, settings))
        if settings.cache_is_separate:
            report.checks.extend(_cache_redis_checks(settings, timeout_s))
        models = _registered_models(client, settings)
        if check_storage:
            report.checks.extend(_storage_checks(settings, models, timeout_s))
        report.checks.extend(_worker_checks(settings, require_kinds, host))
        return report
    finally:
        client.close()


async def check_health_async(
    settings: Settings,
    *,
    require_kinds: Sequence[str] = DEFAULT_REQUIRED_KINDS,
    check_storage: bool = True,
    host: str | None = None,
) -> HealthReport:
    """:func:`check_health` in a thread, for asyncio callers (readiness endpoints)."""
    return await asyncio.to_thread(
        check_health,
        settings,
        require_kinds=require_kinds,
        check_storage=check_storage,
        host=host,
    )


# ---------------------------------------------------------------------------- Redis
# ``client: Any``: a redis.Redis, whose replies redis-py types as sync|async unions
def _memory_check(client: Any, settings: Settings) -> Check:
    import redis

    try:
        config = client.config_get("maxmemory*")
    except redis.RedisError as exc:
        return Check(
            "redis memory",
            "warn",
            f"cannot read maxmemory-policy ({exc}); make sure it is noeviction or volatile-*",
        )
    policy = str(_text(config.get("maxmemory-policy", "")))
    maxmemory = int(_text(config.get("maxmemory", "0")) or 0)
    if not policy.startswith(SAFE_POLICY_PREFIXES):
        return Check(
            "redis memory",
            "warn",
            f"maxmemory-policy is {policy}: Redis may evict the job stream and dead letters; "
            "set noeviction (the chunk cache keeps its own budget, SW_CACHE_SIZE_MB)",
        )
    # the cache's budget counts against this server only when the cache lives on it
    shared = settings.cache_url == settings.redis_url
    if maxmemory and shared and settings.cache_size_bytes > maxmemory * 0.8:
        return Check(
            "redis memory",
            "warn",
            f"SW_CACHE_SIZE_MB={settings.cache_size_mb} leaves little of maxmemory "
            f"{maxmemory >> 20} MiB for the queues; keep the cache under 80 % of it",
        )
    limit = f"{maxmemory >> 20} MiB" if maxmemory else "no limit"
    return Check("redis memory", "ok", f"maxmemory-policy {policy}, maxmemory {limit}")


def _cache_redis_checks(settings: Settings, timeout_s: float) -> list[Check]:
    """The chunk cache's own Redis (``SW_CACHE_REDIS_URL``): reachable, and room for the
    cache's budget under its ``maxmemory``."""
    import redis

    where = redact_url(settings.cache_url)
    client = redis.Redis.from_url(
        settings.cache_url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
    )
    try:
        client.ping()
        config: Any = client.config_get("maxmemory")  # a redis reply
    except redis.RedisError as exc:
        detail = f"{where} unreachable: {exc}; workers load chunks from storage meanwhile"
        return [Check("cache redis", "fail", detail)]
    finally:
        client.close()
    checks = [Check("cache redis", "ok", f"{where} answers PING")]
    maxmemory = int(_text(config.get("maxmemory", "0")) or 0)
    if maxmemory and settings.cache_size_bytes > maxmemory * 0.9:
        checks.append(
            Check(
                "cache redis memory",
                "warn",
                f"SW_CACHE_SIZE_MB={settings.cache_size_mb} exceeds 90 % of the cache Redis' "
                f"maxmemory {maxmemory >> 20} MiB: its writes may be refused",
            )
        )
    else:
        limit = f"{maxmemory >> 20} MiB" if maxmemory else "no limit"
        checks.append(Check("cache redis memory", "ok", f"maxmemory {limit}"))
    return checks


def _registered_models(client: Any, settings: Settings) -> dict[str, str]:
    import redis

    try:
        raw = client.hgetall(Keys(settings.key_prefix).models)
    except redis.RedisError:
        return {}
    return {_text(k): _text(v) for k, v in raw.items()}


# ---------------------------------------------------------------------------- storage
def _storage_checks(settings: Settings, models: dict[str, str], timeout_s: float) -> list[Check]:
    checks: list[Check] = []
    buckets = {settings.s3_bucket} if settings.s3_endpoint else set()
    folders: dict[str, Path] = {}
    if settings.backup_dir is not None:
        folders["backup dir"] = settings.backup_dir
    for name, location in sorted(models.items()):
        if location.startswith("s3://"):
            bucket = location[len("s3://") :].split("/", 1)[0]
            if bucket:
                buckets.add(bucket)
        elif "://" not in location:
            folders[f"model {name}"] = Path(location)
    if buckets and not settings.s3_endpoint:
        checks.append(
            Check(
                "s3",
                "fail",
                f"models live in S3 ({', '.join(sorted(buckets))}) but SW_S3_ENDPOINT is not set",
            )
        )
    elif not buckets:
        checks.append(Check("s3", "skip", "SW_S3_ENDPOINT not set"))
    else:
        checks.extend(_s3_checks(settings, sorted(buckets), timeout_s))
    if not folders:
        checks.append(Check("backup dir", "skip", "SW_BACKUP_DIR not set"))
    for name, folder in folders.items():
        checks.append(_folder_check(name, folder))
    return checks


def _s3_client(settings: Settings, timeout_s: float) -> tuple[Minio, str, urllib3.PoolManager]:
    """A ``minio.Minio`` client that fails fast (no retries), its ``host:port``, its pool."""
    import urllib3
    from minio import Minio

    endpoint = (settings.s3_endpoint or "").strip().rstrip("/")
    secure = settings.s3_secure
    for scheme, is_secure in (("https://", True), ("http://", False)):
        if endpoint.lower().startswith(scheme):
            endpoint, secure = endpoint[len(scheme) :], is_secure
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=timeout_s, read=timeout_s), retries=False
    )
    access = settings.s3_access_key.reveal() if settings.s3_access_key else None
    secret = settings.s3_secret_key.reveal() if settings.s3_secret_key else None
    client = Minio(
        endpoint,
        access_key=access,
        secret_key=secret,
        secure=secure,
        region=settings.s3_region,
        http_client=http,
    )
    return client, endpoint, http


def _s3_checks(settings: Settings, buckets: list[str], timeout_s: float) -> list[Check]:
    try:
        client, endpoint, http = _s3_client(settings, timeout_s)
    except Exception as exc:
        return [Check("s3", "fail", f"bad S3 settings (SW_S3_ENDPOINT ...): {exc}")]
    checks: list[Check] = []
    for bucket in buckets:
        name = f"s3 bucket {bucket}"
        try:
            exists = client.bucket_exists(bucket)
        except Exception as exc:  # unreachable, refused, bad credentials
            checks.append(Check(name, "fail", f"{endpoint}: {type(exc).__name__}: {exc}"))
            continue
        if exists:
            checks.append(Check(name, "ok", f"exists at {endpoint}"))
        else:
            checks.append(
                Check(
                    name,
                    "fail",
                    f"missing at {endpoint}: create it or fix SW_S3_BUCKET / the model's location",
                )
            )
    http.clear()
    return checks


def _folder_check(name: str, folder: Path) -> Check:
    if not folder.is_dir():
        return Check(name, "fail", f"{folder} is not a folder")
    if not os.access(folder, os.R_OK | os.X_OK):
        return Check(name, "fail", f"{folder} is not readable by uid {os.getuid()}")
    return Check(name, "ok", f"{folder} readable")


# ---------------------------------------------------------------------------- workers
def _worker_checks(
    settings: Settings, require_kinds: Sequence[str], host: str | None = None
) -> list[Check]:
    with StreamingMonitor(settings=settings) as monitor:
        stats = monitor.get_stats_sync()
    checks: list[Check] = []
    ttl = settings.heartbeat_ttl_s
    for kind in require_kinds:
        live = [w for w in stats["workers"] if w["kind"] == kind]
        where, name = "", f"{kind} workers"
        if host is not None:
            live = [w for w in live if w.get("host") == host]
            where, name = f" on host {host}", f"{kind} worker on {host}"
        if live:
            newest = min(w["age_s"] for w in live)
            checks.append(
                Check(name, "ok", f"{len(live)} heartbeating{where}, last {newest:.1f}s ago")
            )
        else:
            checks.append(
                Check(
                    name,
                    "fail",
                    f"none heartbeating{where} within {ttl:g}s "
                    "(SW_HEARTBEAT_TTL_S); start one or check its logs",
                )
            )
    if stats["alert"]:
        checks.append(Check("error rate", "warn", str(stats["alert_reason"])))
    elif stats["total_requests"]:
        checks.append(
            Check(
                "error rate",
                "ok",
                f"{stats['error_rate']:.1%} of {stats['total_requests']} "
                f"requests (threshold {settings.alert_error_rate:.0%})",
            )
        )
    return checks


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, (bytes, bytearray)) else str(value)
