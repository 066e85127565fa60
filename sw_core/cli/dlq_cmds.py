"""``sw dlq list|show|replay|purge``: the dead-letter stream for operators."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from sw_core.cli.flags import Subparsers, add_cli_flags, settings_from_args
from sw_core.exceptions import JobError
from sw_core.queue_redis import queue_redis_sync

if TYPE_CHECKING:
    from sw_core.pipeline.dlq import DeadLetterQueue


def register(subparsers: Subparsers) -> None:
    _register_dlq(subparsers)


def _register_dlq(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "dlq",
        help="list, show, replay or purge dead letters",
        description=(
            "Dead letters are jobs that failed permanently or ran out of retries (stream "
            "sw:dlq). Replay puts a job back on sw:jobs with attempts reset (its job hash "
            "counts replays); purge deletes them after confirmation."
        ),
    )
    actions = parser.add_subparsers(dest="dlq_action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="the oldest dead letters, one line each")
    listing.add_argument("--count", type=int, default=50, help="most letters shown (50)")
    listing.add_argument("--newest", action="store_true", help="newest first")
    listing.add_argument("--json", action="store_true", help="print JSON")
    show = actions.add_parser("show", help="every field of one dead letter")
    show.add_argument("id", help="dead-letter entry id (from `sw dlq list`)")
    show.add_argument("--json", action="store_true", help="print JSON")
    replay = actions.add_parser(
        "replay",
        help="put dead letters back on the jobs stream",
        description="Exit status: 0 all replayed; 1 a letter was missing or not replayable.",
    )
    replay.add_argument("ids", nargs="*", metavar="ID", help="dead-letter entry ids")
    replay.add_argument("--all", action="store_true", help="every replayable dead letter")
    replay.add_argument(
        "--json",
        action="store_true",
        help='print {"replayed": [...], "skipped": [...], "failed": [...]} as JSON',
    )
    purge = actions.add_parser(
        "purge",
        help="delete every dead letter (asks first)",
        description=(
            "Deletes the dead letters listed at the time of the question (newer ones stay). "
            "Asks for 'yes' on stdin unless --yes; without a terminal or input it refuses "
            "(exit 1)."
        ),
    )
    purge.add_argument("--yes", action="store_true", help="do not ask")
    for sub in (listing, show, replay, purge):
        add_cli_flags(sub, ["redis_url", "key_prefix", "result_ttl_s"])
    parser.set_defaults(handler=_dlq)


def _dlq(args: argparse.Namespace) -> int:

    from sw_core.pipeline.dlq import DeadLetterQueue

    settings = settings_from_args(args)
    client = queue_redis_sync(settings)
    try:
        dlq = DeadLetterQueue(client, settings)
        action = {
            "list": _dlq_list,
            "show": _dlq_show,
            "replay": _dlq_replay,
            "purge": _dlq_purge,
        }[args.dlq_action]
        return action(dlq, args)
    finally:
        client.close()


def _dlq_list(dlq: DeadLetterQueue, args: argparse.Namespace) -> int:
    letters = dlq.list(max(1, args.count), newest_first=args.newest)
    total = dlq.count()
    if args.json:
        print(json.dumps([letter.as_dict() for letter in letters], indent=2, default=str))
        return 0
    # One block per letter, ids whole on their own columns (pasteable into `sw dlq show`),
    # the error wrapped below: fits 80 columns, also when piped.
    console = Console()
    console.print(Text(f"Dead letters: {len(letters)} of {total}", style="bold"))
    now_ms = time.time() * 1000
    for letter in letters:
        age = "" if not letter.last_failure_ms else _age((now_ms - letter.last_failure_ms) / 1000)
        head = Text(no_wrap=False, overflow="fold")
        head.append(letter.id, style="bold")
        head.append(f"  {letter.reason}  {letter.model}/{letter.task}  ")
        head.append(f"attempts {letter.attempts}  replays {letter.replays}  {age} ago", style="dim")
        console.print(head)
        console.print(Text(f"  job {letter.job_id}", overflow="fold"))
        error = Text(f"  {letter.error_type}: {letter.error[:300]}", style="red", overflow="fold")
        console.print(error)
    return 0


def _dlq_show(dlq: DeadLetterQueue, args: argparse.Namespace) -> int:
    try:
        letter = dlq.show(args.id)
    except JobError as exc:
        print(f"sw dlq show: {exc}", file=sys.stderr)
        return 1
    data = letter.as_dict()
    if args.json:
        print(json.dumps(data, indent=2, default=str))
        return 0
    table = Table(title=f"Dead letter {letter.id}", show_header=False)
    table.add_column("field", no_wrap=True, style="bold")
    table.add_column("value", overflow="fold")
    for name, value in data.items():
        text = json.dumps(value, default=str) if isinstance(value, (dict, list)) else str(value)
        table.add_row(name, text)
    Console().print(table)
    return 0


def _dlq_replay(dlq: DeadLetterQueue, args: argparse.Namespace) -> int:
    if args.all == bool(args.ids):
        print("sw dlq replay: give dead-letter ids or --all (not both)", file=sys.stderr)
        return 2
    report: dict[str, list[dict[str, Any]]] = {"replayed": [], "skipped": [], "failed": []}
    if args.all:
        done, skipped = dlq.replay_all()
        report["replayed"] = [{"id": letter, "job_entry": entry} for letter, entry in done]
        report["skipped"] = [{"id": x.id, "reason": x.why_not_replayable()} for x in skipped]
    else:
        for letter_id in args.ids:
            try:
                new_id, replays = dlq.replay(letter_id)
            except JobError as exc:
                report["failed"].append({"id": letter_id, "error": str(exc)})
                continue
            report["replayed"].append({"id": letter_id, "job_entry": new_id, "replays": replays})
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        _print_replays(report, summary=args.all)
    return 1 if report["failed"] else 0


def _print_replays(report: dict[str, list[dict[str, Any]]], *, summary: bool) -> None:
    for row in report["replayed"]:
        count = f" (replay #{row['replays']})" if "replays" in row else ""
        print(f"replayed {row['id']} -> jobs entry {row['job_entry']}{count}")
    for row in report["skipped"]:
        print(f"skipped {row['id']}: {row['reason']}", file=sys.stderr)
    for row in report["failed"]:
        print(f"sw dlq replay: {row['error']}", file=sys.stderr)
    if summary:
        n_done, n_left = len(report["replayed"]), len(report["skipped"])
        print(f"{n_done} replayed, {n_left} left in the dead-letter stream")


def _dlq_purge(dlq: DeadLetterQueue, args: argparse.Namespace) -> int:
    last = dlq.last_id()
    if last is None:
        print("no dead letters")
        return 0
    count = dlq.count()
    if not args.yes:
        print(
            f"Delete {count} dead letters (up to {last})? Type 'yes': ",
            end="",
            file=sys.stderr,
            flush=True,
        )
        answer = sys.stdin.readline() if sys.stdin is not None else ""
        if not answer:
            print("\nsw dlq purge: no answer on stdin; refusing (pass --yes)", file=sys.stderr)
            return 1
        if answer.strip().lower() not in ("y", "yes"):
            print("sw dlq purge: not confirmed; nothing deleted", file=sys.stderr)
            return 1
    deleted = dlq.purge(last)
    print(f"purged {deleted} dead letters")
    return 0


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 86400:.0f}d"
