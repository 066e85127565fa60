"""One access-log line and the route metrics of every request (outermost ASGI middleware).

A line holds the method, the path (cut to :data:`MAX_LOGGED_PATH` characters), the status,
the model, the prompt and completion tokens, the duration and the key id (``key1`` for the
first key of ``SW_API_KEYS``; never the key). Handlers add what they know to
:func:`access_note` (the request's model and tokens); the guard adds the key id.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from gateway.metrics import UNMATCHED, GatewayCounters

log = logging.getLogger("gateway.access")
#: Scope key of the per-request note handlers fill in.
NOTE = "sw.access"
#: Longest path written to the access log (the rest is replaced by ``...``).
MAX_LOGGED_PATH = 200
#: Status logged for a request whose client went away before its answer.
CLIENT_GONE = 499


def access_note(scope: Any) -> dict[str, Any]:
    """The request's note (``model``, ``prompt_tokens``, ``completion_tokens``, ``key``)."""
    return scope.setdefault(NOTE, {})


def route_of(scope: Any) -> str:
    """The template of the route that served the request, or :data:`UNMATCHED`."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED


class AccessLog:
    """ASGI middleware: counts each HTTP request by route template and status, times it,
    and writes its access-log line when its answer has been sent."""

    def __init__(self, app: Any, counters: GatewayCounters) -> None:
        self.app = app
        self.counters = counters

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        note = access_note(scope)
        status = 500  # unless a response starts

        async def watched(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except BaseException:
            status = 500 if status < 400 else status
            raise
        finally:
            if note.get("gone"):
                status = CLIENT_GONE
            duration_s = time.perf_counter() - started
            route = route_of(scope)
            self.counters.count(route, status, scope.get("method", ""), duration_s)
            log.info(line(scope, status, note, duration_s))


def line(scope: Any, status: int, note: dict[str, Any], duration_s: float) -> str:
    """``METHOD PATH STATUS model=M tokens=P+C duration=0.123s key=key1``."""
    tokens = "-"
    if "prompt_tokens" in note or "completion_tokens" in note:
        tokens = f"{note.get('prompt_tokens', 0)}+{note.get('completion_tokens', 0)}"
    return (
        f"{_clean(scope.get('method', '-'), 16)} {_clean(scope.get('path', ''), MAX_LOGGED_PATH)} "
        f"{status} model={_clean(note.get('model') or '-', 128)} "
        f"tokens={tokens} duration={duration_s:.3f}s key={note.get('key') or '-'}"
    )


def _clean(text: Any, limit: int) -> str:
    """``text`` cut to ``limit`` characters, with control characters and spaces escaped (one
    request is one line, whatever a client sends)."""
    text = str(text)
    cut = text[:limit] + ("..." if len(text) > limit else "")
    return cut.encode("unicode_escape").decode("ascii").replace(" ", "\\x20")
