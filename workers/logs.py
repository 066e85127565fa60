"""Worker logging: one format for every logger of the process, set when a worker starts.

arq's command configures only arq's own logger (``HH:MM:SS: message``); our loggers had no
handler at all, so their INFO lines were lost. :func:`configure_logging` gives the root logger
one handler on stderr: ``text`` lines carry date, time, level and logger
(``2026-11-30 11:37:22.123 INFO workers.jobs.outcomes: job ... done ...``); ``json`` writes one
object a line (``time``, ``level``, ``logger``, ``message``, plus the fields a line passes as
``extra``) for log shippers. arq's per-job lines (chunk loads named by sha256) are turned down
to warnings: the loader logs each load by chunk name instead.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

TEXT_FORMAT = "%(asctime)s.%(msecs)03d %(levelname)s %(name)s: %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
#: LogRecord attributes that are not ``extra`` fields.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (UTC, ISO 8601), level, logger, message, extras."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in vars(record).items():
            if name not in _STANDARD and not name.startswith("_"):
                out[name] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def configure_logging(log_format: str = "text", level: int = logging.INFO) -> None:
    """Route every logger of this process to one stderr handler in ``log_format``."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT, DATE_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    arq = logging.getLogger("arq")
    for old in list(arq.handlers):
        arq.removeHandler(old)
    arq.propagate = True
    arq.setLevel(logging.WARNING)
    # arq's dictConfig disabled the loggers that existed before it ran
    for logger in logging.root.manager.loggerDict.values():
        if isinstance(logger, logging.Logger):
            logger.disabled = False
