"""The gateway's shutdown: each cleanup step is bounded, and a shutdown that hangs anyway ends
at its deadline with the stacks of what held it (a real uvicorn server in a child process,
stopped with SIGTERM)."""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import sys
import textwrap
import time

import httpx
import pytest

from gateway import app as gateway_app
from sw_core.local.redis_server import free_port
from tests.support.processes import REPO

APP = textwrap.dedent(
    """
    import asyncio, contextlib, sys
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from gateway.server import bounded_server

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        if sys.argv[2] == "hang":
            await asyncio.sleep(3600)  # a cleanup that never ends

    async def ok(request):
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/", ok)], lifespan=lifespan)
    config = uvicorn.Config(app, port=int(sys.argv[1]), log_level="warning")
    bounded_server(config, deadline_s=2.0).run()
    """
)


def run_and_stop(mode: str) -> tuple[int, str, float]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", APP, str(port), mode],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/", timeout=1).text == "ok":
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "server never answered"
            time.sleep(0.1)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        status = proc.wait(20)
        took_s = time.monotonic() - started
        assert proc.stderr is not None
        return status, proc.stderr.read().decode(errors="replace"), took_s
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_hanging_shutdown_ends_at_its_deadline_with_the_stacks() -> None:
    status, stderr, took_s = run_and_stop("hang")
    assert status == 1, stderr
    assert 2.0 <= took_s < 10, took_s
    assert "still shutting down 2 s after the signal" in stderr, stderr
    assert "Thread 0x" in stderr and "in lifespan" in stderr, stderr  # threads, then tasks


def test_a_clean_shutdown_ends_by_the_signal_as_before() -> None:
    status, stderr, took_s = run_and_stop("clean")
    assert status == -signal.SIGTERM, stderr
    assert took_s < 2.0 and "still shutting down" not in stderr


async def test_a_cleanup_step_that_hangs_is_left_and_named(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(gateway_app, "CLOSE_STEP_S", 0.2)
    done: list[str] = []

    async def quick() -> None:
        done.append("quick")

    started = asyncio.get_running_loop().time()
    with caplog.at_level(logging.WARNING, logger="gateway"):
        await gateway_app.closed("the stuck client", lambda: asyncio.sleep(3600))
        await gateway_app.closed("the quick one", quick)
    assert asyncio.get_running_loop().time() - started < 2
    assert done == ["quick"]
    assert "closing the stuck client took more than 0.2 s" in caplog.text
    assert "the quick one" not in caplog.text
