"""Waiting on the compute thread for a chunk's load -- cancellation, the timeout, load errors
named after their chunk -- and running the digest check a load left to that thread."""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable

from sw_core.chunks.manifest import ChunkInfo
from sw_core.engine.memory.slots import Cancelled, Loaded, Tensors, Unverified, named_error
from sw_core.exceptions import SecurityError, WeightServerError

#: How often a waiting acquire checks for cancellation.
POLL_S = 0.25


def await_load(
    future: concurrent.futures.Future[Loaded],
    chunk: ChunkInfo,
    *,
    model_name: str,
    timeout_s: float,
    cancel: threading.Event,
) -> Loaded:
    """What ``future`` (``chunk``'s load) gives, waiting at most ``timeout_s``.

    Raises:
        Cancelled: ``cancel`` was set, or the load was cancelled.
        WeightServerError: the timeout passed (the load is cancelled).
        SurfingError: the load failed (its error, named after the chunk).
    """
    deadline = time.perf_counter() + timeout_s
    while True:
        if cancel.is_set():
            raise Cancelled(f"model {model_name!r}: run cancelled")
        try:
            return future.result(timeout=min(POLL_S, max(deadline - time.perf_counter(), 0)))
        except concurrent.futures.TimeoutError:
            if time.perf_counter() >= deadline:
                future.cancel()
                raise WeightServerError(
                    f"model {model_name!r}: timed out after {timeout_s:g} s "
                    f"waiting for chunk {chunk.name!r} ({chunk.file})"
                ) from None
        except concurrent.futures.CancelledError:
            raise Cancelled(
                f"model {model_name!r}: loading chunk {chunk.name!r} was cancelled"
            ) from None
        except Exception as exc:
            raise named_error(exc, model_name, chunk) from exc


def checked(
    loaded: Loaded,
    chunk: ChunkInfo,
    *,
    model_name: str,
    reload: Callable[[ChunkInfo], Tensors] | None,
) -> tuple[Tensors, bool]:
    """``(tensors, whether they were read again)``: ``loaded``'s own once its deferred check
    passed (run here, on the thread about to use them), else ``chunk`` read again by
    ``reload``, its bytes verified as they are read (the source dropped what failed).

    Raises:
        SecurityError: the check failed and there is no ``reload``.
        SurfingError: reading the chunk again failed (named after the chunk).
    """
    if not isinstance(loaded, Unverified):
        return loaded, False
    if loaded.check():
        return loaded.tensors, False
    if reload is None:
        raise SecurityError(f"model {model_name!r}: chunk {chunk.name!r} failed its digest check")
    try:
        return reload(chunk), True
    except Exception as exc:
        raise named_error(exc, model_name, chunk) from exc
