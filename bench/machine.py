"""Where and when figures were measured: the machine, the commit, and how busy the machine
was with other work while a benchmark ran.

The load average counts the benchmark itself (it keeps both cores of a 2-core machine busy),
so it cannot tell a quiet machine from a shared one. :class:`CpuWatch` measures what the
benchmark cannot cause: the CPU time every process used (``/proc/stat``) minus the CPU time
of the benchmark's own process tree (its children's rusage, waited for), per second of
wall time -- the cores other work took meanwhile.
"""

from __future__ import annotations

import os
import platform
import resource
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

#: Cores of other work (on average, over a benchmark's run) above which its figures are
#: marked as measured on a loaded machine.
LOADED_OTHER_CORES = 0.3


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages (empty where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def _busy_cpu_s() -> float | None:
    """CPU seconds every process has used since boot (user, nice, system, irq, steal)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return None
    ticks = [int(x) for x in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass
class CpuWatch:
    """How much CPU other work used while a child process (the benchmark) ran.

    Start it, run and *wait for* the child, then :meth:`stop`.
    """

    started_s: float = field(default_factory=time.perf_counter)
    busy_s: float | None = field(default_factory=_busy_cpu_s)
    children_s: float = field(default_factory=_children_cpu_s)
    load_before: list[float] = field(default_factory=load_average)

    def stop(self) -> dict[str, Any]:
        wall_s = time.perf_counter() - self.started_s
        busy = _busy_cpu_s()
        own_s = _children_cpu_s() - self.children_s
        out: dict[str, Any] = {
            "seconds": round(wall_s, 1),
            "load_before": self.load_before,
            "load_after": load_average(),
            "cpu_cores_used": round(own_s / wall_s, 2) if wall_s > 0 else None,
        }
        if busy is not None and self.busy_s is not None and wall_s > 0:
            others = max(0.0, (busy - self.busy_s) - own_s) / wall_s
            out["other_cpu_cores"] = round(others, 2)
            out["loaded"] = others > LOADED_OTHER_CORES
        return out


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _version(module: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        return None


def _redis_server_version() -> str | None:
    try:
        from sw_core.local.redis_server import find_redis_server

        binary = find_redis_server()
    except Exception:
        return None
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    words = out.stdout.split()
    version = next((w.split("=", 1)[1] for w in words if w.startswith("v=")), None)
    return f"{version} ({binary})" if version else binary


def machine_info() -> dict[str, Any]:
    """CPU, cores, memory, OS, Python and the versions the figures depend on."""
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": _version("torch"),
        "transformers": _version("transformers"),
        "redis_server": _redis_server_version(),
    }


def git_commit() -> dict[str, Any]:
    """The commit of the working tree and whether it had changes not committed."""
    git = shutil.which("git")
    if git is None:
        return {"commit": None, "dirty": None}

    def run(*args: str) -> str:
        done = subprocess.run([git, *args], cwd=REPO, capture_output=True, text=True, timeout=20)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = run("rev-parse", "HEAD") or None
    status = run("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if commit else None}


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
