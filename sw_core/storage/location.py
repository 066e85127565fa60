"""The one grammar of chunk-set locations.

A location is ``s3://BUCKET[/PREFIX]``, a folder path, or ``file://PATH``; any of them may
end in a manifest pin ``#sha256=<hex>`` (:mod:`sw_core.chunks.pin`). The registry, the
workers, the engine and every ``sw`` command read locations through :func:`parse_location`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from sw_core.chunks.pin import PIN_MARK, split_pin
from sw_core.exceptions import ConfigError

#: S3 bucket names: 3-63 lowercase letters, digits, dots and hyphens.
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


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
