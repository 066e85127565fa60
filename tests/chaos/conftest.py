"""Fixtures of the reliability suite: private Redis servers, a stoppable S3, worker clusters,
a chunk set published to S3 with its backup folder, and the figures collector.

Short versions run by default (CI, a few minutes on 2 cores). ``CHAOS_LONG=1`` or
``pytest tests/chaos --chaos-long`` runs the long versions; in that mode the session ends by
writing ``docs/reliability.md`` (``CHAOS_REPORT`` overrides the path) from the figures.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from sw_core.chunks.manifest import Manifest
from sw_core.keys import Keys
from sw_core.local.redis_server import RedisServer
from sw_core.settings import Settings
from sw_core.storage import S3Backend
from tests.chaos.chunks import write_chunk_set
from tests.chaos.harness import REPO, Cluster, StoppableS3, chaos_long
from tests.chaos.report import Figures, record, write_report

KEYS = Keys("sw")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--chaos-long",
        action="store_true",
        default=False,
        help="run the long versions of the chaos scenarios and write docs/reliability.md",
    )


_FAILED: list[str] = []


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    report = yield
    if report.failed and "tests/chaos" in str(item.path).replace(os.sep, "/"):
        _FAILED.append(f"{item.name} ({report.when})")
    return report


@pytest.fixture(scope="session")
def long_mode(request: pytest.FixtureRequest) -> bool:
    """True for the long versions (``--chaos-long`` or ``CHAOS_LONG=1``)."""
    option = bool(request.config.getoption("--chaos-long", default=False))
    if option:
        os.environ["CHAOS_LONG"] = "1"
    return option or chaos_long()


@pytest.fixture(scope="session")
def results_path(tmp_path_factory: pytest.TempPathFactory, long_mode: bool) -> Iterator[Path]:
    """JSON-lines file of every scenario's figures (``CHAOS_RESULTS`` or a temp file).

    In the long mode the session writes the report from it when it ends.
    """
    path = Path(os.environ.get("CHAOS_RESULTS") or tmp_path_factory.mktemp("chaos") / "r.jsonl")
    if long_mode and path.exists():
        path.unlink()
    yield path
    if long_mode:
        out = Path(os.environ.get("CHAOS_REPORT") or REPO / "docs" / "reliability.md")
        write_report(path, out, command="make chaos", failures=list(_FAILED))


@pytest.fixture
def figures(results_path: Path, long_mode: bool) -> Callable[[Figures], Figures]:
    """``figures(Figures(...))`` records a scenario's figures (and prints them)."""

    def save(row: Figures) -> Figures:
        row.mode = "long" if long_mode else "short"
        record(row, results_path)
        print(row.to_json())
        return row

    return save


# ---------------------------------------------------------------------------- servers
@pytest.fixture
def chaos_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server with AOF (``appendfsync everysec``), free to restart or kill."""
    server = RedisServer(workdir=tmp_path / "redis", appendonly=True)
    server.workdir.mkdir(parents=True, exist_ok=True)
    try:
        server.start()
    except Exception as exc:
        pytest.fail(f"could not start a private redis-server: {exc}")
    yield server
    server.cleanup()


@pytest.fixture
async def chaos_client(chaos_redis: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(chaos_redis.url)
    yield client
    await client.aclose()


@pytest.fixture
def s3() -> Iterator[StoppableS3]:
    """moto's S3 on its own port, stoppable; objects survive a stop."""
    server = StoppableS3()
    try:
        server.start()
    except Exception as exc:
        pytest.fail(f"could not start moto's S3 server: {exc}")
    yield server
    server.stop()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """Worker processes of one test; killed at the end, their logs printed (shown on failure)."""
    group = Cluster(tmp_path / "logs")
    group.log_dir.mkdir(parents=True, exist_ok=True)
    yield group
    group.close()
    print(group.logs())


# ---------------------------------------------------------------------------- chunk set
@dataclass
class PublishedModel:
    """A chunk set in a bucket (``location``) with a backup copy in ``backup_dir/name``."""

    name: str
    bucket: str
    location: str
    folder: Path
    backup_dir: Path
    manifest: Manifest

    @property
    def backup_folder(self) -> Path:
        return self.backup_dir / self.name


async def publish_model(
    s3: StoppableS3, tmp_path: Path, *, name: str = "tiny", n_chunks: int = 4, rows: int = 64
) -> PublishedModel:
    """Write a chunk set of random tensors, upload it to a fresh bucket, copy it to a backup."""
    folder = tmp_path / "source" / name
    write_chunk_set(folder, name=name, n_chunks=n_chunks, rows=rows)
    return await publish_folder(s3, tmp_path, folder, name)


async def publish_folder(
    s3: StoppableS3, tmp_path: Path, folder: Path, name: str
) -> PublishedModel:
    """Upload the chunk set in ``folder`` to a fresh bucket (``s3://BUCKET/<name>``) and copy
    it to ``tmp_path/backup/<name>``."""
    import shutil
    import uuid

    from sw_core.chunks.verify import publish_chunk_set

    bucket = f"chaos-{uuid.uuid4().hex[:12]}"
    s3.client().make_bucket(bucket)
    settings = Settings.from_env({}, **s3.settings_overrides(), retry_initial_delay_s=0.05)
    backend = S3Backend.from_settings(settings, name, bucket_name=bucket)
    try:
        report = await publish_chunk_set(folder, backend)
    finally:
        await backend.close()
    assert report.ok, report.bad
    backup_dir = tmp_path / "backup"
    shutil.copytree(folder, backup_dir / name)
    manifest = Manifest.load(folder)
    return PublishedModel(name, bucket, f"s3://{bucket}/{name}", folder, backup_dir, manifest)


def tiny_engine_model(folder: Path, name: str = "tinyllama", *, hidden: int = 64) -> Manifest:
    """A small random LLaMA chunked for the real engine (hidden 64: about 0.7 MiB; hidden
    256: about 9 MiB). Jobs run the ``forward`` task on token ids: no tokenizer needed."""
    import torch
    import transformers

    from sw_core.chunks.chunker import chunk_model

    config = transformers.LlamaConfig(
        vocab_size=512, hidden_size=hidden, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=2 * hidden, max_position_embeddings=128,
        bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    return chunk_model(model, folder, name=name)
