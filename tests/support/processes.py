"""The one launcher of worker processes, for the integration and the chaos tests alike.

A worker is a real ``python -m arq workers.Settings`` (or ``workers.LoaderSettings``) child
whose settings come from ``SW_*`` environment variables exactly as an operator's would
(:func:`worker_env`). :class:`WorkerProcess` starts, signals, restarts and measures one;
:class:`Cluster` keeps named ones and kills what is left; :func:`workers` runs some for a
``with`` block.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import redis.asyncio as aioredis

from sw_core.keys import Keys
from sw_core.settings import Secret, Settings
from tests.support.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]

#: Settings paths of the two worker kinds.
SETTINGS_PATHS = {"inference": "workers.Settings", "loader": "workers.LoaderSettings"}


def settings_env(settings: Settings) -> dict[str, str]:
    """``SW_*`` variables for every setting that differs from its default."""
    defaults = Settings()
    env: dict[str, str] = {}
    for name in sorted(Settings.field_names()):
        value = getattr(settings, name)
        if value == getattr(defaults, name) or value is None:
            continue
        if isinstance(value, Secret):
            value = value.reveal()
        elif isinstance(value, bool):
            value = "true" if value else "false"
        env["SW_" + name.upper()] = str(value)
    return env


def worker_env(settings: Settings, **extra: str) -> dict[str, str]:
    """Environment of a worker process: this one without ``SW_*``, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SW_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env["HF_HUB_OFFLINE"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(settings_env(settings))
    env.update(extra)
    return env


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
        env: the worker's settings, or its full environment (see :func:`worker_env`).
        log_path: where stdout and stderr go (appended across restarts).
        settings_path: ``workers.Settings`` (inference node) or ``workers.LoaderSettings``.
        name: the worker's consumer name (``SW_WORKER_NAME``); a restart keeps it, so the
            new process takes back its own pending entries first. Without it the
            environment decides (default: the settings' own).
    """

    def __init__(
        self,
        env: Settings | dict[str, str],
        log_path: Path,
        settings_path: str = "workers.Settings",
        *,
        name: str | None = None,
    ) -> None:
        self.env = worker_env(env) if isinstance(env, Settings) else dict(env)
        if name is not None:
            self.env["SW_WORKER_NAME"] = name
        self.name = name or Path(log_path).stem
        self.log_path = Path(log_path)
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

    def send_signal(self, sig: int) -> float:
        """Send ``sig`` if the process still runs; returns the wall-clock time. Does not wait."""
        assert self.proc is not None, f"worker {self.name} was never started"
        at = time.time()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return at

    def kill(self) -> float:
        """SIGKILL the process and reap it; returns the wall-clock time of the kill."""
        at = self.send_signal(signal.SIGKILL)
        self.wait(30)
        return at

    def terminate(self) -> float:
        """Send SIGTERM (arq drains); returns the wall-clock time. Does not wait."""
        return self.send_signal(signal.SIGTERM)

    def wait(self, timeout_s: float) -> int:
        assert self.proc is not None, f"worker {self.name} was never started"
        return self.proc.wait(timeout_s)

    def stop(self, timeout_s: float = 20) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout_s``; the exit status (None if never started)."""
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


def start_worker(
    env: Settings | dict[str, str],
    log_path: Path,
    settings_path: str = "workers.Settings",
    *,
    name: str | None = None,
) -> WorkerProcess:
    """A started :class:`WorkerProcess`."""
    return WorkerProcess(env, log_path, settings_path, name=name).start()


@contextlib.contextmanager
def workers(settings: Settings, log_dir: Path, *kinds: str) -> Iterator[list[WorkerProcess]]:
    """Run worker processes (``"inference"`` or ``"loader"``) for the ``with`` block; their
    logs are ``log_dir/<kind>-<i>.log``."""
    procs = [
        start_worker(settings, log_dir / f"{kind}-{i}.log", SETTINGS_PATHS[kind])
        for i, kind in enumerate(kinds)
    ]
    try:
        yield procs
    finally:
        for proc in procs:
            proc.stop()


def worker_logs(log_dir: Path) -> str:
    """Every worker log of ``log_dir`` (for assertion messages)."""
    return "\n".join(
        f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(log_dir.glob("*.log"))
    )


class Cluster:
    """Named worker processes logging to ``log_dir/<name>.log``; :meth:`close` kills what
    is left."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = Path(log_dir)
        self.workers: dict[str, WorkerProcess] = {}

    def add(
        self, name: str, env: dict[str, str], settings_path: str = "workers.Settings"
    ) -> WorkerProcess:
        worker = WorkerProcess(env, self.log_dir / f"{name}.log", settings_path, name=name)
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
