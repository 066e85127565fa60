"""docker-compose.yml started, used and broken, as an operator would.

CI's images (ours and the S3 stand-in's, on a Debian base made with mmdebstrap) are built,
every service comes up and its own health check says healthy; SmolLM2 is chunked on the host
and published into the stack's S3, then registered; embeddings (all-MiniLM-L6-v2, published
by the stack's own one-shot service) and a streamed chat completion go through the gateway
with the official ``openai`` client; an inference container is killed mid-job and its jobs
finish on the other worker with nothing lost; ``/metrics`` is scraped and ``sw health`` run
through the tools service; everything is torn down and nothing is left.

Needs root, a Docker engine and CI's base image: ``.ci/compose/run.sh`` runs it after
``make test`` (which does not collect it, see ``conftest.py``).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Iterator
from pathlib import Path

import openai
import pytest
import redis

from producer import Producer
from sw_core.keys import Keys
from sw_core.local.bundled import minilm_path
from sw_core.settings import Settings
from tests.compose.conftest import FAILED
from tests.compose.stack import (
    CACHED_IMAGES,
    HOSTNAMES,
    LONG_RUNNING,
    ONE_SHOTS,
    Stack,
    docker,
    say,
)

# building the image on a machine without its cache takes minutes on two cores
pytestmark = pytest.mark.timeout(3600)

SW = str(Path(sys.executable).with_name("sw"))
CHAT = [{"role": "user", "content": "What is the capital of France?"}]
TEXTS = ["Layer chunks stream from S3.", "The capital of France is Paris."]
#: Generate jobs the kill test submits, the tokens each asks for and its prompt (a long
#: answer, so that a job is still running when its worker is killed).
KILL_JOBS, KILL_TOKENS, PROMPT = 6, 48, "The capital of France is"


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    """The stack, built and healthy; torn down after the module, nothing left behind."""
    began = time.monotonic()
    stack = Stack()
    try:
        stack.build()
        sizes = ", ".join(
            f"{tag} {int(docker('image', 'inspect', '-f', '{{.Size}}', tag)) / 1e6:.0f} MB"
            for tag in CACHED_IMAGES
        )
        say(f"images built in {time.monotonic() - began:.0f} s: {sizes}")
        began = time.monotonic()
        stack.up()
        stack.wait_healthy(LONG_RUNNING, timeout_s=600)
        for service in ONE_SHOTS:
            assert stack.exit_code(service) == 0, stack.logs([service])
        say(
            f"stack healthy in {time.monotonic() - began:.0f} s: {', '.join(LONG_RUNNING)} "
            f"healthy; {', '.join(ONE_SHOTS)} exited 0 (project {stack.project})"
        )
        yield stack
    except BaseException:
        request.session.stash[FAILED] = True
        raise
    finally:
        if request.session.stash.get(FAILED, False):
            print(stack.diagnosis(), flush=True)
        left = stack.down()
        say(
            f"torn down (down -v): left {', '.join(f'{len(v)} {k}' for k, v in left.items())}"
            f" ({stack.removed_images} layers of a failed build removed); kept as CI's cache: "
            f"{', '.join(CACHED_IMAGES)}"
        )
        assert not any(left.values()), f"left behind: {left}"


@pytest.fixture(scope="module")
def smollm2(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> str:
    """SmolLM2 chunked on the host, published into the stack's S3 and registered."""
    began = time.monotonic()
    env = stack.client_env()
    folder = tmp_path_factory.mktemp("chunks") / "smollm2"
    gguf = run([SW, "bundled", "smollm2"], env).strip()
    run([SW, "chunk", gguf, "--out", str(folder), "--name", "smollm2"], env)
    # a generous timeout: a loaded CI machine's moto may take more than 30 s for one chunk
    published = run(
        [SW, "publish", str(folder), "--to", "s3://sw-chunks/smollm2", "--timeout-seconds", "300"],
        env,
    )
    run([SW, "register", "smollm2", "s3://sw-chunks/smollm2"], env)
    size_mb = sum(p.stat().st_size for p in folder.iterdir()) / 2**20
    say(
        f"smollm2 chunked ({size_mb:.0f} MiB), published to s3://sw-chunks/smollm2 and "
        f"registered in {time.monotonic() - began:.0f} s: {published.strip().splitlines()[-1]}"
    )
    return "smollm2"


