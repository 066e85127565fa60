"""The FastAPI application: wiring of the routes (:mod:`gateway.routes`), the guard, the
access log, the error handlers and the background status sampler.

Routes: ``POST /v1/embeddings``, ``POST /v1/chat/completions``, ``POST /v1/completions``,
``GET /v1/models`` (and ``/v1/models/{id}``), ``GET /healthz`` (the process answers),
``GET /readyz`` (ready or not; why only with a key), ``GET /metrics`` (Prometheus), ``GET /``
(the status page and playground), ``GET /api/status`` (the page's numbers). With
``SW_API_KEYS`` set every ``/v1`` path, ``/api/status`` and ``/metrics`` need
``Authorization: Bearer KEY`` -- checked before routing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import redis.exceptions
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.access import AccessLog
from gateway.auth import KeyChecker
from gateway.chunk_map import ChunkMap
from gateway.errors import ApiError, error_from_exception
from gateway.guard import Guard, parse_origins
from gateway.history import History, stop
from gateway.jobs import JobBackend
from gateway.metrics import GatewayCounters
from gateway.routes import openai_routes, page_routes, probes
from gateway.service import Gateway
from gateway.status import StatusSource
from producer import Producer
from sw_core.exceptions import SurfingError
from sw_core.settings import Settings

log = logging.getLogger("gateway")
#: Longest wait for one step of the shutdown (closing a Redis client, stopping a task).
CLOSE_STEP_S = 3.0


def create_app(settings: Settings, producer: Producer | None = None) -> FastAPI:
    """The gateway application on ``settings`` (its Redis, keys, limits)."""
    counters = GatewayCounters()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        backend = JobBackend(producer or Producer(settings=settings), settings)
        gateway = Gateway(backend, settings, counters)
        app.state.gateway = gateway
        app.state.status = StatusSource(settings)
        app.state.history = History(counters)
        app.state.chunk_map = ChunkMap(settings, gateway.tokens)
        sampler = asyncio.create_task(app.state.history.run(app.state.status.cluster))
        try:
            yield
        finally:
            await closed("the status sampler", lambda: stop(sampler))
            await closed("the job backend", gateway.close)
            await closed("the monitor", app.state.status.close)
            app.state.chunk_map.close()

    app = FastAPI(title="Surfing Weights gateway", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.settings = settings
    app.state.keys = KeyChecker(settings.api_keys)
    app.state.counters = counters
    app.add_exception_handler(ApiError, api_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, http_error)  # type: ignore[arg-type]
    app.add_exception_handler(redis.exceptions.RedisError, known_failure)
    app.add_exception_handler(SurfingError, known_failure)
    app.add_exception_handler(Exception, known_failure)  # a bug: 500 in OpenAI's shape, logged
    app.include_router(probes)
    app.include_router(openai_routes)
    app.include_router(page_routes)
    # the last added runs first: the access log sees every answer, the guard's refusals too
    app.add_middleware(
        Guard, keys=app.state.keys, allowed_origins=parse_origins(settings.gateway_allowed_origins)
    )
    app.add_middleware(AccessLog, counters=counters)
    return app


async def closed(what: str, close: Callable[[], Awaitable[object]]) -> None:
    """Await one step of the shutdown for at most :data:`CLOSE_STEP_S`; a step that takes
    longer is left, and the log says which (the process is about to exit)."""
    try:
        await asyncio.wait_for(close(), CLOSE_STEP_S)
    except TimeoutError:
        log.warning("shutdown: closing %s took more than %g s; left", what, CLOSE_STEP_S)


async def api_error(request: Request, exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    error = ApiError(exc.status_code, str(exc.detail), "invalid_request_error", None)
    return await api_error(request, error)


async def known_failure(request: Request, exc: Exception) -> JSONResponse:
    error = error_from_exception(exc)
    if error.status >= 500:  # the client sees the kind only; the log has the whole story
        log.error(
            "%s %s: %s: %s",
            request.method,
            request.url.path[:200],
            type(exc).__name__,
            exc,
            exc_info=error.status == 500,
        )
    return await api_error(request, error)
