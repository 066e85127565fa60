"""A whole deployment on one machine for the serving benchmarks, as an operator runs it:
a private Redis, a chunk-loader worker, an inference worker (``python -m arq ...``) and the
gateway (``sw serve``), each its own process configured by ``SW_*`` variables only.

The model is SmolLM2-135M-Instruct (bundled), chunked once into a folder that the workers
know by ``SW_MODELS``; the inference worker preloads it (``SW_PRELOAD_MODELS``), so the chunk
cache is filled by the loader before the first request, as in production.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from sw_core.local.redis_server import RedisServer, free_port

REPO = Path(__file__).resolve().parents[1]

#: ``python -m arq SETTINGS``, asking Linux to SIGKILL it when this process dies, so a killed
#: benchmark leaves no worker behind (set in the child itself).
_ARQ_MAIN = (
    "import ctypes, runpy, signal, sys\n"
    "if sys.platform.startswith('linux'):\n"
    "    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)\n"
    "sys.argv = ['arq', *sys.argv[1:]]\n"
    "runpy.run_module('arq', run_name='__main__', alter_sys=True)\n"
)


def chunk_smollm2(folder: Path, dtype: str | None = None) -> tuple[Path, int]:
    """The bundled SmolLM2 chunked (into ``folder``, or the run's shared set: see
    ``bench/smollm2.py``); returns the chunk folder and the weight bytes."""
    from smollm2 import chunk_set  # bench/, beside this script

    found, manifest = chunk_set(folder, dtype)
    return found, manifest.total_bytes


@dataclass
class Deployment:
    """The processes of one deployment; :meth:`stop` ends them (the Redis server last)."""

    env: dict[str, str]
    tmp: Path
    redis: RedisServer
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, name: str, args: list[str]) -> None:
        log = (self.tmp / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(
            [sys.executable, *args],
            cwd=REPO,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def logs(self, tail: int = 3000) -> str:
        return "".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-tail:]}" for p in self.tmp.glob("*.log")
        )

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited {proc.returncode}:\n{self.logs()}")

    def wait_ready(self, timeout_s: float = 600) -> None:
        """Until the gateway's /readyz answers 200 and the worker has preloaded the model."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check_alive()
            log = (self.tmp / "inference.log").read_text(errors="replace")
            if "preloading model" in log:
                raise RuntimeError(f"the worker could not preload the model:\n{self.logs()}")
            with contextlib.suppress(httpx.HTTPError):
                ready = httpx.get(self.url + "/readyz", timeout=5).status_code == 200
                if ready and "preloaded in" in log:
                    return
            time.sleep(0.5)
        raise TimeoutError(f"the deployment was not ready within {timeout_s:g} s:\n{self.logs()}")

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    def rss_mb(self) -> dict[str, float]:
        """Current RSS of every process (the Redis server too), in MB."""
        pids = {name: p.pid for name, p in self.procs.items()}
        if self.redis.process is not None:
            pids["redis-server"] = self.redis.process.pid
        return {name: process_rss_mb(pid) for name, pid in pids.items()}


def process_rss_mb(pid: int, field_name: str = "VmRSS") -> float:
    """``VmRSS`` (or ``VmHWM``, the peak) of a process, in MB (10^6 bytes); 0 if gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024 / 1e6
    except OSError:
        pass
    return 0.0


@contextlib.contextmanager
def deployment(folder: Path, tmp: Path, **settings: object) -> Iterator[Deployment]:
    """Redis, a loader, an inference worker and the gateway serving ``folder`` as
    ``smollm2``; ``settings`` are ``Settings`` fields (``memory_budget_mb=128`` ...), given
    to every process as ``SW_*`` variables. Ready (model preloaded) when it yields."""
    with RedisServer() as redis:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SW_")}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
        env.update(HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", TQDM_DISABLE="1")
        values = {
            "redis_url": redis.url,
            "models": f"smollm2={folder}",
            "preload_models": "smollm2",
            "cache_size_mb": 2048,
            "heartbeat_ttl_s": 30,
            "claim_idle_ms": 600_000,
            **settings,
        }
        env.update({f"SW_{k.upper()}": str(v) for k, v in values.items()})
        dep = Deployment(env, tmp, redis, port=free_port())
        try:
            dep.start("loader", ["-c", _ARQ_MAIN, "workers.LoaderSettings"])
            dep.start("inference", ["-c", _ARQ_MAIN, "workers.Settings"])
            dep.start("gateway", ["-m", "sw_core.cli", "serve", "--port", str(dep.port)])
            dep.wait_ready()
            yield dep
        finally:
            dep.stop()
