"""Key safety, locations and how the factory composes backends."""

from __future__ import annotations

from pathlib import Path

import pytest

from sw_core.exceptions import ConfigError, SecurityError
from sw_core.settings import Settings
from sw_core.storage import (
    FailoverBackend,
    FilesystemBackend,
    S3Backend,
    backend_from_location,
    check_key,
    check_prefix,
    model_store,
    parse_location,
)


@pytest.mark.parametrize(
    "key",
    ["", "/etc/passwd", "../x", "a/../../x", "a//b", "./a", "a/.", "a\\b", "a\x00b", "a/"],
)
def test_unsafe_keys_are_refused(key: str) -> None:
    with pytest.raises(SecurityError):
        check_key(key)


@pytest.mark.parametrize("key", ["manifest.json", "blocks/block_000.safetensors", "a.b/c..d"])
def test_safe_keys_pass(key: str) -> None:
    assert check_key(key) == key


def test_prefixes() -> None:
    assert check_prefix("") == ""
    assert check_prefix("blocks/b") == "blocks/b"
    for bad in ("../", "/abs", "a/../b"):
        with pytest.raises(SecurityError):
            check_prefix(bad)


async def test_filesystem_refuses_escaping_keys_and_symlinks(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"s3cr3t")
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to(outside, target_is_directory=True)
    backend = FilesystemBackend(root)

    for key in ("../outside/secret", "/etc/passwd", "link/secret"):
        with pytest.raises(SecurityError):
            await backend.load(key)
    with pytest.raises(SecurityError):
        await backend.save("link/new", b"x")
    assert not (outside / "new").exists()


def test_parse_location() -> None:
    s3 = parse_location("s3://bucket/models/minilm/")
    assert (s3.scheme, s3.bucket, s3.prefix) == ("s3", "bucket", "models/minilm")
    assert parse_location("s3://bucket").prefix == ""
    assert parse_location("file:///tmp/x").path == Path("/tmp/x")
    assert parse_location("chunks/minilm").path == Path("chunks/minilm")
    for bad in ("s3://", "s3:///prefix", "gs://bucket/x", ""):
        with pytest.raises(ConfigError):
            parse_location(bad)


def test_backend_from_location_uses_settings(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {},
        s3_endpoint="http://127.0.0.1:9000",
        s3_access_key="AKIA-ACCESS",
        s3_secret_key="very-secret",
        s3_range_mb=2,
        s3_concurrency=3,
        timeout_seconds=7,
        retry_attempts=5,
    )
    s3 = backend_from_location("s3://chunks/models/minilm", settings)
    assert isinstance(s3, S3Backend)
    assert (s3.bucket_name, s3.prefix, s3.endpoint, s3.secure) == (
        "chunks",
        "models/minilm",
        "127.0.0.1:9000",
        False,
    )
    assert s3.range_size_bytes == 2 << 20 and s3.concurrency == 3
    assert s3.timeout_s == 7 and s3.retry.attempts == 5
    assert s3.object_name("block.safetensors") == "models/minilm/block.safetensors"
    text = s3.describe() + repr(s3)
    assert "very-secret" not in text and "AKIA-ACCESS" not in text
    folder = backend_from_location(str(tmp_path), settings)
    assert isinstance(folder, FilesystemBackend) and folder.root == tmp_path


def test_s3_location_without_endpoint_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="SW_S3_ENDPOINT"):
        backend_from_location("s3://bucket/x", Settings.from_env({}))


def test_model_store_puts_the_backup_folder_behind_s3(tmp_path: Path) -> None:
    settings = Settings.from_env({}, s3_endpoint="127.0.0.1:9000", backup_dir=str(tmp_path))
    store = model_store("s3://chunks/models/minilm", settings)
    assert isinstance(store, FailoverBackend)
    primary, backup = store.backends
    assert isinstance(primary, S3Backend) and isinstance(backup, FilesystemBackend)
    assert backup.root == tmp_path / "minilm"
    assert primary.counters is backup.counters is store.counters
    named = model_store("s3://chunks/x", settings, model_name="smol")
    assert named.backends[1].root == tmp_path / "smol"  # type: ignore[attr-defined]
    with pytest.raises(ConfigError):
        model_store("s3://chunks/x", settings, model_name="..")


def test_model_store_without_backup_or_for_a_folder_is_single(tmp_path: Path) -> None:
    no_backup = Settings.from_env({}, s3_endpoint="127.0.0.1:9000")
    assert isinstance(model_store("s3://chunks/m", no_backup), S3Backend)
    with_backup = no_backup.replace(backup_dir=str(tmp_path))
    assert isinstance(model_store(str(tmp_path / "m"), with_backup), FilesystemBackend)
