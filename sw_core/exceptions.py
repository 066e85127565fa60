"""One exception tree for Surfing Weights, rooted in :class:`SurfingError`.

Every class says whether it is *transient* (worth retrying with backoff) or *permanent*
(retrying cannot help: the job goes straight to the dead-letter stream). Workers decide
retry-versus-dead-letter from :func:`is_transient`, never from the message text.

Names follow the original error-handling guide: ``WeightServerError``, ``StorageError``,
``CacheError``, ``ModelError`` and ``SecurityError``.
"""

from __future__ import annotations

from typing import ClassVar


class SurfingError(Exception):
    """Root of every error Surfing Weights raises on purpose."""

    #: True when the same call may succeed later (network blips, timeouts, busy servers).
    transient: ClassVar[bool] = False


class WeightServerError(SurfingError):
    """The cache/loader tier cannot serve a chunk: unreachable, overloaded or timed out."""

    transient = True


class StorageError(SurfingError, OSError):
    """A storage backend (S3/MinIO or the local folder) failed to read or write."""

    transient = True


class PermanentStorageError(StorageError):
    """The storage refused the request (access denied, bad credentials, bad bucket name).

    A :class:`StorageError` that is *not* transient: retrying with the
    same configuration cannot succeed, so jobs dead-letter at once. Fix the credentials
    (``SW_S3_ACCESS_KEY`` / ``SW_S3_SECRET_KEY``), the bucket or the folder permissions.
    """

    transient = False


class ChunkNotFoundError(StorageError, FileNotFoundError):
    """The object is in no backend. Retrying cannot make it appear."""

    transient = False


class CacheError(SurfingError):
    """The Redis chunk cache cannot store or return a chunk (too big, Redis out of memory, ...)."""

    transient = True


class ChunkTooLargeError(CacheError):
    """A chunk is larger than the whole cache budget; raise ``cache_size_mb``."""

    transient = False


class ModelError(SurfingError):
    """A bad model (unknown, unsupported, inconsistent manifest) or bad input for it."""

    transient = False


class SecurityError(SurfingError):
    """Integrity failure: hash mismatch, not safetensors, tampered or oversized header."""

    transient = False


class ConfigError(SurfingError, ValueError):
    """An unknown or malformed setting."""

    transient = False


class JobError(SurfingError):
    """A job cannot be run as submitted (malformed payload, unknown task, too large)."""

    transient = False


class ResultTooLargeError(JobError):
    """A job's result is over ``max_result_bytes`` (permanent: a rerun gives the same)."""


class JobTimeoutError(SurfingError, TimeoutError):
    """Waiting for a job's result took longer than the caller allowed (the job may still
    finish: ask again)."""

    transient = True


class BatchTimeoutError(SurfingError, TimeoutError):
    """A worker cancelled a batch that ran longer than ``batch_timeout_s`` (the job failed;
    retried, then dead-lettered)."""

    transient = True


class NotReplicatedError(SurfingError):
    """A submit's job did not reach ``submit_wait_replicas`` replicas in time (``WAIT``): it
    is queued on the master, but a failover now could lose it. Resubmitting may run it twice."""

    transient = True


class QueueFullError(SurfingError):
    """The jobs queue holds ``max_queued_jobs`` jobs (queued plus pending): nothing was
    submitted. Try again later, or add workers."""

    transient = True


class JobCancelledError(SurfingError):
    """The job was cancelled (``Producer.cancel`` / ``sw cancel``) before it ended."""

    transient = False


class JobExpiredError(SurfingError):
    """The job passed its deadline (``deadline_s``) before it ended: not started, or stopped."""

    transient = False


#: Public error classes by name; used to turn a stored error type back into an exception.
ERROR_TYPES: dict[str, type[SurfingError]] = {
    cls.__name__: cls
    for cls in (
        SurfingError,
        WeightServerError,
        StorageError,
        PermanentStorageError,
        ChunkNotFoundError,
        CacheError,
        ChunkTooLargeError,
        ModelError,
        SecurityError,
        ConfigError,
        ResultTooLargeError,
        JobError,
        JobTimeoutError,
        BatchTimeoutError,
        NotReplicatedError,
        QueueFullError,
        JobCancelledError,
        JobExpiredError,
    )
}


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is worth retrying.

    Surfing errors carry their own answer. Connection and timeout errors from libraries
    (``ConnectionError``, ``TimeoutError``, redis' connection errors) are transient, but
    a refused password or ACL (redis' ``AuthenticationError``/``AuthorizationError``) is
    not; anything else unknown is treated as permanent so that a bug dead-letters quickly
    instead of burning retries.
    """
    if isinstance(exc, SurfingError):
        return type(exc).transient
    try:
        import redis.exceptions as redis_exc

        # a refused password or ACL is a configuration error, although redis-py derives
        # AuthenticationError and AuthorizationError from its ConnectionError
        if isinstance(exc, (redis_exc.AuthenticationError, redis_exc.AuthorizationError)):
            return False
        if isinstance(exc, (redis_exc.ConnectionError, redis_exc.TimeoutError)):
            return True
    except ImportError:  # pragma: no cover - redis is a hard dependency
        pass
    return isinstance(exc, (ConnectionError, TimeoutError))


def error_class(name: str) -> type[SurfingError]:
    """The exception class registered under ``name``; ``SurfingError`` for unknown names."""
    return ERROR_TYPES.get(name, SurfingError)
