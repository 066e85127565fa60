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
from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.auth import KeyChecker
from gateway.errors import ApiError, bad_request, error_from_exception, unknown_model
from gateway.jobs import JobBackend
from gateway.requests import parse_chat, parse_completion, parse_embeddings
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
    keys = KeyChecker(settings.api_keys)
    counters = GatewayCounters()
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        backend = JobBackend(producer or Producer(settings=settings), settings)
        state["gateway"] = Gateway(backend, settings, counters)
        state["status"] = StatusSource(settings)
        try:
            yield
        finally:
            await state["gateway"].close()
            await state["status"].close()

    app = FastAPI(title="Surfing Weights gateway", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.add_middleware(CountStatuses, counters=counters)

    def gateway() -> Gateway:
        return state["gateway"]

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:

        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        error = ApiError(exc.status_code, str(exc.detail), "invalid_request_error", None)
        return await api_error(request, error)

    @app.exception_handler(redis.exceptions.RedisError)
    @app.exception_handler(SurfingError)
    async def known_failure(request: Request, exc: Exception) -> JSONResponse:
        return await api_error(request, error_from_exception(exc))

    async def authorized(request: Request) -> None:
        keys.check(request.headers.get("authorization"))

    guarded = [Depends(authorized)]

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        backend = gateway().backend
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

    @app.get("/v1/models", dependencies=guarded)
    async def models() -> dict[str, Any]:
        return model_list(list(await gateway().backend.models()))

    @app.get("/v1/models/{name:path}", dependencies=guarded)
    async def model(name: str) -> dict[str, Any]:
        if not await gateway().backend.has_model(name):
            raise unknown_model(name)
        return model_card(name)

    @app.post("/v1/embeddings", dependencies=guarded)
    async def embeddings(request: Request) -> dict[str, Any]:
        call = parse_embeddings(await read_json(request, settings.max_payload_bytes))
        return await gateway().embeddings(call)

    @app.post("/v1/chat/completions", response_model=None, dependencies=guarded)
    async def chat(request: Request) -> dict[str, Any] | StreamingResponse:
        call = parse_chat(await read_json(request, settings.max_payload_bytes))
        return await _generate(call, chat=True)

    @app.post("/v1/completions", response_model=None, dependencies=guarded)
    async def completions(request: Request) -> dict[str, Any] | StreamingResponse:
        call = parse_completion(await read_json(request, settings.max_payload_bytes))
        return await _generate(call, chat=False)

    async def _generate(call: Any, *, chat: bool) -> dict[str, Any] | StreamingResponse:
        if not call.stream:
            return await gateway().generate(call, chat=chat)
        events = await gateway().start_stream(call, chat=chat)
        return StreamingResponse(events, media_type="text/event-stream", headers=SSE_HEADERS)

    @app.get("/api/status", dependencies=guarded)
    async def status() -> dict[str, Any]:
        gw = gateway()
        return {
            "models": list(await gw.backend.models()),
            "cluster": await state["status"].cluster(),
            "gateway": gw.counters.as_dict(),
            "streaming": "job token streams" if gw.backend.streams_tokens else "whole answers",
            "keys_required": keys.enabled,
        }

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse(_static("index.html"))

    @app.get("/static/{name}")
    async def static(name: str) -> Response:
        types = {"app.js": "text/javascript", "style.css": "text/css"}
        if name not in types:
            raise ApiError(404, f"no static file {name!r}", "invalid_request_error", None)
        return Response(_static(name), media_type=types[name])

    return app
