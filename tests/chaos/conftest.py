"""Fixtures of the reliability suite: private Redis servers, a stoppable S3, worker clusters
and the figures collector.

Short versions run by default (CI, a few minutes on 2 cores). ``CHAOS_LONG=1`` or
``pytest tests/chaos --chaos-long`` runs the long versions; in that mode the session ends by
writing ``docs/reliability.md`` (``CHAOS_REPORT`` overrides the path) from the figures.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from sw_core.local.redis_server import RedisServer
from tests.chaos.harness import chaos_long
from tests.chaos.report import Figures, record, write_report
from tests.support.processes import REPO, Cluster
from tests.support.servers import S3Server


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
def s3() -> Iterator[S3Server]:
    """moto's S3 on its own port, stoppable; objects survive a stop."""
    server = S3Server()
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
