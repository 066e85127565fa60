"""S3 read speed: S3Backend's concurrent ranged GETs against one plain GET, side by side.

Starts its own S3 endpoint on loopback (a real MinIO is not available here), with one
object of ``--size-mb`` MB:

- ``--server moto`` (default): moto's S3 server, as in the tests. Caveat: moto reads the
  whole object under a lock for every ranged GET, so ranges cost O(ranges x size) there;
- ``--server static``: a minimal range-capable GET server in a separate process, serving
  the object from memory (measures the client side); ``--conn-mbps N`` caps each
  connection at N MB/s, as S3 does per connection (~50-100 MB/s), to show what
  concurrent ranges buy on a real network.

Then times, in interleaved repetitions (the order rotates each round):

- ``S3Backend ranged (R MiB x C)``: :meth:`S3Backend.load` with ``range_size_bytes`` R and
  ``concurrency`` C, into one preallocated bytearray;
- ``S3Backend single GET``: the same backend with a range larger than the object;
- ``minio get_object().read()``: the SDK's plain whole-object read, bytes discarded.

Prints medians, MB/s (10^6 bytes) and the ratio ranged / single. In ``make bench``
(:func:`figures`) the static server runs twice: uncapped and capped at 100 MB/s per connection.

Usage: ``.venv/bin/python bench/s3_range_read.py [--reps 7] [--size-mb 48] [--range-mb 8]
[--concurrency 4] [--server moto|static] [--conn-mbps 0]``
"""

from __future__ import annotations

import argparse
import asyncio
import http.server
import io
import logging
import multiprocessing
import os
import socket
import statistics
import time
from collections.abc import Awaitable, Callable

from figures import Figure, Profile  # bench/, beside this script
from moto.server import ThreadedMotoServer
from timing import rotated

from sw_core.local.redis_server import free_port
from sw_core.retry import RetryPolicy
from sw_core.storage import S3Backend

BUCKET = "sw-bench"
KEY = "chunk.safetensors"


def serve_static(port: int, size_bytes: int, conn_mbps: float) -> None:
    """A GET/HEAD server for one object (any path) with Range support; runs in a process."""
    payload = memoryview(os.urandom(size_bytes))
    block = 1 << 20

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            return None

        def _headers(self) -> tuple[int, int]:
            begin, end = 0, size_bytes - 1
            spec = self.headers.get("Range")
            if spec:
                first, _, last = spec.removeprefix("bytes=").partition("-")
                begin, end = int(first), min(int(last or end), size_bytes - 1)
            self.send_response(206 if spec else 200)
            self.send_header("Content-Length", str(end - begin + 1))
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("ETag", '"static"')
            if spec:
                self.send_header("Content-Range", f"bytes {begin}-{end}/{size_bytes}")
            self.end_headers()
            return begin, end

        def do_HEAD(self) -> None:
            self._headers()

        def do_GET(self) -> None:
            begin, end = self._headers()
            offset = begin
            while offset <= end:
                started = time.perf_counter()
                stop = min(offset + block, end + 1)
                self.wfile.write(payload[offset:stop])
                if conn_mbps:
                    budget_s = (stop - offset) / (conn_mbps * 1e6)
                    time.sleep(max(0.0, budget_s - (time.perf_counter() - started)))
                offset = stop

    http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


def start_server(args: argparse.Namespace, port: int, size_bytes: int) -> Callable[[], None]:
    """Start the chosen server; return its stop function."""
    if args.server == "moto":
        moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        moto.start()
        return moto.stop
    process = multiprocessing.get_context("spawn").Process(
        target=serve_static, args=(port, size_bytes, args.conn_mbps), daemon=True
    )
    process.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    return process.kill


