"""Locations to backends: ``s3://BUCKET/PREFIX`` or a folder, plus the model store chain."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sw_core.chunks.pin import split_pin
from sw_core.exceptions import ConfigError
from sw_core.ops.stats import Counters
from sw_core.retry import RetryPolicy
from sw_core.settings import Settings
from sw_core.storage.base import StorageBackend
from sw_core.storage.failover import FailoverBackend
from sw_core.storage.filesystem import FilesystemBackend
from sw_core.storage.s3 import S3Backend


@dataclass(frozen=True)
class Location:
    """A parsed storage location: ``s3`` with bucket and prefix, or a ``file`` folder."""

    scheme: str
    bucket: str = ""
    prefix: str = ""
    path: Path | None = None
    #: The manifest's sha256 when the location is pinned (``...#sha256=<hex>``).
    manifest_sha256: str | None = None

    @property
    def is_s3(self) -> bool:
        return self.scheme == "s3"


def parse_location(location: str) -> Location:
    """``s3://BUCKET/PREFIX`` -> an S3 location; ``file://PATH`` or a plain path -> a folder.
    Either may end in a manifest pin ``#sha256=<hex>`` (:mod:`sw_core.chunks.pin`).

    Raises:
        ConfigError: an ``s3://`` URL without a bucket, another URL scheme, a bad pin.
    """
    text, pin = split_pin(location)
    if text.lower().startswith("s3://"):
        bucket, _, prefix = text[len("s3://") :].partition("/")
        if not bucket:
            raise ConfigError(f"S3 location {location!r} names no bucket (s3://BUCKET/PREFIX)")
        return Location("s3", bucket=bucket, prefix=prefix.strip("/"), manifest_sha256=pin)
    if text.lower().startswith("file://"):
        text = text[len("file://") :]
    elif "://" in text:
        raise ConfigError(
            f"unsupported location {location!r}: use s3://BUCKET/PREFIX or a folder path"
        )
    if not text:
        raise ConfigError("empty storage location")
    return Location("file", path=Path(text).expanduser(), manifest_sha256=pin)


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
