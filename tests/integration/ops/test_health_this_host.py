"""A container's health check judges its own worker's heartbeat, and
the MinIO images are pinned."""

from __future__ import annotations

import re
import socket
import time

import redis
import yaml

from sw_core.cli import main
from sw_core.ops.health import check_health
from tests.support.observe import KEYS
from tests.support.processes import REPO
from tests.support.settings import OPS, fast_settings


def _beat(client: redis.Redis, worker_id: str, host: str) -> None:
    now_ms = int(time.time() * 1000)
    client.hset(
        KEYS.worker(worker_id),
        mapping={
            "kind": "inference",
            "host": host,
            "pid": "1",
            "beat_ms": now_ms,
            "started_ms": now_ms,
        },
    )
    client.expire(KEYS.worker(worker_id), 30)
    client.zadd(KEYS.workers, {worker_id: now_ms})


def test_another_hosts_worker_does_not_make_this_container_healthy(redis_url: str, capsys) -> None:
    settings = fast_settings(redis_url, OPS)
    client = redis.Redis.from_url(redis_url)
    _beat(client, "replica-2-1", "replica-2")  # a healthy worker in another container
    this_host = socket.gethostname()
    assert check_health(settings, require_kinds=["inference"], check_storage=False).ok
    report = check_health(
        settings, require_kinds=["inference"], check_storage=False, host=this_host
    )
    assert not report.ok and f"on host {this_host}" in report.failed[0].detail
    flags = ["--require", "inference", "--no-storage", "--redis-url", redis_url]
    assert main(["health", *flags, "--this-host"]) == 1
    _beat(client, f"{this_host}-7", this_host)  # now this container's own worker beats
    assert main(["health", *flags, "--this-host"]) == 0
    capsys.readouterr()
    client.close()


def test_compose_health_checks_and_pinned_images() -> None:
    text = (REPO / "docker-compose.yml").read_text()
    services = yaml.safe_load(text)["services"]
    workers = {n: s for n, s in services.items() if s.get("command", [None])[0] == "arq"}
    assert len(workers) == 2, sorted(services)
    for name, service in workers.items():  # each worker container judges its own worker
        check = service["healthcheck"]["test"]
        assert check[:3] == ["CMD", "sw", "health"] and "--this-host" in check, (name, check)
    images = re.findall(r"image: (\S+)", text)
    minio = [i for i in images if "minio/" in i]
    assert len(minio) == 2 and all(re.search(r":RELEASE\.\d{4}-", i) for i in minio), minio
