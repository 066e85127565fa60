"""Store commands: sw chunk of a missing path, sw bundled, sw publish
--create-bucket, worker numbers in sw stats --json."""

from __future__ import annotations

import json
import time
from pathlib import Path

import redis

from sw_core.cli import main
from sw_core.local.bundled import minilm_path, smollm2_gguf_path
from tests.support.cli import run_sw_here
from tests.support.observe import KEYS
from tests.support.settings import OPS, fast_settings
from tests.support.storage import make_chunk_set


def test_chunk_of_a_missing_path_says_so_and_makes_no_folder(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert main(["chunk", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not out.exists()


def test_bundled_prints_the_model_paths(capsys) -> None:
    assert main(["bundled", "minilm"]) == 0
    assert capsys.readouterr().out.strip() == str(minilm_path())
    assert main(["bundled", "smollm2"]) == 0
    assert capsys.readouterr().out.strip() == str(smollm2_gguf_path())


def test_publish_creates_the_bucket(tmp_path: Path, s3_server, capsys) -> None:
    make_chunk_set(tmp_path / "tiny")
    flags = [
        "--s3-endpoint",
        s3_server.endpoint,
        "--s3-access-key",
        s3_server.access_key,
        "--s3-secret-key",
        s3_server.secret_key,
    ]
    bucket = f"fresh-{int(time.time() * 1000)}"
    target = f"s3://{bucket}/tiny"
    assert main(["publish", str(tmp_path / "tiny"), "--to", target, *flags]) == 1  # no bucket
    capsys.readouterr()
    assert main(["publish", str(tmp_path / "tiny"), "--to", target, "--create-bucket", *flags]) == 0
    out, err = capsys.readouterr()
    assert f"created bucket {bucket}" in err and out.startswith("OK s3://")


def test_stats_json_gives_worker_numbers_as_numbers(redis_url: str, monkeypatch, capsys) -> None:
    client = redis.Redis.from_url(redis_url)
    now_ms = int(time.time() * 1000)
    client.hset(
        KEYS.worker("w-1"),
        mapping={
            "kind": "inference",
            "host": "h",
            "pid": 42,
            "beat_ms": now_ms,
            "jobs_done": 7,
            "current_jobs": "123",
        },
    )
    client.zadd(KEYS.workers, {"w-1": now_ms})
    client.close()
    rc, out, _ = run_sw_here(
        ["stats", "--json"], fast_settings(redis_url, OPS), monkeypatch, capsys
    )
    [worker] = json.loads(out)["workers"]
    assert rc == 0 and worker["pid"] == 42 and worker["jobs_done"] == 7
    assert worker["host"] == "h" and worker["kind"] == "inference"
