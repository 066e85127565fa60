"""Helpers for the gateway tests: a tiny chat model, gateway and worker processes.

The chat model is a random-init LLaMA (fixed seed) with all-MiniLM-L6-v2's tokenizer and a
small chat template, so chat requests run end to end in well under a second per answer.
The gateway runs as a real ``python -m sw_core.cli serve`` child, its settings given as
``SW_*`` variables exactly as an operator's would be.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from sw_core.local.redis_server import free_port
from sw_core.settings import Settings
from tests.support.processes import REPO, WorkerProcess, start_worker, worker_env

CHAT_TEMPLATE = (
    "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}[assistant] {% endif %}"
)


def build_tiny_chat(folder: Path) -> None:
    """Chunk a 2-layer random LLaMA with MiniLM's tokenizer (and a chat template) into
    ``folder``."""
    from sw_core.chunks.chunker import chunk_model

    model, tokenizer = tiny_chat_model()
    chunk_model(model, folder, name="tinychat", tokenizer=tokenizer)


def tiny_chat_model() -> tuple[Any, Any]:
    """The tiny chat model in memory (the same weights every time: seed 0) and its
    tokenizer: the reference of what the gateway serves as ``tinychat``."""
    import torch
    import transformers

    from sw_core.local.bundled import minilm_path

    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_path())
    tokenizer.chat_template = CHAT_TEMPLATE
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        max_position_embeddings=512,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval(), tokenizer


@pytest.fixture(scope="session")
def tinychat_chunked(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny chat model's chunk set (built once per session)."""
    folder = tmp_path_factory.mktemp("tinychat")
    build_tiny_chat(folder)
    return folder


@dataclass
class GatewayProcess:
    """A ``sw serve`` child on a free loopback port."""

    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def rss_kib(self) -> tuple[int, int]:
        """(current RSS, peak RSS) in KiB, from /proc."""
        fields = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            fields[name] = value.strip()
        return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)


def start_gateway(
    settings: Settings, log_path: Path, *extra_args: str, wait: bool = True, **env: str
) -> GatewayProcess:
    """Start ``sw serve`` with ``settings`` (plus ``env``) and wait until /healthz answers."""
    port = free_port()
    log = log_path.open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "sw_core.cli", "serve", "--port", str(port), *extra_args],
        cwd=REPO,
        env=worker_env(settings, **env),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    gateway = GatewayProcess(proc, port, log_path)
    if wait:
        wait_http(gateway, "/healthz", 200, timeout_s=60)
    return gateway


