"""``sw cancel``, and the token printer of ``sw submit --stream``."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TYPE_CHECKING

from sw_core.cli.flags import Subparsers, add_cli_flags, settings_from_args
from sw_core.cli.output import data

if TYPE_CHECKING:
    from producer import Producer

#: Settings this command takes as flags too.
REDIS_FLAGS = ["redis_url", "key_prefix"]
#: Exit status when there is no such job (as for ``sw result``).
EXIT_UNKNOWN = 4


def register(subparsers: Subparsers) -> None:
    cancel = subparsers.add_parser(
        "cancel",
        help="cancel a job",
        description="A queued job never runs; a running generate job stops at its next step. "
        "Prints the job's status after the call: cancelled, cancelling (running: its worker "
        "stops it), or the status it had already ended with (done, dead, expired).",
        epilog="Exit status: 0 cancelled, cancelling or already ended; 4 no such job (or it "
        "expired from Redis); 2 Redis unreachable.",
    )
    cancel.add_argument("job_id", metavar="JOB_ID")
    add_cli_flags(cancel, REDIS_FLAGS)
    cancel.set_defaults(handler=_cancel)


def _cancel(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)

    async def run() -> str:
        from producer import Producer

        async with Producer(settings=settings) as producer:
            return await producer.cancel(args.job_id)

    status = asyncio.run(run())
    data(status)
    return EXIT_UNKNOWN if status == "unknown" else 0


async def print_stream(producer: Producer, job_id: str, timeout_s: float) -> None:
    """Print a generate job's text deltas as they come (one line per input; a
    worker restart is announced and the text starts over)."""
    from sw_core.exceptions import JobTimeoutError
    from sw_core.schema import StreamEvent

    out = sys.stdout
    line_open = False
    try:
        async for event in producer.stream(job_id, timeout_s=timeout_s):
            kind = event.get("type")
            if kind == StreamEvent.TOKEN:
                out.write(event.get("text", ""))
                out.flush()
                line_open = True
            elif kind == StreamEvent.END or (kind == StreamEvent.FINAL and line_open):
                out.write("\n")
                line_open = False
            elif kind == StreamEvent.RESTART:
                out.write("\n[worker restarted: the job runs again from the beginning]\n")
                line_open = False
    except JobTimeoutError as exc:
        print(f"sw submit: {exc}", file=sys.stderr)