def run(argv: list[str], env: dict[str, str]) -> str:
    """Run a command on the host; its stdout (its output in the error when it fails)."""
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{argv} failed ({done.returncode}): {done.stderr[-3000:]}"
    return done.stdout


def client(stack: Stack) -> openai.OpenAI:
    """An openai client of the gateway; no retries (a retry would hide a failed request)."""
    return openai.OpenAI(
        base_url=f"{stack.gateway_url}/v1", api_key=stack.api_key, timeout=600, max_retries=0
    )


def test_gateway_refuses_a_wrong_key_and_lists_both_models(stack: Stack, smollm2: str) -> None:
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{stack.gateway_url}/v1", api_key="wrong").models.list()
    models = sorted(m.id for m in client(stack).models.list())
    assert models == ["minilm", smollm2], models
    say(f"gateway: a wrong key gets 401; models {models}")


def test_embeddings_through_the_gateway_match_transformers(stack: Stack) -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    answer = client(stack).embeddings.create(model="minilm", input=TEXTS)
    got = torch.tensor([item.embedding for item in answer.data])
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    model = AutoModel.from_pretrained(minilm_path()).eval()
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    want = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    diff = float((got - want).abs().max())
    assert got.shape == want.shape == (2, 384) and diff < 1e-4, (got.shape, diff)
    say(f"embeddings: {tuple(got.shape)} from minilm, max |diff| vs transformers {diff:.1e}")


def test_streamed_chat_completion_through_the_gateway(stack: Stack, smollm2: str) -> None:
    began = time.monotonic()
    stream = client(stack).chat.completions.create(
        model=smollm2, messages=CHAT, max_tokens=20, stream=True
    )
    deltas, finish = [], None
    for chunk in stream:
        choice = chunk.choices[0]
        if choice.delta.content:
            deltas.append(choice.delta.content)
        finish = choice.finish_reason or finish
    text = "".join(deltas)
    assert len(deltas) > 1 and "Paris" in text and finish in ("stop", "length"), (deltas, finish)
    say(
        f"chat streamed {len(deltas)} deltas in {time.monotonic() - began:.0f} s, "
        f"finish {finish}: {text!r}"
    )


async def test_killed_inference_container_loses_nothing(stack: Stack, smollm2: str) -> None:
    keys = Keys(Settings.from_env({}).key_prefix)
    sync = redis.Redis.from_url(stack.redis_url)
    service, restart_error = "", None
    try:
        async with Producer(stack.redis_url, settings=Settings.from_env({})) as producer:
            # what an undisturbed run answers (greedy: batch mates change nothing)
            reference = _text(await producer.result(await _submit(producer, smollm2), 600))
            began = time.monotonic()
            jobs = [await _submit(producer, smollm2) for _ in range(KILL_JOBS)]
            worker, job = await _first_streaming_job(producer, sync, keys, jobs)
            service = next(s for s, host in HOSTNAMES.items() if worker.startswith(f"{host}-"))
            container = stack.container(service)
            docker("kill", container)
            killed_ms = int(time.time() * 1000)
            held = [j for j in jobs if (await producer.status(j)).get("worker") == worker]
            running = [j for j in held if (await producer.status(j))["status"] == "running"]
            say(
                f"killed {service} (docker kill {container[:12]}) mid-job: worker {worker} held "
                f"{len(held)} of {KILL_JOBS} jobs, {len(running)} running, "
                f"{_tokens(sync, keys, job)} tokens of {job[:8]} streamed"
            )
            assert job in running, await producer.status(job)

            results = await asyncio.gather(
                *(producer.result(j, timeout=600) for j in jobs), return_exceptions=True
            )
            done = [r for r in results if not isinstance(r, BaseException)]
            lost, dead = KILL_JOBS - len(done), sync.xlen(keys.dlq)
            texts = {_text(r) for r in done}
            finishers = {(await producer.status(j))["worker"] for j in running}
            say(
                f"jobs done {len(done)}/{KILL_JOBS} in {time.monotonic() - began:.0f} s, lost "
                f"{lost}, dead letters {dead}; the killed worker's {len(running)} running jobs "
                f"finished on {', '.join(sorted(finishers))}, each text as an undisturbed run's"
            )
            assert lost == 0 and dead == 0, [r for r in results if isinstance(r, BaseException)]
            assert texts == {reference}, (texts, reference)
            for j in running:  # started again after the kill: a second start event
                status, starts = await producer.status(j), _starts(sync, keys, j)
                assert status["started_ms"] > killed_ms and len(starts) >= 2, (status, starts)
    finally:
        sync.close()
        if service:  # whatever happened above, the next tests get the whole stack
            try:
                _start_again(stack, service)
            except Exception as exc:
                restart_error = exc
                say(f"{service} did not come back: {exc}")
    if restart_error:
        raise restart_error