async def run(args: argparse.Namespace) -> dict[str, float]:
    """Time the cases; their medians in seconds (the ranged case first, then the single GET)."""
    port = free_port()
    size_bytes = args.size_mb * 1_000_000
    stop = start_server(args, port, size_bytes)
    try:
        common = {
            "endpoint": f"127.0.0.1:{port}",
            "access_key": "testing",
            "secret_key": "testing",
            "retry": RetryPolicy(attempts=1),
            "timeout_s": 120,
        }
        payload = os.urandom(size_bytes)
        ranged = S3Backend(
            BUCKET,
            range_size_bytes=args.range_mb << 20,
            concurrency=args.concurrency,
            **common,  # type: ignore[arg-type]
        )
        single = S3Backend(
            BUCKET,
            range_size_bytes=size_bytes + 1,
            concurrency=1,
            **common,  # type: ignore[arg-type]
        )
        if args.server == "moto":
            ranged.client.make_bucket(BUCKET)
            ranged.client.put_object(BUCKET, KEY, io.BytesIO(payload), size_bytes)

        async def sdk_read() -> None:
            def read() -> None:
                response = ranged.client.get_object(BUCKET, KEY)
                try:
                    assert len(response.read()) == size_bytes
                finally:
                    response.close()
                    response.release_conn()

            await asyncio.to_thread(read)

        async def backend_read(backend: S3Backend) -> None:
            data = await backend.load(KEY)
            assert len(data) == size_bytes

        cases: dict[str, Callable[[], Awaitable[None]]] = {
            f"S3Backend ranged ({args.range_mb} MiB x {args.concurrency})": lambda: backend_read(
                ranged
            ),
            "S3Backend single GET": lambda: backend_read(single),
            "minio get_object().read()": sdk_read,
        }
        first = await ranged.load(KEY)  # correctness once, outside the timing
        assert first == (payload if args.server == "moto" else await single.load(KEY))
        times: dict[str, list[float]] = {name: [] for name in cases}
        names = list(cases)
        for rep in range(args.reps):
            for name in rotated(names, rep):
                started = time.perf_counter()
                await cases[name]()
                times[name].append(time.perf_counter() - started)

        throttle = f", {args.conn_mbps:g} MB/s per connection" if args.conn_mbps else ""
        print(
            f"object {args.size_mb} MB on {args.server} server (loopback{throttle}), "
            f"{args.reps} interleaved reps"
        )
        medians = {name: statistics.median(samples) for name, samples in times.items()}
        for name, median_s in medians.items():
            print(
                f"  {name:<36} median {median_s * 1000:8.1f} ms  {size_bytes / median_s / 1e6:7.1f} MB/s"
            )
        ranged_name, single_name = names[0], names[1]
        print(
            f"  ratio ranged / single GET throughput: {medians[single_name] / medians[ranged_name]:.2f}x"
        )
        await ranged.close()
        await single.close()
        return medians
    finally:
        stop()


def figures(profile: Profile) -> list[Figure]:
    """Figures for ``bench/run.py``: the static server uncapped (the client's own cost) and
    capped at 100 MB/s per connection (what concurrent ranges buy against S3)."""
    out: list[Figure] = []
    reps = profile.pick(5, 9)
    for cap in (0, 100):
        args = argparse.Namespace(
            reps=reps, size_mb=48, range_mb=8, concurrency=4, server="static", conn_mbps=cap
        )
        medians = asyncio.run(run(args))
        ranged_s, single_s = list(medians.values())[:2]
        where = f"{cap} MB/s per connection" if cap else "uncapped"
        key = f"capped{cap}" if cap else "uncapped"
        out += [
            Figure(
                f"s3_range_read.{key}.ranged_vs_single",
                single_s / ranged_s,
                "x",
                f"S3 ranged (8 MiB x 4) / single GET, speed, {where}",
                note=f"48 MB object, static range server on loopback, {reps} interleaved rounds",
            ),
            Figure(
                f"s3_range_read.{key}.ranged_mb_s",
                48 / ranged_s,
                "MB/s",
                f"S3 ranged read, {where}",
            ),
        ]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--size-mb", type=int, default=48)
    parser.add_argument("--range-mb", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--server", choices=["moto", "static"], default="moto")
    parser.add_argument("--conn-mbps", type=float, default=0, help="static: per-connection cap")
    args = parser.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
