"""Who may ask: API keys before routing, and no cross-origin or foreign-Host requests
(ASGI middleware, inside :class:`~gateway.access.AccessLog`).

- **Keys first.** Every path under ``/v1``, ``/api/`` and ``/metrics`` needs a key when
  ``SW_API_KEYS`` is set -- checked before routing, so an unknown path answers 401 like a
  known one, and nothing about the routes is learnt without a key.
- **Host.** Without keys the gateway serves loopback only, and answers only requests whose
  ``Host`` is a loopback name (``localhost``, ``*.localhost``, ``127.0.0.1``, ``[::1]``):
  a page on a rebinding domain (DNS rebinding) cannot read it.
- **Origin.** A browser request from another origin (an ``Origin`` header that is not this
  gateway's own, or ``Sec-Fetch-Site: cross-site`` on anything but a page navigation) is
  refused with 403 -- any web page could otherwise make a visitor's browser submit jobs --
  unless the origin is listed in ``SW_GATEWAY_ALLOWED_ORIGINS``; those get CORS headers
  and their preflight ``OPTIONS`` answered.
"""

from __future__ import annotations

from typing import Any

from starlette.datastructures import Headers
from starlette.responses import JSONResponse, Response

from gateway.access import access_note
from gateway.auth import KeyChecker
from gateway.errors import ApiError, forbidden

#: Path prefixes that need a key when keys are configured.
PROTECTED_PREFIXES = ("/v1/", "/api/")
PROTECTED_PATHS = frozenset({"/v1", "/metrics"})
#: What an allowed origin may send.
CORS_METHODS = "GET, POST, OPTIONS"
CORS_HEADERS = "authorization, content-type"


def parse_origins(text: str) -> frozenset[str]:
    """``SW_GATEWAY_ALLOWED_ORIGINS`` (comma-separated) as normalized origins."""
    return frozenset(o.strip().lower().rstrip("/") for o in text.split(",") if o.strip())


def is_protected(path: str) -> bool:
    return path in PROTECTED_PATHS or path.startswith(PROTECTED_PREFIXES)


def loopback_name(host_header: str) -> bool:
    """Whether a ``Host`` header names this machine's loopback (any port)."""
    from gateway.server import is_loopback

    host = host_header.strip().lower()
    if host.startswith("["):
        name = host[1 : host.find("]")] if "]" in host else host[1:]
    else:
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    name = name.rstrip(".")
    return name == "localhost" or name.endswith(".localhost") or is_loopback(name)


class Guard:
    """ASGI middleware: the host, origin and key checks above, then the application."""

    def __init__(self, app: Any, keys: KeyChecker, allowed_origins: frozenset[str]) -> None:
        self.app = app
        self.keys = keys
        self.allowed = allowed_origins

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        try:
            cross_origin = self._check_origin(scope, headers)
            if not self.keys.enabled:
                self._check_host(headers)
            if cross_origin and scope["method"] == "OPTIONS":
                await self._preflight(cross_origin)(scope, receive, send)
                return
            if is_protected(scope["path"]):
                access_note(scope)["key"] = self.keys.check(headers.get("authorization"))
        except ApiError as exc:
            response = JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)
            await response(scope, receive, send)
            return
        if cross_origin is None:
            await self.app(scope, receive, send)
            return

        async def with_cors(message: Any) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], *_cors_headers(cross_origin)]
            await send(message)

        await self.app(scope, receive, with_cors)

    def _check_origin(self, scope: Any, headers: Headers) -> str | None:
        """None for a same-origin or non-browser request, the origin for an allowed
        cross-origin one.

        Raises:
            ApiError: 403 for any other cross-origin request.
        """
        origin = headers.get("origin")
        host = (headers.get("host") or "").lower()
        if origin is not None:
            normalized = origin.strip().lower().rstrip("/")
            if normalized.partition("://")[2] == host and host:
                return None
            if normalized in self.allowed or "*" in self.allowed:
                return origin
            raise forbidden(
                f"cross-origin requests from {origin[:100]!r} are refused: list the origin in "
                "SW_GATEWAY_ALLOWED_ORIGINS to allow it",
                "origin_not_allowed",
            )
        site = headers.get("sec-fetch-site")
        navigation = headers.get("sec-fetch-mode") == "navigate" and scope["method"] == "GET"
        if site == "cross-site" and not navigation and "*" not in self.allowed:
            raise forbidden(
                "cross-site requests are refused (Sec-Fetch-Site: cross-site): list the page's "
                "origin in SW_GATEWAY_ALLOWED_ORIGINS to allow it",
                "origin_not_allowed",
            )
        return None

    def _check_host(self, headers: Headers) -> None:
        host = headers.get("host")
        if host is not None and not loopback_name(host):
            raise forbidden(
                f"Host {host[:100]!r} is not a loopback name: without SW_API_KEYS this "
                "gateway answers only requests to localhost, 127.0.0.1 or [::1]",
                "host_not_allowed",
            )

    def _preflight(self, origin: str) -> Response:
        headers = dict(_cors_headers(origin, as_text=True))
        headers["Access-Control-Allow-Methods"] = CORS_METHODS
        headers["Access-Control-Allow-Headers"] = CORS_HEADERS
        headers["Access-Control-Max-Age"] = "600"
        return Response(status_code=204, headers=headers)


def _cors_headers(origin: str, *, as_text: bool = False) -> list[Any]:
    pairs = [
        ("Access-Control-Allow-Origin", origin),
        ("Access-Control-Expose-Headers", "Retry-After"),
        ("Vary", "Origin"),
    ]
    if as_text:
        return pairs
    return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in pairs]
