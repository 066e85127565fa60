"""Models bigger than memory: per-token wall against the storage floor, measured in one run.

For each case (a synthetic chunk set of a real shape, written by ``sw synth``):

1. the folder's cold sequential read bandwidth: every chunk file once, in sweep order, with
   ``O_DIRECT`` (64 MiB requests into one reused aligned buffer; the page cache plays no
   part), measured before each engine run (interleaved);
2. the engine in a child process (``bench/big_worker.py``: the worker's continuous-batching
   session over the folder) for one request and for ``--batch`` concurrent requests, rounds
   interleaved (the order flips each round); per decode step its wall time and the bytes it
   read from the folder;
3. the floor of each step = its bytes / the bandwidth (the median of this run's reads), and
   wall / floor; one step of ``--batch`` requests against one request's step;
4. the worker's peak RSS (``VmHWM``) against its budget, its major faults, and the page
   cache (``Cached`` of ``/proc/meminfo``) before, at most and after each run; the load
   average before and after.

Cases: ``--shape``/``--layers`` (the big one; ``--fits-shape``/``--fits-layers`` for one that
fits in RAM, run with buffered reads and direct reads for comparison). Everything it writes
is deleted at the end unless ``--keep``. Prints a report and, with ``--json PATH``, the
figures.

Run: ``.venv/bin/python bench/big.py`` (defaults: the Llama-3-70B shape with its linear
layers in packed int4, 41.7 GB = 1.64x this machine's 24 GiB, at a 4096 MiB budget; and
Llama-3-8B in bfloat16, 16 GB; needs 43 GB of free disk; about an hour on a quiet machine).
``--dtype bfloat16 --layers 20`` gives a 38.4 GB bfloat16 cut of the 70B shape instead.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from big_report import print_case, summarize  # noqa: E402  (bench/big_report.py, beside this script)

MIB = 1 << 20


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


def meminfo_kib(field: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def synth(shape: str, layers: int | None, dtype: str, folder: Path) -> dict[str, Any]:
    """Write the chunk set (unless an earlier ``--keep`` left the same one there)."""
    from sw_core.chunks.manifest import Manifest
    from sw_core.synth import synth_chunk_set

    if (folder / "manifest.json").exists():
        manifest = Manifest.load(folder)
        mark = manifest.synthetic or {}
        if mark.get("shape") == shape and mark.get("dtype", "bfloat16") == dtype:
            return {"bytes": manifest.total_bytes, "write_s": None, "reused": True}
    started = time.perf_counter()
    manifest = synth_chunk_set(shape, str(folder), layers=layers, dtype=dtype)
    took = time.perf_counter() - started
    return {"bytes": manifest.total_bytes, "write_s": took, "reused": False}


def cold_read_bandwidth(folder: Path) -> float:
    """Bytes/s of one ``O_DIRECT`` pass over every chunk file in manifest (sweep) order."""
    import mmap

    from sw_core.chunks.manifest import Manifest
    from sw_core.storage.direct import PIECE_BYTES

    manifest = Manifest.load(folder)
    buffer = mmap.mmap(-1, PIECE_BYTES)
    view = memoryview(buffer)
    total = 0
    started = time.perf_counter()
    for chunk in manifest.chunks:
        fd = os.open(folder / chunk.file, os.O_RDONLY | os.O_DIRECT)
        try:
            offset = 0
            while offset < chunk.size_bytes:
                n = os.preadv(fd, [view], offset)
                if n <= 0:
                    break
                offset += n
            total += chunk.size_bytes
        finally:
            os.close(fd)
    took = time.perf_counter() - started
    view.release()
    buffer.close()
    return total / took


class Sampler:
    """Samples a process's RSS and major faults and the page cache every 0.2 s."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.cached_kib = [meminfo_kib("Cached")]
        self.rss_kib: list[int] = []
        self.hwm_kib = 0
        self.majflt = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            try:
                status = Path(f"/proc/{self.pid}/status").read_text()
                stat = Path(f"/proc/{self.pid}/stat").read_text()
            except OSError:
                return
            fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            if "VmRSS" not in fields:  # exited, not yet reaped
                return
            self.rss_kib.append(int(fields["VmRSS"].split()[0]))
            self.hwm_kib = int(fields["VmHWM"].split()[0])
            self.majflt = int(stat.rpartition(")")[2].split()[9])
            self.cached_kib.append(meminfo_kib("Cached"))

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join(timeout=5)
        return {
            "peak_rss_mb": self.hwm_kib / 1024,
            "major_faults": self.majflt,
            "cached_before_mb": self.cached_kib[0] / 1024,
            "cached_max_mb": max(self.cached_kib) / 1024,
            "cached_after_mb": meminfo_kib("Cached") / 1024,
        }


