"""``sw submit``, ``sw result``, ``sw register`` and ``sw models``: the job pipeline by hand."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TYPE_CHECKING, Any

from sw_core.cli.flags import Subparsers, add_cli_flags, settings_from_args
from sw_core.cli.output import data, data_json, say
from sw_core.exceptions import (
    ConfigError,
    JobCancelledError,
    JobExpiredError,
    JobTimeoutError,
    SurfingError,
)
from sw_core.pipeline.job_checks import coerce_params
from sw_core.queue_redis import queue_redis
from sw_core.schema import TASKS, JobStatus, check_params, check_task
from sw_core.settings import Settings

if TYPE_CHECKING:
    from producer import Producer

#: Settings these commands take as flags too.
REDIS_FLAGS = ["redis_url", "key_prefix"]
#: Storage settings ``sw register`` takes as flags to read the chunk set it registers.
STORAGE_FLAGS = ["s3_endpoint", "s3_access_key", "s3_secret_key", "s3_secure", "s3_region"]

#: Exit status when a job was dead-lettered / did not finish in time / is not known at all /
#: the queue was full / was cancelled / passed its deadline.
EXIT_DEAD = 1
EXIT_NOT_DONE = 3
EXIT_UNKNOWN = 4
EXIT_QUEUE_FULL = 5
EXIT_CANCELLED = 6
EXIT_EXPIRED = 7
#: A job's final status -> the exit status of ``sw result``.
_FINAL_EXIT = {"dead": EXIT_DEAD, "cancelled": EXIT_CANCELLED, "expired": EXIT_EXPIRED}

_RESULT_EXIT = (
    "Exit status: 0 done; 1 the job was dead-lettered (why on stderr); 6 it was cancelled; "
    "7 it passed its deadline (expired); 3 not finished within --timeout (or, without "
    "--wait, not finished yet); 4 no such job (never submitted, or expired after "
    "SW_RESULT_TTL_S): do not poll again; 2 bad input or settings."
)


def register(subparsers: Subparsers) -> None:
    _register_submit(subparsers)
    _register_result(subparsers)
    _register_register(subparsers)
    _register_models(subparsers)


def _register_submit(subparsers: Subparsers) -> None:
    submit = subparsers.add_parser(
        "submit",
        help="submit a job to the pipeline",
        description=(
            "Validate a job and add it to the jobs stream; prints its job id (with --json: "
            '{"job_id": ...}). With --wait, stdout gets only the result, as one line of JSON '
            "(the job id goes to stderr), so `sw submit ... --wait | jq` works; with --stream, "
            "the generated text as it comes, then the result."
        ),
        epilog=_RESULT_EXIT
        + " 5: the queue is full (SW_MAX_QUEUED_JOBS), nothing was submitted: try later.",
    )
    submit.add_argument("model", metavar="MODEL", help="registered model name")
    submit.add_argument("--task", choices=TASKS, default="embed", help="default: embed")
    submit.add_argument(
        "--text", action="append", default=[], metavar="TEXT", help="one input (repeatable)"
    )
    submit.add_argument(
        "--tokens",
        action="append",
        default=[],
        metavar="IDS",
        help="one forward input as comma-separated token ids (repeatable)",
    )
    submit.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="K=V",
        help="task parameter, e.g. max_new_tokens=20 or repetition_penalty=1.3 (repeatable)",
    )
    submit.add_argument(
        "--stop",
        action="append",
        default=[],
        metavar="TEXT",
        help="generate: a stop sequence, the text ends before it (repeatable, up to 4)",
    )
    submit.add_argument("--wait", action="store_true", help="wait for the result and print it")
    submit.add_argument(
        "--stream",
        action="store_true",
        help="generate: print the text as it comes, then the result as JSON (implies --wait)",
    )
    submit.add_argument(
        "--deadline",
        type=float,
        default=None,
        metavar="S",
        help="the job must end within S seconds (not started later; generate stops then)",
    )
    submit.add_argument("--timeout", type=float, default=60.0, metavar="S", help="default: 60")
    submit.add_argument("--json", action="store_true", help='print {"job_id": ...} as JSON')
    add_cli_flags(submit, REDIS_FLAGS)
    submit.set_defaults(handler=_submit)


def _register_result(subparsers: Subparsers) -> None:
    result = subparsers.add_parser(
        "result",
        help="show a job's status and result",
        description="Print the job's status (and result once done) as JSON.",
        epilog=_RESULT_EXIT,
    )
    result.add_argument("job_id", metavar="JOB_ID")
    result.add_argument("--wait", action="store_true", help="wait until the job ends")
    result.add_argument("--timeout", type=float, default=60.0, metavar="S", help="default: 60")
    add_cli_flags(result, REDIS_FLAGS)
    result.set_defaults(handler=_result)


def _register_register(subparsers: Subparsers) -> None:
    reg = subparsers.add_parser(
        "register",
        help="register a model: NAME -> s3://BUCKET/PREFIX or a folder",
        description=(
            "Tell the workers where a model's chunk set lives (Redis hash sw:models). The "
            "location is checked first: its manifest.json must load (S3 access from the "
            "SW_S3_* settings or the flags below)."
        ),
        epilog="Exit status: 0 registered; 2 bad name or location, no chunk set there, "
        "storage or Redis unreachable.",
    )
    reg.add_argument("name", metavar="NAME")
    reg.add_argument("location", metavar="LOCATION", help="s3://BUCKET/PREFIX or a folder")
    reg.add_argument(
        "--no-check",
        action="store_true",
        help="register without reading the chunk set (a folder on other machines only, an "
        "S3 location not reachable from here)",
    )
    reg.add_argument("--json", action="store_true", help="print name, location, tasks as JSON")
    reg.add_argument(
        "--pin",
        action="store_true",
        help="pin the model to the manifest read now (LOCATION#sha256=...): workers then "
        "refuse a chunk set that changed since, until it is registered again",
    )
    add_cli_flags(reg, REDIS_FLAGS + STORAGE_FLAGS)
    reg.set_defaults(handler=_register)


def _register_models(subparsers: Subparsers) -> None:
    models = subparsers.add_parser(
        "models",
        help="list registered models",
        description="One line per model: NAME LOCATION (from sw:models and SW_MODELS).",
    )
    models.add_argument("--json", action="store_true", help="print {NAME: LOCATION} as JSON")
    add_cli_flags(models, REDIS_FLAGS)
    models.set_defaults(handler=_models)


# ---------------------------------------------------------------------------- handlers
def _submit(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    inputs: list[Any]
    if args.task == "forward":
        if args.text or not args.tokens:
            raise ConfigError("a forward job takes --tokens 1,2,3 (repeatable), not --text")
        inputs = [_token_ids(text) for text in args.tokens]
    else:
        if args.tokens or not args.text:
            raise ConfigError(f"a {args.task} job takes --text (repeatable)")
        inputs = list(args.text)
    task = check_task(args.task)
    params = coerce_params(task, _param_pairs(args.param), settings)
    if args.stop:
        if args.task != "generate":
            raise ConfigError(f"--stop is for generate jobs, not {args.task}")
        if "stop" in params:
            raise ConfigError("give stop sequences with --stop or --param stop=TEXT, not both")
        params = check_params(task, {**params, "stop": list(args.stop)}, settings)
    return asyncio.run(_submit_async(settings, args, inputs, params))


async def _submit_async(
    settings: Settings, args: argparse.Namespace, inputs: list[Any], params: dict[str, Any]
) -> int:
    from producer import Producer
    from sw_core.cli.serving_cmds import print_stream
    from sw_core.exceptions import QueueFullError

    async with Producer(settings=settings) as producer:
        try:
            job_id = await producer.submit(
                args.model, args.task, inputs, deadline_s=args.deadline, **params
            )
        except QueueFullError as exc:
            say(f"sw submit: QueueFullError: {exc}")
            return EXIT_QUEUE_FULL
        if not (args.wait or args.stream):
            if args.json:
                data_json({"job_id": job_id})
            else:
                data(job_id)
            return 0
        say(f"sw submit: job {job_id} queued; waiting for its result")
        if args.stream:
            await print_stream(producer, job_id, args.timeout)
        return await _wait_and_print(producer, job_id, args.timeout)


def _result(args: argparse.Namespace) -> int:
    return asyncio.run(_result_async(settings_from_args(args), args))


async def _result_async(settings: Settings, args: argparse.Namespace) -> int:
    from producer import Producer

    async with Producer(settings=settings) as producer:
        status = await producer.status(args.job_id)
        if status["status"] == "unknown":
            print(
                f"sw result: no job {args.job_id}: never submitted, or expired "
                f"(results are kept SW_RESULT_TTL_S={settings.result_ttl_s} s)",
                file=sys.stderr,
            )
            return EXIT_UNKNOWN
        if args.wait:
            return await _wait_and_print(producer, args.job_id, args.timeout)
        if status["status"] == JobStatus.DONE:
            status["result"] = await producer.result(args.job_id, timeout_s=1)
        data_json(status)
        if status["status"] in _FINAL_EXIT:
            return _FINAL_EXIT[status["status"]]
        return 0 if status["status"] == JobStatus.DONE else EXIT_NOT_DONE


async def _wait_and_print(producer: Producer, job_id: str, timeout_s: float) -> int:
    try:
        result = await producer.result(job_id, timeout_s=timeout_s)
    except JobTimeoutError as exc:
        print(f"sw: {exc}", file=sys.stderr)
        return EXIT_NOT_DONE
    except (JobCancelledError, JobExpiredError) as exc:
        print(f"sw: {exc}", file=sys.stderr)
        return EXIT_CANCELLED if isinstance(exc, JobCancelledError) else EXIT_EXPIRED
    except SurfingError as exc:
        print(f"sw: job {job_id} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_DEAD
    data_json(result)
    return 0


def _register(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)

    async def run() -> tuple[str, str, tuple[str, ...] | None, str | None]:

        from sw_core.architectures import check_architecture
        from sw_core.pipeline.registry import ModelRegistry, tasks_of
        from sw_core.storage.location import check_location, pin_location
        from sw_core.utils import human_bytes

        if args.pin and args.no_check:
            raise ConfigError("--pin reads the manifest: it cannot go with --no-check")
        location, about, tasks, synthetic = args.location, "", None, None
        if not args.no_check:
            location = check_location(location, must_exist=True)
            manifest, raw = await _read_manifest(location, settings)
            check_architecture(manifest.architecture, f"chunk set {manifest.name!r} at {location}")
            about = (
                f" (chunk set {manifest.name!r}: {len(manifest.chunks)} chunks, "
                f"{human_bytes(manifest.total_bytes)})"
            )
            tasks = tasks_of(manifest)
            synthetic = manifest.describe_synthetic()
            if synthetic:
                about = about[:-1] + "; SYNTHETIC, " + synthetic.removeprefix("synthetic: ") + ")"
            if args.pin:
                location = pin_location(location, raw)
        async with queue_redis(settings) as redis:
            registry = ModelRegistry(redis, settings)
            location = await registry.register(
                args.name, location, tasks=tasks, synthetic=synthetic
            )
            return location, about, tasks, synthetic

    location, about, tasks, synthetic = asyncio.run(run())
    if args.json:
        data_json(
            {
                "name": args.name,
                "location": location,
                "tasks": list(tasks or []),
                "synthetic": synthetic,
            }
        )
    else:
        data(f"{args.name} -> {location}{about}")
    if synthetic:
        say(
            f"sw register: warning: {args.name} is {synthetic}: it computes at the real "
            "model's cost and answers nonsense; the gateway's model list marks it"
        )
    return 0


async def _read_manifest(location: str, settings: Settings) -> tuple[Any, bytes]:
    """The manifest at ``location`` and its bytes (ModelError when there is no chunk set;
    SecurityError when the location is pinned to another manifest)."""
    from sw_core.chunks.chunk_set import ChunkSet

    async with await ChunkSet.open(location, settings, with_backup=False) as chunk_set:
        return chunk_set.manifest, chunk_set.manifest_bytes


def _models(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)

    async def run() -> dict[str, str]:

        from sw_core.pipeline.registry import ModelRegistry

        async with queue_redis(settings) as redis:
            return await ModelRegistry(redis, settings).all()

    models = asyncio.run(run())
    if args.json:
        data_json(models)
        return 0
    if not models:
        say("no models registered: sw register NAME LOCATION")
    width = max((len(name) for name in models), default=0)
    for name, location in models.items():
        data(f"{name:<{width}}  {location}")
    return 0


# ---------------------------------------------------------------------------- helpers
def _param_pairs(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"--param {item!r} is not KEY=VALUE")
        out[name.strip()] = value
    return out


def _token_ids(text: str) -> list[int]:
    try:
        return [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise ConfigError(f"--tokens {text!r} is not a comma-separated list of ints") from None
