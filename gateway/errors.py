"""Errors in OpenAI's shape: ``{"error": {"message", "type", "code"}}`` with the matching status.

Every refusal of the gateway is an :class:`ApiError`; :func:`error_from_exception` maps what
the producer and the job raise to one, so a client sees the same statuses vLLM or OpenAI
would give it: 400 invalid request, 401 bad key, 404 unknown model, 413 too large, 429 busy
(with ``Retry-After``), 503 no inference worker, 504 deadline.
"""

from __future__ import annotations

import json
from typing import Any

from sw_core.exceptions import JobError, JobTimeoutError, ModelError, SurfingError

#: Seconds a client is told to wait after a 429.
RETRY_AFTER_S = 1


class ApiError(Exception):
    """One HTTP error answer.

    Args:
        status: the HTTP status.
        message: what went wrong, for a person.
        type: OpenAI's error type (``invalid_request_error``, ``authentication_error`` ...).
        code: a short machine-readable code, or None.
        headers: extra response headers (``Retry-After``).
        param: the request field the error is about, or None.
    """

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        code: str | None = None,
        headers: dict[str, str] | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.headers = headers or {}
        self.param = param

    def body(self) -> dict[str, Any]:
        """The JSON body: ``{"error": {"message", "type", "param", "code"}}``."""
        error = {"message": self.message, "type": self.type, "param": self.param}
        return {"error": {**error, "code": self.code}}

    def sse(self) -> bytes:
        """The error as one Server-Sent Event (for a failure after a stream began)."""
        return b"data: " + json.dumps(self.body()).encode() + b"\n\n"


def bad_request(
    message: str, code: str | None = "invalid_request", param: str | None = None
) -> ApiError:
    """400: the request cannot be served as sent; nothing was queued."""
    return ApiError(400, message, "invalid_request_error", code, param=param)


def forbidden(message: str, code: str) -> ApiError:
    """403: the request came from where it may not (a cross-origin page, a foreign Host)."""
    return ApiError(403, message, "permission_error", code)


def unknown_model(name: str) -> ApiError:
    """404: no model is registered under ``name``."""
    name = name if len(name) <= 128 else name[:128] + "..."
    return ApiError(
        404,
        f"The model '{name}' does not exist: register it with `sw register {name} LOCATION`.",
        "invalid_request_error",
        "model_not_found",
    )


def too_busy(message: str) -> ApiError:
    """429 with ``Retry-After``."""
    return ApiError(
        429, message, "rate_limit_error", "queue_full", {"Retry-After": str(RETRY_AFTER_S)}
    )


def no_worker(message: str) -> ApiError:
    """503: nothing could run the request now."""
    return ApiError(503, message, "service_unavailable", "no_worker")


def deadline(message: str) -> ApiError:
    """504: the request ran out of time; its job was cancelled."""
    return ApiError(504, message, "timeout_error", "deadline_exceeded")


def error_from_exception(exc: BaseException) -> ApiError:
    """The answer for an exception raised by the producer or carried back by a job."""
    if isinstance(exc, ApiError):
        return exc
    name = type(exc).__name__
    if name == "QueueFullError":
        return too_busy(f"The job queue is full: {exc}")
    if isinstance(exc, JobTimeoutError) or name == "JobExpiredError":
        return deadline(f"The request did not finish in time: {exc}")
    if isinstance(exc, (JobError, ModelError)):
        return bad_request(str(exc), code=name)
    if _is_redis_down(exc):  # its text names the host and port: for the log, not the client
        return ApiError(
            503,
            "The job queue (Redis) cannot be reached; the gateway's log says why",
            "service_unavailable",
            "queue_unavailable",
        )
    if isinstance(exc, SurfingError):
        return ApiError(500, f"{name}: {exc}", "server_error", name)
    return ApiError(500, f"internal error ({name})", "server_error", "internal_error")


def _is_redis_down(exc: BaseException) -> bool:
    import redis.exceptions

    return isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError))
