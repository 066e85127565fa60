"""``sw verify`` and ``sw publish``: check a stored chunk set, copy one to S3 (or a folder)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from sw_core.chunks.manifest import MANIFEST_FILE, Manifest
from sw_core.cli.flags import Subparsers, add_cli_flags, settings_from_args
from sw_core.cli.output import data_json
from sw_core.exceptions import SurfingError
from sw_core.progress import Progress, progress_bar
from sw_core.settings import Settings
from sw_core.utils import human_bytes

if TYPE_CHECKING:  # imported by the handlers: torch and minio cost a second at start-up
    from sw_core.chunks.verify import ProgressFn, VerifyReport

#: Settings that these commands take as flags too (S3 access, patience).
STORAGE_FLAGS = [
    "s3_endpoint",
    "s3_access_key",
    "s3_secret_key",
    "s3_secure",
    "s3_region",
    "s3_range_mb",
    "s3_concurrency",
    "timeout_seconds",
    "retry_attempts",
]

_OUTPUT = (
    "Output: one line per bad entry on stdout ('BAD <chunk> (<file>): <problem>'), then a "
    "summary line on stdout ('OK ...' or 'FAILED ...'), or with --json one JSON report; a "
    "progress bar on stderr when it is "
    "a terminal. S3 endpoint and keys come from SW_S3_ENDPOINT, SW_S3_ACCESS_KEY, "
    "SW_S3_SECRET_KEY (or the flags above)."
)
_VERIFY_EXIT = (
    " Exit status: 0 all good; 1 bad entries; 2 the check could not run (no manifest, bad "
    "settings, a manifest that does not match the location's #sha256= pin)."
)
_PUBLISH_EXIT = (
    " Exit status: 0 published and verified; 1 anything failed (damaged local set, upload "
    "error, bad remote copy; the reason on stderr)."
)


def register(subparsers: Subparsers) -> None:
    verify = subparsers.add_parser(
        "verify",
        help="re-hash every chunk of a chunk set in a folder or on S3",
        description=(
            "Check every chunk and file listed in manifest.json: present, right size, right "
            "sha256, and (chunks) a valid safetensors header."
        ),
        epilog=_OUTPUT + _VERIFY_EXIT,
    )
    verify.add_argument("location", metavar="DIR|s3://BUCKET/PREFIX", help="the chunk set")
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    add_cli_flags(verify, STORAGE_FLAGS)
    verify.set_defaults(handler=_verify)

    publish = subparsers.add_parser(
        "publish",
        help="upload a local chunk set to S3 (manifest last), then verify the copy",
        description=(
            "Check each local file against the manifest, upload it, upload manifest.json last, "
            "then re-hash the remote copy."
        ),
        epilog=_OUTPUT + _PUBLISH_EXIT,
    )
    publish.add_argument("folder", type=Path, metavar="DIR", help="local chunk-set folder")
    publish.add_argument(
        "--to", required=True, metavar="s3://BUCKET/PREFIX", help="destination (or a folder)"
    )
    publish.add_argument("--json", action="store_true", help="print the report as JSON")
    publish.add_argument(
        "--create-bucket", action="store_true", help="create the S3 bucket first unless it exists"
    )
    add_cli_flags(publish, STORAGE_FLAGS)
    publish.set_defaults(handler=_publish)


# ---------------------------------------------------------------------- handlers
def _verify(args: argparse.Namespace) -> int:
    return asyncio.run(_verify_async(args.location, settings_from_args(args), args.json))


def _publish(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(
            _publish_async(
                args.folder, args.to, settings_from_args(args), args.create_bucket, args.json
            )
        )
    except SurfingError as exc:
        print(
            f"FAILED publish {args.folder} -> {args.to}: {type(exc).__name__}: {exc}",
            file=sys.stderr,
        )
        return 1


async def _verify_async(location: str, settings: Settings, as_json: bool = False) -> int:
    from sw_core.chunks.chunk_set import ChunkSet
    from sw_core.chunks.verify import verify_chunk_set

    async with await ChunkSet.open(location, settings, with_backup=False) as chunk_set:
        manifest = chunk_set.manifest
        total_bytes = _payload_bytes(manifest)
        with progress_bar(f"verify {manifest.name}", total_bytes, unit_bytes=True) as bar:
            report = await verify_chunk_set(chunk_set.backend, manifest, progress=_forward(bar))
    return _print_report(report, action="verified", as_json=as_json)


async def _publish_async(
    folder: Path,
    destination: str,
    settings: Settings,
    create_bucket: bool = False,
    as_json: bool = False,
) -> int:
    from sw_core.chunks.verify import publish_chunk_set
    from sw_core.storage import backend_from_location

    manifest = Manifest.load(folder)
    backend = backend_from_location(destination, settings)
    ensure = getattr(backend, "ensure_bucket", None)
    if create_bucket and ensure is not None:
        try:
            if await ensure():
                print(f"created bucket {backend.bucket_name}", file=sys.stderr)
        except BaseException:
            await backend.close()
            raise
    manifest_bytes = (folder / MANIFEST_FILE).stat().st_size
    # One bar over both phases: upload (data + manifest), then verify (data).
    total_bytes = 2 * _payload_bytes(manifest) + manifest_bytes
    try:
        with progress_bar(f"publish {manifest.name}", total_bytes, unit_bytes=True) as bar:
            report = await publish_chunk_set(folder, backend, progress=_forward(bar))
    finally:
        await backend.close()
    return _print_report(report, action=f"published from {folder} and verified", as_json=as_json)


# ---------------------------------------------------------------------- helpers
def _payload_bytes(manifest: Manifest) -> int:
    return manifest.total_bytes + sum(f.size_bytes for f in manifest.files)


def _forward(bar: Progress) -> ProgressFn:
    """Turn ``(phase, done, total)`` callbacks into ``bar.advance(delta)`` calls."""
    last_done: dict[str, int] = {}

    def report(phase: str, done_bytes: int, _total_bytes: int) -> None:
        bar.advance(done_bytes - last_done.get(phase, 0))
        last_done[phase] = done_bytes

    return report


def _print_report(report: VerifyReport, *, action: str, as_json: bool = False) -> int:
    if as_json:
        data_json(
            {
                "location": report.location,
                "model": report.model,
                "ok": report.ok,
                "entries_checked": report.entries_checked,
                "bytes_checked": report.bytes_checked,
                "bad": [dataclasses.asdict(bad) for bad in report.bad],
            }
        )
        return 0 if report.ok else 1
    for bad in report.bad:
        print(f"BAD {bad}")
    if report.ok:
        print(
            f"OK {report.location}: {report.model}, {report.entries_checked} entries, "
            f"{human_bytes(report.bytes_checked)} {action}"
        )
        return 0
    print(
        f"FAILED {report.location}: {len(report.bad)} of {report.entries_checked} entries bad",
    )
    sys.stdout.flush()
    return 1
