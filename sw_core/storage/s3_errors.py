"""How a failed S3 request maps onto the Surfing exceptions (see :mod:`sw_core.storage.s3`).

- ``NoSuchKey`` / ``NoSuchBucket`` -> :class:`~sw_core.exceptions.ChunkNotFoundError`;
- connection errors, timeouts, 5xx, 429 and throttling codes -> transient StorageError;
- ``AccessDenied``, bad credentials and other 4xx -> :class:`PermanentStorageError`.
"""

from __future__ import annotations

import urllib3
from minio.error import InvalidResponseError, S3Error, ServerError

from sw_core.exceptions import ChunkNotFoundError, PermanentStorageError, StorageError

#: S3 error codes meaning "the object (or its bucket) is not there".
NOT_FOUND_CODES = frozenset({"NoSuchKey", "NoSuchBucket", "NotFound", "NoSuchObject"})
#: S3 error codes worth retrying (besides any 5xx/429 status).
TRANSIENT_CODES = frozenset(
    {
        "InternalError",
        "ServiceUnavailable",
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "PreconditionFailed",  # the object changed between two ranges of one read
        "OperationAborted",
    }
)
_CREDENTIAL_CODES = frozenset(
    {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken"}
)


def s3_error(exc: Exception, op: str, where: str) -> Exception:
    """The Surfing error for a minio/urllib3 failure of ``op`` on the object ``where``
    (the exception itself when it is none of theirs)."""
    if isinstance(exc, S3Error):
        status = exc.response.status if exc.response is not None else 0
        if exc.code in NOT_FOUND_CODES:
            what = "bucket does not exist" if exc.code == "NoSuchBucket" else "not found"
            return ChunkNotFoundError(f"{where}: {what} ({exc.code})")
        if exc.code in TRANSIENT_CODES or status >= 500 or status == 429:
            return StorageError(f"{op} {where} failed: {exc.code}: {exc.message}")
        hint = (
            "; check SW_S3_ACCESS_KEY / SW_S3_SECRET_KEY and the bucket policy"
            if exc.code in _CREDENTIAL_CODES
            else ""
        )
        return PermanentStorageError(f"{op} {where} refused: {exc.code}: {exc.message}{hint}")
    if isinstance(exc, ServerError | InvalidResponseError):
        status = exc.status_code if isinstance(exc, ServerError) else exc._code
        if status >= 500 or status == 429:
            return StorageError(f"{op} {where} failed: HTTP {status}")
        return PermanentStorageError(f"{op} {where} refused: HTTP {status}: {exc}")
    if isinstance(exc, urllib3.exceptions.HTTPError | OSError):
        return StorageError(f"{op} {where} failed: cannot reach S3: {exc}")
    if isinstance(exc, ValueError):
        return PermanentStorageError(f"{op} {where} is invalid: {exc}")
    return exc