def _submit(producer: Producer, model: str) -> Awaitable[str]:
    """One generate job of the kill test."""
    return producer.submit(model, "generate", [PROMPT], max_new_tokens=KILL_TOKENS)


def _start_again(stack: Stack, service: str) -> None:
    """Start the killed service's container (`docker kill` counts as stopped by hand, so
    its restart policy leaves it down) and wait for its health check."""
    began = time.monotonic()
    if not stack.state(service).get("Running"):
        stack.compose("start", service)
    stack.wait_healthy([service], timeout_s=300, restarted=True)
    say(f"{service} started again and healthy in {time.monotonic() - began:.0f} s")


def test_metrics_and_health_after_all_that(stack: Stack, smollm2: str) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(stack.metrics_url, timeout=10).read().decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    completed = samples[("sw_jobs_total", (("status", "completed"),))]
    workers = {
        kind: samples.get(("sw_workers", (("kind", kind),)), 0) for kind in ("inference", "loader")
    }
    assert samples[("sw_up", ())] == 1
    assert samples[("sw_dead_letters", ())] == 0
    assert completed >= KILL_JOBS, completed
    assert workers["inference"] >= 2 and workers["loader"] >= 1, workers
    say(
        f"/metrics: sw_up 1, {completed:.0f} jobs completed, "
        f"{samples[('sw_requests_total', ())]:.0f} requests, 0 dead letters, workers {workers}"
    )
    health = stack.compose("run", "--rm", "tools", "sw", "health", timeout_s=300)
    verdict = [line for line in health.stdout.splitlines() if line.strip()][-1]
    say(f"`compose run --rm tools sw health`: exit 0, {verdict.strip()}")


async def _first_streaming_job(
    producer: Producer, sync: redis.Redis, keys: Keys, jobs: list[str]
) -> tuple[str, str]:
    """The worker name and id of the first job that is running and has streamed a token."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        for job in jobs:
            status = await producer.status(job)
            if status["status"] == "running" and _tokens(sync, keys, job) >= 1:
                return str(status["worker"]), job
            if status["status"] in ("done", "dead"):
                raise AssertionError(f"job {job} ended before any was seen running: {status}")
        await asyncio.sleep(0.05)
    raise AssertionError("no job started within 300 s")


def _events(sync: redis.Redis, keys: Keys, job: str) -> list[dict[bytes, bytes]]:
    return [fields for _, fields in sync.xrange(keys.job_tokens(job))]


def _tokens(sync: redis.Redis, keys: Keys, job: str) -> int:
    return sum(1 for e in _events(sync, keys, job) if e.get(b"type") == b"token")


def _starts(sync: redis.Redis, keys: Keys, job: str) -> list[dict[bytes, bytes]]:
    return [e for e in _events(sync, keys, job) if e.get(b"type") == b"start"]


def _text(result: object) -> str:
    """The generated text of a one-input generate job's result."""
    assert isinstance(result, list) and isinstance(result[0], dict), result
    return str(result[0]["text"])
