"""Data on stdout, messages on stderr, a closed pipe ends quietly."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import redis

from sw_core.cli import main
from tests.integration.cli.test_pipeline_cmds import worker_thread
from tests.support.observe import KEYS
from tests.support.processes import REPO
from tests.support.settings import fast_settings


def test_submit_wait_stdout_is_one_json_document(redis_url: str, capsys, monkeypatch) -> None:
    monkeypatch.setenv("SW_MODELS", "m1=/srv/m1")
    flags = ["--redis-url", redis_url]
    with worker_thread(fast_settings(redis_url)):
        assert main(["submit", "m1", "--text", "hello", "--wait", *flags]) == 0
        out, err = capsys.readouterr()
        assert json.loads(out)["inputs"] == ["hello"]  # what `| jq` reads
        assert "job " in err
        assert main(["submit", "m1", "--text", "hi", "--json", *flags]) == 0
        job_id = json.loads(capsys.readouterr().out)["job_id"]
        assert main(["result", job_id, "--wait", *flags]) == 0
        assert json.loads(capsys.readouterr().out)["inputs"] == ["hi"]
    assert main(["models", "--json", *flags]) == 0
    assert json.loads(capsys.readouterr().out) == {"m1": "/srv/m1"}


def test_closed_pipe_ends_quietly(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.hset(
        KEYS.models, mapping={f"model-{i:05d}": f"/srv/{'x' * 60}/{i}" for i in range(3000)}
    )
    client.close()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = f"{sys.executable} -m sw_core.cli models --redis-url {redis_url} | head -c 10"
    done = subprocess.run(
        ["bash", "-o", "pipefail", "-c", command], env=env, capture_output=True, timeout=60
    )
    assert len(done.stdout) == 10
    assert b"Traceback" not in done.stderr and b"BrokenPipe" not in done.stderr, done.stderr
    assert done.returncode == 141


def test_chunk_verify_and_publish_give_json(tmp_path, capsys) -> None:
    from sw_core.local.bundled import minilm_path
    from tests.support.storage import make_chunk_set

    make_chunk_set(tmp_path / "tiny")
    assert main(["verify", str(tmp_path / "tiny"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True and report["entries_checked"] == 6 and report["bad"] == []
    assert main(["publish", str(tmp_path / "tiny"), "--to", str(tmp_path / "copy"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
    (tmp_path / "tiny" / "block_000.safetensors").write_bytes(b"broken")
    assert main(["verify", str(tmp_path / "tiny"), "--json"]) == 1
    [bad] = json.loads(capsys.readouterr().out)["bad"]
    assert bad["name"] == "block_000"
    assert main(["chunk", str(minilm_path()), "--out", str(tmp_path / "m"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["model_class"] == "BertModel" and summary["blocks"] == 6
