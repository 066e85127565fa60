"""Where ``sw`` writes: data on stdout, messages on stderr, and a closed pipe ends quietly.

Every command prints what a script would consume (ids, results, tables, JSON with ``--json``)
with :func:`data` / :func:`data_json`, and everything said to the person at the terminal
(confirmations, progress, warnings) with :func:`say`. A reader that goes away early
(``sw models | head -1``) ends the command with exit status :data:`EXIT_CLOSED_PIPE` and no
traceback (:func:`closed_pipe`, called by :func:`sw_core.cli.main`).
"""

from __future__ import annotations

import base64
import json
import os
import sys
from typing import Any

#: Exit status when stdout's reader went away (128 + SIGPIPE, as for other Unix tools).
EXIT_CLOSED_PIPE = 141


def data(text: str) -> None:
    """One line of data on stdout."""
    print(text, flush=True)


def data_json(value: Any, *, indent: int | None = None) -> None:
    """``value`` as JSON on stdout (bytes as base64)."""
    data(to_json(value, indent=indent))


def say(text: str) -> None:
    """A message for the person at the terminal, on stderr."""
    print(text, file=sys.stderr, flush=True)


def to_json(value: Any, *, indent: int | None = None) -> str:
    """JSON text of ``value``; bytes become base64, anything else unknown its ``str``."""

    def default(obj: Any) -> Any:
        if isinstance(obj, (bytes, bytearray, memoryview)):
            return base64.b64encode(bytes(obj)).decode()
        return str(obj)

    return json.dumps(value, default=default, ensure_ascii=False, indent=indent)


def closed_pipe() -> int:
    """Stdout's reader is gone: point stdout at /dev/null (so the final flush cannot fail)
    and return :data:`EXIT_CLOSED_PIPE`."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
    return EXIT_CLOSED_PIPE
