"""Importing ``workers`` reads no settings, touches no server and leaves arq as it is; the
worker settings are built when arq starts a worker."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_python(code: str, env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    return proc, time.monotonic() - started


def test_import_workers_with_redis_closed_exits_at_once() -> None:
    env = {"SW_REDIS_URL": f"redis://127.0.0.1:{closed_port()}/0"}
    proc, took_s = run_python("import workers; print(workers.Settings)", env)
    assert proc.returncode == 0, proc.stderr
    assert "inference node" in proc.stdout
    assert took_s < 10


def test_import_does_not_read_settings_or_patch_arq() -> None:
    """An unknown SW_* name is an error when a worker starts, not when it is imported."""
    code = (
        "import workers, workers.node, workers.jobs.consumer, workers.chunks.loader\n"
        "from workers.arq_compat import redis_outages_tolerated\n"
        "assert not redis_outages_tolerated(), 'arq patched at import'\n"
        "print('imported')\n"
        "try:\n"
        "    dict(workers.LoaderSettings)\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    proc, _ = run_python(code, {"SW_NO_SUCH_SETTING": "1"})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "imported"
    assert "SW_NO_SUCH_SETTING" in lines[1]


def test_worker_settings_are_built_when_arq_reads_them() -> None:
    """arq reads a dict of Worker arguments; building them adapts arq for outages."""
    env = {"SW_REDIS_URL": f"redis://127.0.0.1:{closed_port()}/0", "SW_KEY_PREFIX": "lay"}
    code = (
        "import workers\n"
        "from arq.worker import get_kwargs\n"
        "from workers.arq_compat import redis_outages_tolerated\n"
        "kwargs = get_kwargs(workers.Settings)\n"
        "print(kwargs['queue_name'], redis_outages_tolerated(), 'on_startup' in kwargs)\n"
        "print(workers.Settings)\n"
    )
    proc, _ = run_python(code, env)
    assert proc.returncode == 0, proc.stderr
    first, second = proc.stdout.splitlines()
    assert first == "lay:arq:loads True True"
    assert "built" in second
