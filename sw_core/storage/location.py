"""The one grammar of chunk-set locations.

A location is ``s3://BUCKET[/PREFIX]``, a folder path, or ``file://PATH``; any of them may
end in a manifest pin ``#sha256=<hex>`` (checked by :mod:`sw_core.chunks.pin`). The registry, the
workers, the engine and every ``sw`` command read locations through :func:`parse_location`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from sw_core.exceptions import ConfigError
from sw_core.utils import calculate_chunk_hash

#: S3 bucket names: 3-63 lowercase letters, digits, dots and hyphens.
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


#: What separates a location from its manifest pin.
PIN_MARK = "#sha256="
_HEX64 = re.compile(r"[0-9a-f]{64}")


def split_pin(location: str) -> tuple[str, str | None]:
    """``(location without its pin, the pin or None)``.

    Raises:
        ConfigError: a pin that is not 64 hex digits.
    """
    base, mark, pin = location.strip().rpartition(PIN_MARK)
    if not mark:
        return location.strip(), None
    pin = pin.strip().lower()
    if not _HEX64.fullmatch(pin):
        raise ConfigError(f"{location!r}: the manifest pin after {PIN_MARK!r} is not a sha256")
    return base, pin


def pin_location(location: str, manifest_bytes: bytes) -> str:
    """``location`` pinned to the manifest ``manifest_bytes`` (an old pin is replaced)."""
    base, _ = split_pin(location)
    return f"{base}{PIN_MARK}{calculate_chunk_hash(manifest_bytes)}"


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

    def normalized(self) -> str:
        """The canonical text: ``s3://BUCKET[/PREFIX]`` or an absolute folder, with its pin."""
        suffix = f"{PIN_MARK}{self.manifest_sha256}" if self.manifest_sha256 else ""
        if self.is_s3:
            base = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
            return base + suffix
        assert self.path is not None
        return str(self.path.expanduser().resolve()) + suffix


def parse_location(location: str) -> Location:
    """``s3://BUCKET/PREFIX`` -> an S3 location; ``file://PATH`` or a plain path -> a folder.

    Raises:
        ConfigError: an ``s3://`` URL without a valid bucket name, another URL scheme, an
            empty location, a malformed pin.
    """
    text, pin = split_pin(location)
    if text.lower().startswith("s3://"):
        bucket, _, prefix = text[len("s3://") :].partition("/")
        if not _BUCKET_RE.fullmatch(bucket):
            raise ConfigError(
                f"S3 location {location!r} names no valid bucket (s3://BUCKET/PREFIX; bucket "
                "names are 3-63 lowercase letters, digits, dots and hyphens)"
            )
        return Location("s3", bucket=bucket, prefix=prefix.strip("/"), manifest_sha256=pin)
    if text.lower().startswith("file://"):
        text = text[len("file://") :]
    elif "://" in text:
        raise ConfigError(
            f"unsupported location {location!r}: use s3://BUCKET/PREFIX or a folder path"
        )
    if not text:
        raise ConfigError("empty storage location: use s3://BUCKET/PREFIX or a folder path")
    return Location("file", path=Path(text).expanduser(), manifest_sha256=pin)


def check_location(location: str, *, must_exist: bool = False) -> str:
    """The normalized text of ``location`` (:meth:`Location.normalized`).

    Raises:
        ConfigError: not a location (see :func:`parse_location`), or a folder that does not
            exist when ``must_exist``.
    """
    parsed = parse_location(location)
    if must_exist and parsed.path is not None and not parsed.path.expanduser().is_dir():
        raise ConfigError(f"folder {str(parsed.path.expanduser().resolve())!r} does not exist")
    return parsed.normalized()
