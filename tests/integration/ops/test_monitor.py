"""``sw monitor`` in a real 100x30 terminal (tmux) while a real worker runs jobs.

The dashboard must render while jobs flow, show the exact error counts once they settle,
and quit on Ctrl-C with exit status 0 and the terminal restored (alternate screen left,
cursor visible).
"""

from __future__ import annotations

import asyncio
import re
import shlex
import subprocess
import time
import uuid
from pathlib import Path

import redis

from producer import Producer
from sw_core.keys import Keys
from tests.support.cli import sw_command
from tests.support.processes import worker_env, worker_logs, workers
from tests.support.settings import OPS, fast_settings
from tests.support.storage import make_chunk_set
from tests.support.waiting import wait_until_sync

KEYS = Keys("sw")
TMUX = "/usr/bin/tmux"
#: Jobs submitted: (first input, how many). ``fail=`` words make the handler fail them.
JOBS = [("fine", 4), ("fail=StorageError", 3), ("fail=SecurityError", 2)]


class Pane:
    """One detached tmux session on a private server socket."""

    def __init__(self, tmp: Path) -> None:
        self.socket = f"sw-test-{uuid.uuid4().hex[:8]}"
        self.name = "monitor"
        self.tmp = tmp

    def tmux(self, *args: str) -> str:
        result = subprocess.run(
            [TMUX, "-u", "-L", self.socket, *args], capture_output=True, text=True, timeout=20
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    def start(self, script: Path) -> None:
        self.tmux("new-session", "-d", "-s", self.name, "-x", "100", "-y", "30", f"sh {script}")

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", self.name)

    def flag(self, name: str) -> str:
        return self.tmux("display-message", "-p", "-t", self.name, f"#{{{name}}}").strip()

    def close(self) -> None:
        subprocess.run([TMUX, "-L", self.socket, "kill-server"], capture_output=True, timeout=20)


def error_rows(screen: str) -> dict[str, int]:
    """``{error type: count}`` read from the dashboard's "Errors by type" panel."""
    rows = re.findall(r"│\s+([A-Za-z]+Error)\s+([\d,]+)\s+\d+%\s+│", screen)
    return {name: int(count.replace(",", "")) for name, count in rows}


def jobs_value(screen: str, label: str) -> int | None:
    match = re.search(rf"│ {label}\s+([\d,]+) │", screen)
    return int(match.group(1).replace(",", "")) if match else None


def test_monitor_renders_while_jobs_flow_and_quits_cleanly(redis_url: str, tmp_path: Path) -> None:
    make_chunk_set(tmp_path / "good", name="good")
    settings = fast_settings(redis_url, OPS, retry_attempts=1)
    client = redis.Redis.from_url(redis_url)
    client.hset(KEYS.models, "good", str(tmp_path / "good"))

    exit_file = tmp_path / "exit-status"
    script = tmp_path / "monitor.sh"
    exports = "".join(
        f"export {k}={shlex.quote(v)}\n"
        for k, v in worker_env(settings).items()
        if k.startswith("SW_")
    )
    command = shlex.join([*sw_command(), "monitor", "--interval", "0.5"])
    # A shell that traps INT waits for the monitor and records its exit status. COLUMNS and
    # LINES leak into tmux from the test runner; a real terminal is sized by its tty.
    script.write_text(
        f"{exports}export TERM=xterm-256color\nunset COLUMNS LINES\ntrap : INT\n"
        f"{command}\necho $? > {exit_file}\nsleep 60\n"
    )
    pane = Pane(tmp_path)
    try:
        with workers(settings, tmp_path, "inference"):
            pane.start(script)
            wait_until_sync(lambda: "Surfing Weights" in pane.screen(), 30, "the first frame")

            async def submit() -> None:
                async with Producer(settings=settings) as producer:
                    for text, count in JOBS:
                        for i in range(count):
                            await producer.submit(
                                model="good", task="embed", inputs=[f"{text} {i}"]
                            )
                            await asyncio.sleep(0.1)

            asyncio.run(submit())
            frames_in_flight = [pane.screen()]  # rendered while jobs are still running

            total_jobs = sum(count for _, count in JOBS)

            def settled() -> bool:
                stats = client.hgetall(KEYS.stats)
                done = int(stats.get(b"completed", 0)) + int(stats.get(b"dead_lettered", 0))
                return done == total_jobs

            try:
                wait_until_sync(settled, 60, "every job to end")
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{worker_logs(tmp_path)}") from None
            expected = {"StorageError": 3, "SecurityError": 2}

            def shows_final_counts() -> str | None:
                screen = pane.screen()
                if error_rows(screen) == expected and jobs_value(screen, "errors") == 5:
                    return screen
                return None

            screen = wait_until_sync(shows_final_counts, 15, "the final counts on screen")
            lines = screen.rstrip("\n").splitlines()
            assert "Surfing Weights" in lines[0]
            assert len(lines) <= 30 and lines[-1].startswith("╰")  # the whole frame fits
            assert max(len(line) for line in lines) == 100  # and uses the full width
            assert jobs_value(screen, "completed") == 4
            assert jobs_value(screen, "requests") == total_jobs
            assert "ALERT: error rate" in screen  # 5 errors / 9 requests > 10 %
            assert "inference" in screen and "Workers (1 live)" in screen
            assert all("Queue" in frame for frame in frames_in_flight)

            pane.tmux("send-keys", "-t", pane.name, "C-c")
            wait_until_sync(exit_file.exists, 15, "sw monitor to exit after Ctrl-C")
            time.sleep(0.2)
            assert exit_file.read_text().strip() == "0"
            assert pane.flag("alternate_on") == "0"  # back on the normal screen
            assert pane.flag("cursor_flag") == "1"  # cursor shown again
            assert "Errors by type" not in pane.screen()
    finally:
        pane.close()
        client.close()
