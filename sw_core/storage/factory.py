"""Locations to backends (:mod:`sw_core.storage.location`), plus the model store chain."""

from __future__ import annotations

from sw_core.counters import Counters
from sw_core.exceptions import ConfigError
from sw_core.retry import RetryPolicy
from sw_core.settings import Settings
from sw_core.storage.base import StorageBackend
from sw_core.storage.failover import FailoverBackend
from sw_core.storage.filesystem import FilesystemBackend
from sw_core.storage.location import parse_location
from sw_core.storage.s3 import S3Backend


def backend_from_location(
    location: str, settings: Settings, *, counters: Counters | None = None
) -> StorageBackend:
    """The backend for one location; S3 endpoint, keys, retries and timeout from ``settings``."""
    parsed = parse_location(location)
    if parsed.is_s3:
        return S3Backend.from_settings(
            settings, parsed.prefix, bucket_name=parsed.bucket, counters=counters
        )
    assert parsed.path is not None
    return FilesystemBackend(
        parsed.path,
        counters=counters,
        retry=RetryPolicy.from_settings(settings),
        timeout_s=settings.timeout_seconds,
    )


def model_store(
    location: str,
    settings: Settings,
    model_name: str | None = None,
    *,
    counters: Counters | None = None,
) -> StorageBackend:
    """Where a model's chunk set is read from: S3 with the local backup behind it.

    For an ``s3://`` location with ``settings.backup_dir`` set, a
    :class:`~sw_core.storage.failover.FailoverBackend` of ``[S3, backup_dir/<model_name>]``
    (``model_name`` defaults to the last component of the S3 prefix); otherwise the single
    backend of ``location``. All members share one Counters.
    """
    counters = counters if counters is not None else Counters()
    primary = backend_from_location(location, settings, counters=counters)
    parsed = parse_location(location)
    if not parsed.is_s3 or settings.backup_dir is None:
        return primary
    name = model_name or parsed.prefix.rpartition("/")[2]
    if name in (".", "..") or "/" in name or "\\" in name:
        raise ConfigError(f"model name {name!r} cannot name a backup folder")
    backup_root = settings.backup_dir / name if name else settings.backup_dir
    backup = FilesystemBackend(
        backup_root,
        counters=counters,
        retry=RetryPolicy.from_settings(settings),
        timeout_s=settings.timeout_seconds,
    )
    return FailoverBackend([primary, backup], counters=counters)
