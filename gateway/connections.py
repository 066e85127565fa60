"""uvicorn's HTTP/1.1 protocol with the two bounds it lacks: a header-read timeout and a
connection cap (a slowloris client that opens connections and never finishes a request).

uvicorn arms its keep-alive timer only after an answer, and its ``limit_concurrency`` is
judged only once a request's headers are complete, so connections that never send a full
request stay open for ever. :func:`guarded_protocol` makes a subclass of its h11 protocol
that closes a connection whose request headers are not complete ``read_timeout_s`` after it
opened (or after its previous answer), and closes a new connection at once while
``max_connections`` are open.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)


def guarded_protocol(read_timeout_s: float, max_connections: int) -> type[H11Protocol]:
    """An :class:`H11Protocol` subclass with these bounds (uvicorn's ``http=`` argument)."""

    class GuardedH11Protocol(H11Protocol):
        refused = 0
        timed_out = 0

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._head_timer: asyncio.TimerHandle | None = None
            if len(self.connections) > max_connections:
                GuardedH11Protocol.refused += 1
                if GuardedH11Protocol.refused in (1, 100, 10_000):
                    log.warning(
                        "%d connections open (SW_GATEWAY_MAX_CONNECTIONS=%d): new ones are "
                        "closed at once (%d so far)",
                        len(self.connections) - 1,
                        max_connections,
                        GuardedH11Protocol.refused,
                    )
                transport.close()
                return
            self._wait_for_head()

        def _wait_for_head(self) -> None:
            self._stop_head_timer()
            self._head_timer = self.loop.call_later(read_timeout_s, self._head_too_slow)

        def _stop_head_timer(self) -> None:
            timer = getattr(self, "_head_timer", None)
            if timer is not None:
                timer.cancel()
                self._head_timer = None

        def _head_too_slow(self) -> None:
            self._head_timer = None
            if not self.transport.is_closing():
                GuardedH11Protocol.timed_out += 1
                self.transport.close()

        def handle_events(self) -> None:
            super().handle_events()
            if self.conn.their_state is not h11.IDLE:  # a request's headers are complete
                self._stop_head_timer()

        def on_response_complete(self) -> None:
            if not self.transport.is_closing():
                self._wait_for_head()  # the next request's headers get the same time
            super().on_response_complete()  # (handles a pipelined request: may stop it again)

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_head_timer()
            super().connection_lost(exc)

    return GuardedH11Protocol


def uvicorn_options(settings: Any) -> dict[str, Any]:
    """The uvicorn.Config keywords of the gateway's connection bounds."""
    return {
        "http": guarded_protocol(settings.gateway_read_timeout_s, settings.gateway_max_connections),
        "timeout_keep_alive": settings.gateway_idle_timeout_s,
        "h11_max_incomplete_event_size": 16 * 1024,
    }
