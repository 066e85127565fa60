"""``sw serve``: the gateway on uvicorn, refusing to leave loopback without API keys, with
bounded connections (:mod:`gateway.connections`), one access-log line per request and a
bounded shutdown (:func:`bounded_server`)."""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import ipaddress
import logging
import os
import sys
import threading
from types import FrameType
from typing import TYPE_CHECKING

from sw_core.exceptions import ConfigError
from sw_core.settings import Settings, redact_url

if TYPE_CHECKING:
    import uvicorn

log = logging.getLogger(__name__)
LOOPBACK_NAMES = ("localhost",)
#: Seconds uvicorn waits for open requests to finish once told to stop.
GRACEFUL_SHUTDOWN_S = 5
#: Seconds after SIGTERM/SIGINT by which the gateway is gone, whatever its shutdown waits on.
SHUTDOWN_DEADLINE_S = 12.0


def bounded_server(
    config: uvicorn.Config, deadline_s: float = SHUTDOWN_DEADLINE_S
) -> uvicorn.Server:
    """A uvicorn server that, once told to stop, is gone within ``deadline_s``: past it, the
    stacks of every thread and of every asyncio task go to stderr (the operator's log says
    what held it) and the process exits with status 1. uvicorn bounds the wait for open
    requests, not the application's own shutdown."""
    import uvicorn

    class BoundedServer(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if not self.should_exit:
                _arm_watchdog(deadline_s)
            super().handle_exit(sig, frame)

    return BoundedServer(config)


def _arm_watchdog(deadline_s: float) -> None:
    """Dump stacks and exit ``deadline_s`` from now (a Python timer that can name the asyncio
    tasks; faulthandler's C timer a little later, in case the interpreter itself is stuck)."""
    try:
        loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        loop = None

    def fire() -> None:
        print(
            f"sw serve: still shutting down {deadline_s:g} s after the signal; its threads "
            "and tasks:",
            file=sys.stderr,
            flush=True,
        )
        faulthandler.dump_traceback(sys.stderr, all_threads=True)
        if loop is not None:
            with contextlib.suppress(Exception):  # the loop's thread may change the set
                for task in list(asyncio.all_tasks(loop)):
                    print(f"Task {task.get_name()}:", *awaiting(task), sep="\n", file=sys.stderr)
        sys.stderr.flush()
        os._exit(1)

    timer = threading.Timer(deadline_s, fire)
    timer.daemon = True
    timer.start()
    faulthandler.dump_traceback_later(deadline_s + 5, exit=True)


def awaiting(task: asyncio.Task[object]) -> list[str]:
    """Where a suspended task waits: each coroutine it awaits, outermost first (Python 3.11
    gives only a task's outermost frame)."""
    lines: list[str] = []
    awaited: object = task.get_coro()
    while awaited is not None:
        frame = next(
            (f for a in ("cr_frame", "gi_frame", "ag_frame") if (f := getattr(awaited, a, None))),
            None,
        )
        if frame is not None:
            code = frame.f_code
            lines.append(f'  File "{code.co_filename}", line {frame.f_lineno}, in {code.co_name}')
        awaited = next(
            (
                w
                for a in ("cr_await", "gi_yieldfrom", "ag_await")
                if (w := getattr(awaited, a, None))
            ),
            None,
        )
    return lines


def is_loopback(host: str) -> bool:
    """``127.0.0.1``, ``::1``, ``localhost`` ... (``0.0.0.0`` and names are not)."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(settings: Settings, host: str) -> str:
    """The start-up line about keys; refuses a non-loopback host without keys.

    Raises:
        ConfigError: no ``SW_API_KEYS`` and ``host`` is not a loopback address.
    """
    from gateway.auth import KeyChecker

    if KeyChecker(settings.api_keys).enabled:
        return "API keys required (SW_API_KEYS)"
    if not is_loopback(host):
        raise ConfigError(
            f"refusing to listen on {host} without API keys: set SW_API_KEYS, or use "
            "--host 127.0.0.1"
        )
    return "no SW_API_KEYS: listening on loopback only, no key required"


def serve(settings: Settings, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the gateway until SIGINT/SIGTERM (blocking)."""
    import uvicorn

    from gateway.app import create_app
    from gateway.connections import uvicorn_options

    note = check_bind(settings, host)
    print(
        f"sw serve: http://{host}:{port}/ (Redis {redact_url(settings.redis_url)}); {note}",
        file=sys.stderr,
        flush=True,
    )
    access = logging.getLogger("gateway.access")
    if access.level == logging.NOTSET:
        access.setLevel(logging.INFO)
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = uvicorn.Config(
        create_app(settings),
        host=host,
        port=port,
        log_level="warning",
        access_log=False,  # ours (gateway.access) has the model, tokens and key id
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        **uvicorn_options(settings),
    )
    bounded_server(config).run()
    faulthandler.cancel_dump_traceback_later()
