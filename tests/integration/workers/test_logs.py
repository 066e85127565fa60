"""A worker's log has a dated, levelled banner, one line per job and a
final line; SW_LOG_FORMAT=json gives one JSON object a line."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from producer import Producer
from tests.support.observe import KEYS
from tests.support.processes import start_worker, worker_env
from tests.support.settings import fast_settings

STAMP = r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: "


async def _run_jobs(redis_url: str, log_path: Path, **env: str) -> tuple[list[str], str]:
    settings = fast_settings(redis_url)
    proc = start_worker(
        worker_env(settings, SW_HANDLER="tests.support.handlers:EchoHandler", **env), log_path
    )
    try:
        async with Producer(settings=settings) as p:
            ids = [await p.submit("m1", "embed", [f"text {i}"]) for i in range(3)]
            entry = {"model": "ghost", "task": "embed", "text": "x"}
            ids.append((await p.redis.xadd(KEYS.jobs, entry)).decode())
            for job_id in ids[:3]:
                await p.result(job_id, timeout_s=60)
            with pytest.raises(Exception, match="not registered"):
                await p.result(ids[3], timeout_s=30)
    finally:
        assert proc.stop() == 0, log_path.read_text()[-3000:]
    return ids, log_path.read_text()


async def test_text_log_has_banner_job_lines_and_exit_line(redis_url: str, tmp_path) -> None:
    ids, text = await _run_jobs(redis_url, tmp_path / "worker.log")
    ours = [line for line in text.splitlines() if re.match(STAMP, line)]
    banner = [line for line in ours if "started: kind=inference" in line]
    assert len(banner) == 1, text[-3000:]
    assert re.match(STAMP, banner[0]) and " INFO workers.node: " in banner[0]
    assert re.search(r"models=m1,m2 budget=\d+ MiB .* redis=redis://127\.0\.0\.1:\d+", banner[0])
    for job_id in ids[:3]:
        [line] = [x for x in ours if f"job {job_id} done" in x]
        assert re.search(r" INFO .*model=m1 task=embed inputs=1 batch=\d+ duration=[\d.]+s", line)
    [dead] = [x for x in ours if f"job {ids[3]} dead" in x]
    assert " WARNING " in dead and "model=ghost" in dead
    assert any(re.search(r"worker \S+ exits: 3 jobs done, 1 failed", x) for x in ours), text
    stray = [x for x in text.splitlines() if x.strip() and not re.match(STAMP, x)]
    assert not [x for x in stray if "job" in x], stray  # no undated job lines


async def test_json_log_lines(redis_url: str, tmp_path) -> None:
    ids, text = await _run_jobs(redis_url, tmp_path / "worker.log", SW_LOG_FORMAT="json")
    records = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert any(r["message"].startswith("worker ") and r.get("event") == "start" for r in records)
    done = [r for r in records if r.get("outcome") == "done"]
    assert sorted(r["job_id"] for r in done) == sorted(ids[:3])
    assert all(re.match(r"\d{4}-\d\d-\d\dT", r["time"]) and r["level"] == "INFO" for r in done)
    assert all(r["model"] == "m1" and r["task"] == "embed" for r in done)
