"""Process-level harness of the reliability suite: real workers, Redis, S3 and a load.

- :class:`WorkerProcess` -- ``python -m arq workers.Settings`` (or ``LoaderSettings``) as a
  child process with ``SW_*`` variables; SIGKILL, SIGTERM, restart, RSS from ``/proc``.
- :class:`StoppableS3` -- moto's S3 server on a fixed loopback port that can be stopped
  and started again (its objects live in this process, so they survive the outage).
- :class:`LoadGenerator` -- a steady job stream through the real :class:`~producer.Producer`;
  a submit that fails (Redis away) is counted as refused, not as produced.
- :func:`wait_until` -- poll with a deadline; the only way the suite waits for something.

What the tests read back from Redis (job outcomes, counters, executions) is in
:mod:`tests.chaos.observe`.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from producer import Producer
from sw_core.keys import Keys
from sw_core.local.redis_server import free_port
from sw_core.settings import Settings
from tests.worker_processes import settings_env as settings_env
from tests.worker_processes import worker_env as worker_env

REPO = Path(__file__).resolve().parents[2]

#: Environment variable that turns on the long versions (``make chaos`` sets it).
LONG_ENV = "CHAOS_LONG"


def chaos_long() -> bool:
    """Whether the long versions of the scenarios run (``CHAOS_LONG=1``)."""
    return os.environ.get(LONG_ENV, "").strip().lower() in ("1", "true", "yes", "on")


async def wait_until(
    check: Callable[[], bool | Awaitable[bool]],
    timeout_s: float,
    what: str,
    every_s: float = 0.05,
) -> float:
    """Poll ``check`` until it is true; returns the seconds it took.

    Raises:
        AssertionError: still false after ``timeout_s`` (the message names ``what``).
    """
    start = time.monotonic()
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return time.monotonic() - start
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        await asyncio.sleep(every_s)


# ---------------------------------------------------------------------------- settings
def chaos_settings(redis_url: str, **overrides: Any) -> Settings:
    """Settings with short claims, polls and retry delays (no ``SW_*`` from the environment)."""
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "claim_idle_ms": 1500,
        "poll_block_ms": 100,
        "batch_wait_ms": 5,
        "max_batch_size": 4,
        "retry_initial_delay_s": 0.2,
        "retry_max_delay_s": 2.0,
        "retry_jitter": 0.1,
        "heartbeat_interval_s": 0.5,
        "heartbeat_ttl_s": 3,
        "shutdown_grace_s": 10,
        "timeout_seconds": 5,
        "cache_size_mb": 64,
    }
    values.update(overrides)
    return Settings.from_env({}, **values)


# ---------------------------------------------------------------------------- processes
#: ``python -m arq SETTINGS`` that first asks Linux to SIGKILL it when its parent (the test
#: process) dies, so a killed test run leaves no worker behind (set in the child itself:
#: no ``preexec_fn`` in a process with threads). Linux ties this to the thread that started
#: the child: start workers from the event loop's thread, never from ``to_thread``.
_ARQ_MAIN = (
    "import ctypes, runpy, signal, sys\n"
    "if sys.platform.startswith('linux'):\n"
    "    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG\n"
    "sys.argv = ['arq', *sys.argv[1:]]\n"
    "runpy.run_module('arq', run_name='__main__', alter_sys=True)\n"
)


class WorkerProcess:
    """One ``python -m arq <settings_path>`` child (see :data:`_ARQ_MAIN`) in its own
    process group.

    Args:
        name: the worker's consumer name (``SW_WORKER_NAME``); a restart keeps it, so the
            new process takes back its own pending entries first.
        env: the full environment (see :func:`worker_env`).
        log_dir: where ``<name>.log`` collects stdout and stderr (appended across restarts).
        settings_path: ``workers.Settings`` (inference node) or ``workers.LoaderSettings``.
    """

    def __init__(
        self,
        name: str,
        env: dict[str, str],
        log_dir: Path,
        settings_path: str = "workers.Settings",
    ) -> None:
        self.name = name
        self.env = {**env, "SW_WORKER_NAME": name}
        self.log_path = Path(log_dir) / f"{name}.log"
        self.settings_path = settings_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> WorkerProcess:
        with self.log_path.open("ab") as log:
            log.write(f"\n===== start {self.starts + 1} at {time.time():.3f}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _ARQ_MAIN, self.settings_path],
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.starts += 1
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"worker {self.name} was never started"
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def kill(self) -> float:
        """SIGKILL the process and reap it; returns the wall-clock time of the kill."""
        assert self.proc is not None
        at = time.time()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        return at

    def terminate(self) -> float:
        """Send SIGTERM (arq drains); returns the wall-clock time. Does not wait."""
        assert self.proc is not None
        at = time.time()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return at

    def wait(self, timeout_s: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout_s)

    def stop(self, timeout_s: float = 20) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout_s``; None if it was never started."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)

    def restart(self) -> WorkerProcess:
        if self.alive:
            self.kill()
        return self.start()

    def _status_kib(self, field_name: str) -> int:
        text = Path(f"/proc/{self.pid}/status").read_text()
        for line in text.splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
        raise AssertionError(f"/proc/{self.pid}/status has no {field_name}")

    def rss_kib(self) -> int:
        """Resident memory now (``VmRSS``), KiB."""
        return self._status_kib("VmRSS")

    def peak_rss_kib(self) -> int:
        """Highest resident memory so far (``VmHWM``), KiB."""
        return self._status_kib("VmHWM")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class Cluster:
    """Named worker processes; :meth:`close` kills whatever is left."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = Path(log_dir)
        self.workers: dict[str, WorkerProcess] = {}

    def add(
        self, name: str, env: dict[str, str], settings_path: str = "workers.Settings"
    ) -> WorkerProcess:
        worker = WorkerProcess(name, env, self.log_dir, settings_path)
        self.workers[name] = worker
        return worker.start()

    def __getitem__(self, name: str) -> WorkerProcess:
        return self.workers[name]

    def __iter__(self) -> Iterator[WorkerProcess]:
        return iter(list(self.workers.values()))

    async def wait_registered(
        self,
        redis: aioredis.Redis,
        keys: Keys,
        timeout_s: float,
        names: list[str] | None = None,
    ) -> float:
        """Until every worker (or those named) has a heartbeat hash: it finished its start-up.

        Raises:
            AssertionError: one of them exited (with its log), or the deadline passed.
        """
        chosen = [self.workers[n] for n in names] if names is not None else list(self)

        async def up() -> bool:
            for worker in chosen:
                if not worker.alive:
                    raise AssertionError(
                        f"worker {worker.name} exited with {worker.returncode}:\n"
                        + worker.log_text()[-3000:]
                    )
                if not await redis.exists(keys.worker(worker.name)):
                    return False
            return True

        return await wait_until(up, timeout_s, "every worker to register its heartbeat", 0.1)

    def close(self) -> None:
        for worker in self:
            if worker.alive:
                worker.kill()

    def logs(self, tail_chars: int = 4000) -> str:
        return "\n".join(f"--- {w.name}\n{w.log_text()[-tail_chars:]}" for w in self)


