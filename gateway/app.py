"""The FastAPI application: OpenAI's routes, probes, the status page and its data.

Routes: ``POST /v1/embeddings``, ``POST /v1/chat/completions``, ``POST /v1/completions``,
``GET /v1/models`` (and ``/v1/models/{id}``), ``GET /healthz`` (the process answers),
``GET /readyz`` (Redis answers and an inference worker is alive), ``GET /`` (the status page
and playground), ``GET /api/status`` (the page's numbers). With ``SW_API_KEYS`` set every
``/v1`` route and ``/api/status`` need ``Authorization: Bearer KEY``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

import redis.exceptions
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.auth import KeyChecker
from gateway.errors import ApiError, bad_request, error_from_exception, unknown_model
from gateway.jobs import JobBackend
from gateway.requests import GenerateCall, parse_chat, parse_completion, parse_embeddings
from gateway.responses import model_card, model_list
from gateway.service import Gateway
from gateway.status import GatewayCounters, StatusSource
from producer import Producer
from sw_core.exceptions import SurfingError
from sw_core.settings import Settings

#: Headers of an SSE response (no caching, no proxy buffering).
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _static(name: str) -> str:
    return resources.files("gateway").joinpath("static", name).read_text()


async def read_json(request: Request, limit_bytes: int) -> Any:
    """The JSON body, refused with 413 past ``limit_bytes`` (before reading it all)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit_bytes:
        raise _too_large(int(declared), limit_bytes)
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > limit_bytes:
            raise _too_large(len(body), limit_bytes)
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise bad_request("the request body is not valid JSON") from None


def _too_large(size: int, limit: int) -> ApiError:
    return ApiError(
        413,
        f"The request body is {size} bytes; at most {limit} are accepted (SW_MAX_PAYLOAD_BYTES).",
        "invalid_request_error",
        "request_too_large",
    )


class CountStatuses:
    """ASGI middleware: counts the status of every ``/v1`` response as it starts."""

    def __init__(self, app: Any, counters: GatewayCounters) -> None:
        self.app = app
        self.counters = counters

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return

        async def counted(message: Any) -> None:
            if message["type"] == "http.response.start":
                self.counters.count(scope["path"], message["status"])
            await send(message)

        await self.app(scope, receive, counted)


def create_app(settings: Settings, producer: Producer | None = None) -> FastAPI:
    """The gateway application on ``settings`` (its Redis, keys, limits)."""
    counters = GatewayCounters()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        backend = JobBackend(producer or Producer(settings=settings), settings)
        app.state.gateway = Gateway(backend, settings, counters)
        app.state.status = StatusSource(settings)
        try:
            yield
        finally:
            await app.state.gateway.close()
            await app.state.status.close()

    app = FastAPI(title="Surfing Weights gateway", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.settings = settings
    app.state.keys = KeyChecker(settings.api_keys)
    app.add_middleware(CountStatuses, counters=counters)
    # Starlette types a handler as taking any Exception, not the class it is registered for
    app.add_exception_handler(ApiError, api_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, http_error)  # type: ignore[arg-type]
    app.add_exception_handler(redis.exceptions.RedisError, known_failure)
    app.add_exception_handler(SurfingError, known_failure)
    app.add_exception_handler(Exception, known_failure)  # a bug: 500 in OpenAI's shape, logged
    app.include_router(probes)
    app.include_router(openai_routes)
    app.include_router(page_routes)
    return app


# ---------------------------------------------------------------------------- errors
async def api_error(request: Request, exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    error = ApiError(exc.status_code, str(exc.detail), "invalid_request_error", None)
    return await api_error(request, error)


async def known_failure(request: Request, exc: Exception) -> JSONResponse:
    return await api_error(request, error_from_exception(exc))


async def authorized(request: Request) -> None:
    """The API key check of a route (a 401 :class:`ApiError` when it fails)."""
    request.app.state.keys.check(request.headers.get("authorization"))


def gateway_of(request: Request) -> Gateway:
    return request.app.state.gateway


# ---------------------------------------------------------------------------- routes
probes = APIRouter()
openai_routes = APIRouter(prefix="/v1", dependencies=[Depends(authorized)])
page_routes = APIRouter()


@probes.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@probes.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    backend = gateway_of(request).backend
    try:
        await backend.producer.redis.ping()
        live = await backend.live_inference_workers()
    except Exception as exc:
        return JSONResponse({"ready": False, "reason": f"Redis: {exc}"}, status_code=503)
    if live == 0:
        return JSONResponse(
            {"ready": False, "reason": "no inference worker alive"}, status_code=503
        )
    return JSONResponse({"ready": True, "inference_workers": live})


@openai_routes.get("/models")
async def models(request: Request) -> dict[str, Any]:
    backend = gateway_of(request).backend
    return model_list(list(await backend.models()), await _synthetic(backend))


@openai_routes.get("/models/{name:path}")
async def model(request: Request, name: str) -> dict[str, Any]:
    backend = gateway_of(request).backend
    if not await backend.has_model(name):
        raise unknown_model(name)
    return model_card(name, (await _synthetic(backend)).get(name))


async def _synthetic(backend: Any) -> dict[str, str]:
    """Models of random weights, from a backend that knows them (others know none)."""
    marks = getattr(backend, "synthetic_models", None)
    return await marks() if marks is not None else {}


@openai_routes.post("/embeddings")
async def embeddings(request: Request) -> dict[str, Any]:
    limit = request.app.state.settings.max_payload_bytes
    call = parse_embeddings(await read_json(request, limit))
    return await gateway_of(request).embeddings(call)


@openai_routes.post("/chat/completions", response_model=None)
async def chat(request: Request) -> dict[str, Any] | StreamingResponse:
    call = parse_chat(await read_json(request, request.app.state.settings.max_payload_bytes))
    return await generate(gateway_of(request), call, chat=True)


@openai_routes.post("/completions", response_model=None)
async def completions(request: Request) -> dict[str, Any] | StreamingResponse:
    limit = request.app.state.settings.max_payload_bytes
    call = parse_completion(await read_json(request, limit))
    return await generate(gateway_of(request), call, chat=False)


async def generate(
    gateway: Gateway, call: GenerateCall, *, chat: bool
) -> dict[str, Any] | StreamingResponse:
    """A whole answer, or its Server-Sent Events when the call asks for a stream."""
    if not call.stream:
        return await gateway.generate(call, chat=chat)
    events = await gateway.start_stream(call, chat=chat)
    return StreamingResponse(events, media_type="text/event-stream", headers=SSE_HEADERS)


@page_routes.get("/api/status", dependencies=[Depends(authorized)])
async def status(request: Request) -> dict[str, Any]:
    gateway = gateway_of(request)
    return {
        "models": list(await gateway.backend.models()),
        "cluster": await request.app.state.status.cluster(),
        "gateway": gateway.counters.as_dict(),
        "streaming": "job token streams" if gateway.backend.streams_tokens else "whole answers",
        "keys_required": request.app.state.keys.enabled,
    }


@page_routes.get("/", response_class=HTMLResponse)
async def page() -> HTMLResponse:
    return HTMLResponse(_static("index.html"))


@page_routes.get("/static/{name}")
async def static(name: str) -> Response:
    types = {"app.js": "text/javascript", "style.css": "text/css"}
    if name not in types:
        raise ApiError(404, f"no static file {name!r}", "invalid_request_error", None)
    return Response(_static(name), media_type=types[name])
