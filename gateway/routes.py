"""The gateway's routes: OpenAI's API, the probes, ``/metrics`` and the status page.

Keys are checked before routing (:mod:`gateway.guard`); these handlers parse the body (size
and time limits, valid Unicode), hand the request to :class:`~gateway.service.Gateway` and
note the model and tokens for the access log.
"""

from __future__ import annotations

import asyncio
import json
import logging
from importlib import resources
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from gateway.access import access_note
from gateway.errors import ApiError, bad_request, unknown_model
from gateway.metrics import PROMETHEUS_TEXT
from gateway.requests import GenerateCall, parse_chat, parse_completion, parse_embeddings
from gateway.responses import model_list
from gateway.service import Gateway, OpenStream
from gateway.status import MAX_MODELS
from sw_core.exceptions import JobError
from sw_core.pipeline.job_checks import check_unicode

log = logging.getLogger(__name__)
#: Headers of an SSE response (no caching, no proxy buffering).
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
STATIC_TYPES = {
    "app.js": "text/javascript",
    "chat.js": "text/javascript",
    "charts.js": "text/javascript",
    "style.css": "text/css",
}

probes = APIRouter()
openai_routes = APIRouter(prefix="/v1")
page_routes = APIRouter()


def _static(name: str) -> str:
    return resources.files("gateway").joinpath("static", name).read_text()


def gateway_of(request: Request) -> Gateway:
    return request.app.state.gateway


async def read_json(request: Request) -> Any:
    """The JSON body: 413 past ``SW_MAX_PAYLOAD_BYTES`` (before reading it all), 408 when it
    does not arrive within ``SW_GATEWAY_READ_TIMEOUT_S``, 400 when it is not JSON or holds
    text that is not valid Unicode (a lone surrogate such as ``"\\ud800"``)."""
    settings = request.app.state.settings
    limit = settings.max_payload_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(int(declared), limit)
    body = bytearray()
    try:
        async with asyncio.timeout(settings.gateway_read_timeout_s):
            async for part in request.stream():
                body += part
                if len(body) > limit:
                    raise _too_large(len(body), limit)
    except TimeoutError:
        raise ApiError(
            408,
            f"the request body did not arrive within SW_GATEWAY_READ_TIMEOUT_S="
            f"{settings.gateway_read_timeout_s:g} s",
            code="request_timeout",
        ) from None
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        raise bad_request("the request body is not valid JSON") from None
    try:
        check_unicode(value, "body")
    except JobError as exc:
        raise bad_request(str(exc), code="invalid_text") from None
    return value


def _too_large(size: int, limit: int) -> ApiError:
    return ApiError(
        413,
        f"The request body is {size} bytes; at most {limit} are accepted (SW_MAX_PAYLOAD_BYTES).",
        "invalid_request_error",
        "request_too_large",
    )


def until_gone(request: Request) -> Any:
    """A waiter that returns once the client has disconnected (its body was read whole, so
    the next ASGI message is the disconnect)."""

    async def gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    return gone


# ---------------------------------------------------------------------------- probes
@probes.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@probes.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """Ready or not; why (or how many workers) only with a key, or when keys are off."""
    detailed = request.app.state.keys.accepts(request.headers.get("authorization"))
    backend = gateway_of(request).backend
    body: dict[str, Any]
    try:
        await backend.producer.redis.ping()
        live = await backend.live_inference_workers()
    except Exception as exc:
        log.warning("readyz: Redis: %s: %s", type(exc).__name__, exc)
        body = {
            "ready": False,
            "reason": f"the job queue (Redis) cannot be reached ({type(exc).__name__})",
        }
    else:
        if live:
            body = {"ready": True, "inference_workers": live}
        else:
            body = {"ready": False, "reason": "no inference worker alive"}
    if not detailed:
        body = {"ready": body["ready"]}
    return JSONResponse(body, status_code=200 if body["ready"] else 503)


@probes.get("/metrics")
async def metrics(request: Request) -> Response:
    """Prometheus text: requests by route and status, durations, open requests, TTFT."""
    return Response(request.app.state.counters.prometheus(), media_type=PROMETHEUS_TEXT)


# ---------------------------------------------------------------------------- OpenAI
@openai_routes.get("/models")
async def models(request: Request) -> dict[str, Any]:
    gateway = gateway_of(request)
    return model_list(await gateway.model_cards(list(await gateway.backend.models())))


@openai_routes.get("/models/{name:path}")
async def model(request: Request, name: str) -> dict[str, Any]:
    if not await gateway_of(request).backend.has_model(name):
        raise unknown_model(name[:128])
    [card] = await gateway_of(request).model_cards([name])
    return card


@openai_routes.post("/embeddings")
async def embeddings(request: Request) -> dict[str, Any]:
    call = parse_embeddings(await read_json(request))
    note = access_note(request.scope)
    return await gateway_of(request).embeddings(call, note, until_gone(request))


@openai_routes.post("/chat/completions", response_model=None)
async def chat(request: Request) -> dict[str, Any] | StreamingResponse:
    return await generate(request, parse_chat(await read_json(request)), chat=True)


@openai_routes.post("/completions", response_model=None)
async def completions(request: Request) -> dict[str, Any] | StreamingResponse:
    return await generate(request, parse_completion(await read_json(request)), chat=False)


async def generate(
    request: Request, call: GenerateCall, *, chat: bool
) -> dict[str, Any] | StreamingResponse:
    """A whole answer, or its Server-Sent Events when the call asks for a stream."""
    gateway, note = gateway_of(request), access_note(request.scope)
    if not call.stream:
        return await gateway.generate(call, chat=chat, note=note, gone=until_gone(request))
    stream = await gateway.start_stream(call, chat=chat, note=note)
    return ClosingStream(stream)


class ClosingStream(StreamingResponse):
    """An SSE response that closes its :class:`OpenStream` whatever happens, also when the
    client left before the first event was asked for (the events never started)."""

    def __init__(self, stream: OpenStream) -> None:
        super().__init__(stream, media_type="text/event-stream", headers=SSE_HEADERS)
        self.stream = stream

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.stream.close()


# ---------------------------------------------------------------------------- the page
@page_routes.get("/api/status")
async def status(request: Request) -> dict[str, Any]:
    """The page's numbers; every list and map in it has a fixed bound."""
    gateway, state = gateway_of(request), request.app.state
    registered = await gateway.backend.models()
    shown = dict(sorted(registered.items())[:MAX_MODELS])
    return {
        "models": list(shown),
        "models_total": len(registered),
        "model_tasks": {name: await model_tasks(gateway, name, shown[name]) for name in shown},
        "cluster": await state.status.cluster(),
        "gateway": gateway.counters.as_dict(),
        "history": state.history.as_dict(),
        "chunk_map": await state.chunk_map.strips(shown, await state.status.resident_fields()),
        "keys_required": state.keys.enabled,
    }


async def model_tasks(gateway: Gateway, name: str, location: str) -> list[str]:
    """The tasks recorded at registration, else those its manifest says (empty: unknown)."""
    recorded = await gateway.backend.registry.tasks(name)
    if recorded is not None:
        return list(recorded)
    return list((await gateway.tokens.facts(name, location)).tasks)


@page_routes.get("/", response_class=HTMLResponse)
async def page() -> HTMLResponse:
    return HTMLResponse(_static("index.html"))


@page_routes.get("/static/{name}")
async def static(name: str) -> Response:
    if name not in STATIC_TYPES:
        raise ApiError(404, "no such static file", "invalid_request_error", None)
    return Response(_static(name), media_type=STATIC_TYPES[name])
