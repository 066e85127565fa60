"""The ``sw`` command: one sub-command module per concern, each with a ``register``.

Output rules for every command (helpers in :mod:`sw_core.cli.output`): data on stdout (JSON
with ``--json`` where a command has structured output), messages on stderr, exit status 141
without a traceback when stdout's reader goes away.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence

from sw_core.cli.output import closed_pipe
from sw_core.exceptions import SurfingError

#: Modules under ``sw_core.cli`` that add sub-commands; each has ``register(subparsers)``.
COMMAND_MODULES: tuple[str, ...] = (
    "chunk_cmds",
    "synth_cmds",
    "store_cmds",
    "serve_cmds",
    "rehash_cmds",
    "ops_cmds",
    "dlq_cmds",
    "demo_cmds",
    "pipeline_cmds",
    "serving_cmds",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sw",
        description="Surfing Weights: streamed transformer inference from verified layer chunks.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"sw_core.cli.{name}")
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sw`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        status = int(handler(args) or 0)
        sys.stdout.flush()  # a reader gone away shows here, not at interpreter exit
        return status
    except BrokenPipeError:
        return closed_pipe()
    except SurfingError as exc:
        print(f"sw {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sw {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        line = _redis_failure(args, exc)
        if line is None:
            raise
        print(f"sw {args.command}: {line}", file=sys.stderr)
        return 2


def _redis_failure(args: argparse.Namespace, exc: Exception) -> str | None:
    """One line for a Redis that cannot be reached or refuses us; None for anything else."""
    errors = sys.modules.get("redis.exceptions")
    if errors is None or not isinstance(exc, (errors.ConnectionError, errors.TimeoutError)):
        return None
    from sw_core.cli.flags import settings_from_args
    from sw_core.settings import redact_url

    try:
        url = redact_url(settings_from_args(args).redis_url)
    except SurfingError:
        url = "SW_REDIS_URL"
    reason = str(exc).rstrip(".")
    if isinstance(exc, (errors.AuthenticationError, errors.AuthorizationError)):
        return (
            f"Redis at {url} refused us: {reason}; check the password or ACL user in SW_REDIS_URL"
        )
    return (
        f"cannot reach Redis at {url}: {reason}; check SW_REDIS_URL (or --redis-url) and that "
        "redis-server runs"
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
