"""How S3Backend maps minio/urllib3 failures (no server needed: errors are built here)."""

from __future__ import annotations

import pytest
import urllib3
from minio.error import InvalidResponseError, S3Error, ServerError
from urllib3.response import HTTPResponse

from sw_core.exceptions import ChunkNotFoundError, StorageError, is_transient
from sw_core.storage import PermanentStorageError, S3Backend


@pytest.fixture
def backend() -> S3Backend:
    return S3Backend(
        "bucket", endpoint="127.0.0.1:1", access_key="AK", secret_key="s3cr3t-value", prefix="m"
    )


def s3_error(code: str, status: int) -> S3Error:
    return S3Error(
        HTTPResponse(status=status), code, "msg", "/bucket/m/k", "req", "host", "bucket", "m/k"
    )


@pytest.mark.parametrize("code", ["NoSuchKey", "NoSuchBucket"])
def test_missing_maps_to_chunk_not_found(backend: S3Backend, code: str) -> None:
    error = backend._error(s3_error(code, 404), "load", "k")
    assert isinstance(error, ChunkNotFoundError)
    assert "s3://bucket/m/k" in str(error)


@pytest.mark.parametrize(
    ("code", "status"),
    [("SlowDown", 503), ("InternalError", 500), ("RequestTimeout", 400), ("Whatever", 502)],
)
def test_throttling_and_5xx_are_transient(backend: S3Backend, code: str, status: int) -> None:
    error = backend._error(s3_error(code, status), "load", "k")
    assert isinstance(error, StorageError) and is_transient(error)


@pytest.mark.parametrize("code", ["AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"])
def test_refusals_are_permanent_with_a_hint(backend: S3Backend, code: str) -> None:
    error = backend._error(s3_error(code, 403), "load", "k")
    assert isinstance(error, PermanentStorageError) and not is_transient(error)
    assert "SW_S3_ACCESS_KEY" in str(error)
    assert "s3cr3t-value" not in str(error)


def test_server_and_non_xml_errors_by_status(backend: S3Backend) -> None:
    assert is_transient(backend._error(ServerError("boom", 503), "load", "k"))
    assert not is_transient(backend._error(ServerError("nope", 405), "load", "k"))
    assert is_transient(backend._error(InvalidResponseError(502, "text/html", "x"), "load", "k"))
    assert not is_transient(backend._error(InvalidResponseError(403, "text/html", ""), "load", "k"))


def test_connection_errors_are_transient(backend: S3Backend) -> None:
    exc = urllib3.exceptions.ProtocolError("Connection aborted", ConnectionResetError())
    error = backend._error(exc, "load", "k")
    assert isinstance(error, StorageError) and is_transient(error)
    assert "cannot reach S3" in str(error)


def test_endpoint_forms(backend: S3Backend) -> None:
    secure = S3Backend("b", endpoint="https://s3.example.com/")
    assert (secure.endpoint, secure.secure) == ("s3.example.com", True)
    plain = S3Backend("b", endpoint="minio:9000", secure=True)
    assert (plain.endpoint, plain.secure) == ("minio:9000", True)
    assert backend.describe() == "s3://bucket/m at http://127.0.0.1:1"