def wait_http(gateway: GatewayProcess, path: str, status: int, timeout_s: float) -> None:
    """Poll ``path`` until it answers ``status``; fails with the gateway's log."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if gateway.proc.poll() is not None:
            raise AssertionError(f"gateway exited {gateway.proc.returncode}:\n{gateway.log()}")
        with contextlib.suppress(httpx.HTTPError):
            response = httpx.get(gateway.url + path, timeout=5)
            last = f"{response.status_code} {response.text[:200]}"
            if response.status_code == status:
                return
        time.sleep(0.2)
    raise AssertionError(f"{path} never answered {status} (last: {last}):\n{gateway.log()[-3000:]}")


@dataclass
class Cluster:
    """Workers and gateways of one test module; stopped by :meth:`stop`."""

    settings: Settings
    tmp: Path
    workers: list[WorkerProcess] = field(default_factory=list)
    gateways: list[GatewayProcess] = field(default_factory=list)

    def start_worker(self, name: str, **env: str) -> WorkerProcess:
        proc = start_worker(worker_env(self.settings, **env), self.tmp / f"{name}.log")
        self.workers.append(proc)
        return proc

    def start_gateway(self, name: str, *args: str, **env: str) -> GatewayProcess:
        gateway = start_gateway(self.settings, self.tmp / f"{name}.log", *args, **env)
        self.gateways.append(gateway)
        return gateway

    def logs(self) -> str:
        return "".join(p.read_text(errors="replace")[-2000:] for p in self.tmp.glob("*.log"))

    def stop(self) -> tuple[list[int], list[int | None]]:
        """Stop everything: (exit statuses of the gateways, of the workers)."""
        return [g.stop() for g in self.gateways], [w.stop() for w in self.workers]


@contextlib.contextmanager
def running_cluster(
    redis_url: str, models: str, tmp: Path, *, workers: int = 1, **overrides: object
) -> Iterator[Cluster]:
    """A flushed Redis, ``workers`` inference workers and one keyless gateway, ready (its
    /readyz answers 200); everything is stopped at the end and must stop cleanly."""
    import redis

    from tests.support.settings import fast_settings

    client = redis.Redis.from_url(redis_url)
    client.flushall()
    client.close()
    # claim_idle_ms as in production: the pipeline tests' 1 s lets a worker slowed by a busy
    # machine (or a SIGSTOP) lose a generate job it is still running to a second run
    values: dict[str, object] = {"heartbeat_ttl_s": 10, "claim_idle_ms": 30_000, **overrides}
    settings = fast_settings(redis_url, models=models, **values)
    cluster = Cluster(settings, tmp)
    try:
        for i in range(workers):
            cluster.start_worker(f"inference-{i + 1}")
        gateway = cluster.start_gateway("gateway")
        wait_http(gateway, "/readyz", 200, timeout_s=120)
        yield cluster
    finally:
        gateways, exits = cluster.stop()
        # uvicorn ends on SIGTERM by re-raising it once it has shut down cleanly
        assert set(gateways) <= {0, -signal.SIGTERM}, (gateways, cluster.logs())
        assert exits == [0] * len(exits), (exits, cluster.logs())


#: openai clients made by :func:`client_of`, closed by :func:`close_open_clients`.
OPEN_CLIENTS: list[Any] = []


def client_of(cluster: Cluster, index: int = 0, key: str = "unused") -> Any:
    """An ``openai.AsyncOpenAI`` client of gateway ``index`` (close it with
    :func:`close_open_clients`, from an autouse fixture)."""
    import openai

    client = openai.AsyncOpenAI(
        base_url=cluster.gateways[index].url + "/v1", api_key=key, max_retries=0, timeout=120
    )
    OPEN_CLIENTS.append(client)
    return client


async def close_open_clients() -> None:
    while OPEN_CLIENTS:
        await OPEN_CLIENTS.pop().close()


def queued(cluster: Cluster) -> int:
    """Entries in the cluster's jobs stream (queued or running)."""
    import redis

    from sw_core.keys import Keys

    client = redis.Redis.from_url(cluster.settings.redis_url)
    try:
        return client.xlen(Keys(cluster.settings.key_prefix).jobs)
    finally:
        client.close()


def cluster_fixture(chat_model: str, folder: str) -> Any:
    """A module-scoped ``cluster`` fixture: one inference worker and one keyless gateway
    serving MiniLM as ``minilm`` and the tiny chat model as ``chat_model`` (the requesting
    module must see the ``minilm_chunked`` and ``tinychat_chunked`` fixtures)."""

    @pytest.fixture(scope="module")
    def cluster(
        redis_server: Any,
        minilm_chunked: Any,
        tinychat_chunked: Path,
        tmp_path_factory: pytest.TempPathFactory,
    ) -> Iterator[Cluster]:
        models = f"minilm={minilm_chunked.folder},{chat_model}={tinychat_chunked}"
        with running_cluster(redis_server.url, models, tmp_path_factory.mktemp(folder)) as c:
            yield c

    return cluster


async def raw_requests(port: int, lines: list[str], connections: int = 16) -> list[int]:
    """Send ``lines`` (``"GET /path"``) as HTTP/1.1 requests over ``connections`` kept-alive
    sockets and return their statuses -- a client far lighter than httpx, so the gateway's
    cost is what a test of many requests measures."""
    import asyncio

    statuses: list[int] = [0] * len(lines)

    async def connection(indices: range) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for i in indices:
                method, path = lines[i].split(" ", 1)
                request = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                request += "Content-Length: 0\r\n\r\n" if method == "POST" else "\r\n"
                writer.write(request.encode())
                head = await reader.readuntil(b"\r\n\r\n")
                statuses[i] = int(head.split(b" ", 2)[1])
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
        finally:
            writer.close()

    step = -(-len(lines) // connections)
    await asyncio.gather(
        *(connection(range(s, min(len(lines), s + step))) for s in range(0, len(lines), step))
    )
    return statuses
