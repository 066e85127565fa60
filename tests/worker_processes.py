"""Worker processes for the tests: settings as ``SW_*`` variables, start, stop.

One place for what the pipeline, operations and reliability tests all do: run a real
``python -m arq workers.Settings`` (or ``workers.LoaderSettings``) child whose settings come
from the environment exactly as an operator's would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from sw_core.settings import Secret, Settings

REPO = Path(__file__).resolve().parents[1]


def settings_env(settings: Settings) -> dict[str, str]:
    """``SW_*`` variables for every setting that differs from its default."""
    defaults = Settings()
    env: dict[str, str] = {}
    for name in sorted(Settings.field_names()):
        value = getattr(settings, name)
        if value == getattr(defaults, name) or value is None:
            continue
        if isinstance(value, Secret):
            value = value.reveal()
        elif isinstance(value, bool):
            value = "true" if value else "false"
        env["SW_" + name.upper()] = str(value)
    return env


def worker_env(settings: Settings, **extra: str) -> dict[str, str]:
    """Environment of a worker process: this one without ``SW_*``, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SW_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env["HF_HUB_OFFLINE"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(settings_env(settings))
    env.update(extra)
    return env


def start_worker(
    settings_or_env: Settings | dict[str, str],
    log_path: Path,
    settings_path: str = "workers.Settings",
) -> subprocess.Popen[bytes]:
    """``python -m arq SETTINGS_PATH`` as a child in its own process group, logging to
    ``log_path`` (appended); ``settings_or_env`` is turned into its environment."""
    env = worker_env(settings_or_env) if isinstance(settings_or_env, Settings) else settings_or_env
    log = log_path.open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "arq", settings_path],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop_worker(
    proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout_s: float = 20
) -> int:
    """Signal a worker and wait for it (SIGKILL after ``timeout_s``); its exit status."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(5)