def run_worker(folder: Path, requests: int, args: argparse.Namespace, mode: str) -> dict:
    """One worker run; ``mode`` is a ``SW_DIRECT_IO`` value, or ``cache`` (through a Redis
    chunk cache of ``--cache-mb``, misses read past the page cache)."""
    direct_io = "on" if mode == "cache" else mode
    command = [
        sys.executable,
        str(REPO / "bench" / "big_worker.py"),
        str(folder),
        f"--budget-mb={args.budget_mb}",
        f"--prefetch={args.prefetch}",
        f"--direct-io={direct_io}",
        f"--requests={requests}",
        f"--tokens={args.tokens}",
        f"--prompt-tokens={args.prompt_tokens}",
        f"--cache-mb={args.cache_mb if mode == 'cache' else 0}",
    ]
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(REPO)}
    before = load_average()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    sampler = Sampler(proc.pid)
    out, err = proc.communicate()
    memory = sampler.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"worker failed ({proc.returncode}):\n{err.decode()[-3000:]}")
    result = json.loads(out.decode().strip().splitlines()[-1])
    result.update(memory, requests=requests, load_before=before, load_after=load_average())
    return result


def run_case(label: str, folder: Path, args: argparse.Namespace, modes: list[str]) -> dict:
    """Interleaved rounds of (bandwidth, 1 request, N requests) for each read mode."""
    runs: dict[str, list[dict]] = {}
    bandwidths: list[float] = []
    for round_no in range(args.rounds):
        order = [1, args.batch] if round_no % 2 == 0 else [args.batch, 1]
        for mode in modes:
            for requests in order:
                bandwidths.append(cold_read_bandwidth(folder))
                print(
                    f"  {label} round {round_no + 1}: {mode} reads, {requests} request(s) "
                    f"(read bandwidth {bandwidths[-1] / 1e9:.2f} GB/s, load "
                    f"{load_average()[0]:.1f})",
                    flush=True,
                )
                runs.setdefault(f"{mode}:{requests}", []).append(
                    run_worker(folder, requests, args, mode)
                )
    return {"label": label, "bandwidths": bandwidths, "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="llama-3-70b")
    parser.add_argument("--layers", type=int, default=None, help="blocks (default: all)")
    parser.add_argument(
        "--dtype", default="int4", choices=["int4", "bfloat16"], help="of the big case"
    )
    parser.add_argument("--fits-shape", default="llama-3-8b", help="'' skips the fitting case")
    parser.add_argument("--fits-layers", type=int, default=None)
    parser.add_argument("--budget-mb", type=int, default=4096)
    parser.add_argument("--prefetch", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=4, help="decode steps timed per run")
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--dir", type=Path, default=REPO / ".bench-big")
    parser.add_argument("--keep", action="store_true", help="keep the chunk sets")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument(
        "--cache-mb",
        type=int,
        default=0,
        help="also run the fitting case through a Redis chunk cache this big (smaller than "
        "the set: hits for what it holds, the rest read from the folder past it)",
    )
    args = parser.parse_args()

    memory = meminfo_kib("MemTotal") * 1024
    cases = [("big", args.shape, args.layers, args.dtype, ["auto"])]
    if args.fits_shape:
        modes = ["off", "on"] + (["cache"] if args.cache_mb else [])
        cases.append(("fits", args.fits_shape, args.fits_layers, "bfloat16", modes))
    print(
        f"machine: {os.cpu_count()} cores, {memory / 2**30:.1f} GiB RAM, "
        f"{shutil.disk_usage(args.dir.parent).free / 1e9:.0f} GB free disk; "
        f"load {load_average()}",
        flush=True,
    )
    report: dict[str, Any] = {"memory_bytes": memory, "args": vars(args) | {"dir": str(args.dir)}}
    try:
        for label, shape, layers, dtype, modes in cases:
            folder = args.dir / f"{shape}-{layers or 'all'}-{dtype}"
            written = synth(shape, layers, dtype, folder)
            print(
                f"{label}: {shape} ({layers or 'all'} layers, {dtype}), "
                f"{written['bytes'] / 1e9:.1f} GB "
                f"= {written['bytes'] / memory:.2f}x RAM; written in "
                f"{written['write_s'] or 0:.0f} s",
                flush=True,
            )
            case = run_case(label, folder, args, modes)
            case.update(shape=shape, layers=layers, dtype=dtype, set_bytes=written["bytes"])
            case["synth"] = written
            case["summary"] = summarize(case, args)
            print_case(case, args)
            report[label] = case
            if not args.keep:
                shutil.rmtree(folder, ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(args.dir, ignore_errors=True)
    report["load_end"] = load_average()
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str))
    print(f"load average at the end: {report['load_end']}")


if __name__ == "__main__":
    main()