# ---------------------------------------------------------------------------- S3
class StoppableS3:
    """moto's S3 server on one loopback port, stopped and started at will.

    moto keeps buckets and objects in this process, so a stop is an outage of the
    endpoint, not a loss of data; :meth:`start` serves the same objects again.
    """

    access_key = "testing"
    secret_key = "testing"
    region = "us-east-1"

    def __init__(self) -> None:
        os.environ.setdefault("AWS_ACCESS_KEY_ID", self.access_key)
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", self.secret_key)
        self.port = free_port()
        self._server: Any = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> StoppableS3:
        from moto.server import ThreadedMotoServer

        if self._server is None:
            server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
            server.start()
            self._server = server
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def client(self) -> Any:  # -> minio.Minio
        from minio import Minio

        return Minio(
            self.endpoint,
            access_key=self.access_key,
            secret_key=self.secret_key,
            secure=False,
            region=self.region,
        )

    def settings_overrides(self) -> dict[str, Any]:
        """The S3 settings that point at this server."""
        return {
            "s3_endpoint": self.endpoint,
            "s3_access_key": self.access_key,
            "s3_secret_key": self.secret_key,
            "s3_region": self.region,
            "s3_secure": False,
        }


# ---------------------------------------------------------------------------- load
@dataclass
class LoadGenerator:
    """Submits jobs at ``rate_per_s`` until stopped, through one :class:`Producer`.

    A submit that raises (Redis away, connection killed) is counted in ``refused`` and the
    generator carries on: the caller was told, so it is not a lost job. ``ids`` holds only
    the jobs whose submit returned.
    """

    settings: Settings
    rate_per_s: float = 20.0
    model: str = "tiny"
    task: str = "embed"
    text: str = "chaos"
    #: Inputs of job ``n`` (default: one text ``"<text> <n>"``).
    make_inputs: Callable[[int], list[Any]] | None = None
    ids: list[str] = field(default_factory=list)
    submitted_at: dict[str, float] = field(default_factory=dict)
    refused: int = 0
    refusals: list[str] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    producer: Producer | None = None

    async def __aenter__(self) -> LoadGenerator:
        self.producer = Producer(settings=self.settings)
        self._task = asyncio.create_task(self._run(), name="chaos-load")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
        if self.producer is not None:
            await self.producer.close()

    async def submit_one(self) -> str | None:
        assert self.producer is not None
        n = len(self.ids) + self.refused
        inputs = self.make_inputs(n) if self.make_inputs else [f"{self.text} {n}"]
        try:
            job_id = await self.producer.submit(self.model, self.task, inputs)
        except Exception as exc:
            self.refused += 1
            if len(self.refusals) < 20:
                self.refusals.append(f"{type(exc).__name__}: {exc}")
            return None
        self.ids.append(job_id)
        self.submitted_at[job_id] = time.time()
        return job_id

    async def _run(self) -> None:
        period_s = 1.0 / self.rate_per_s
        next_at = time.monotonic()
        while not self._stop.is_set():
            await self.submit_one()
            next_at += period_s
            delay_s = next_at - time.monotonic()
            if delay_s < -1.0:  # far behind (Redis was away): do not burst to catch up
                next_at = time.monotonic()
                delay_s = 0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), max(delay_s, 0))

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task
            self._task = None
