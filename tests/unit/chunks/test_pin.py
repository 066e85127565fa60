"""Manifest pins: ``LOCATION#sha256=<hex>`` parsed, kept through normalization, checked."""

from __future__ import annotations

import hashlib

import pytest

from sw_core.chunks.pin import check_pin
from sw_core.exceptions import ConfigError, SecurityError
from sw_core.pipeline.registry import check_location
from sw_core.storage import parse_location
from sw_core.storage.location import PIN_MARK, pin_location, split_pin

MANIFEST = b'{"format_version": 1}'
PIN = hashlib.sha256(MANIFEST).hexdigest()


def test_split_pin() -> None:
    assert split_pin(" s3://b/p ") == ("s3://b/p", None)
    assert split_pin(f"s3://b/p{PIN_MARK}{PIN.upper()}") == ("s3://b/p", PIN)
    assert split_pin(f"/srv/chunks/m{PIN_MARK}{PIN}") == ("/srv/chunks/m", PIN)
    with pytest.raises(ConfigError, match="is not a sha256"):
        split_pin(f"s3://b/p{PIN_MARK}abc")


def test_pin_location_replaces_an_old_pin() -> None:
    pinned = pin_location(f"s3://b/p{PIN_MARK}{'0' * 64}", MANIFEST)
    assert pinned == f"s3://b/p{PIN_MARK}{PIN}"


def test_check_pin() -> None:
    check_pin(MANIFEST, None, "anywhere")
    check_pin(MANIFEST, PIN, "anywhere")
    with pytest.raises(SecurityError, match=r"hashes to .* not to its pin .* register it again"):
        check_pin(MANIFEST + b" ", PIN, "s3://b/p")


def test_locations_carry_the_pin_to_the_backends(tmp_path) -> None:
    s3 = parse_location(f"s3://bucket/models/m{PIN_MARK}{PIN}")
    assert (s3.bucket, s3.prefix, s3.manifest_sha256) == ("bucket", "models/m", PIN)
    folder = parse_location(f"{tmp_path}{PIN_MARK}{PIN}")
    assert (folder.path, folder.manifest_sha256) == (tmp_path, PIN)
    assert parse_location("s3://bucket/m").manifest_sha256 is None


def test_registry_normalization_keeps_the_pin(tmp_path) -> None:
    assert (
        check_location(f"s3://bucket/m/{PIN_MARK}{PIN.upper()}") == f"s3://bucket/m{PIN_MARK}{PIN}"
    )
    assert check_location(f"{tmp_path}/{PIN_MARK}{PIN}", must_exist=True) == (
        f"{tmp_path}{PIN_MARK}{PIN}"
    )
