"""What a streamed token competes with on 2 cores: the fetch's core, not the memory.

While chunks stream, one core reads and hashes them (copies from the page cache, BLAKE3)
and the other computes. This measures, side by side in one run (medians of interleaved
rounds), what that costs the compute:

- **copy bandwidth**: a 256 MiB ``memcpy`` alone, and two at once in two processes (each
  process's rate): whether the cores share a memory bandwidth the copies exhaust;
- **a resident token beside a busy core**: packed SmolLM2 kept resident (nothing streamed),
  16 greedy tokens, on 2 intra-op threads and on 1 (``SW_COMPUTE_THREADS``), alone and while
  another process copies 256 MiB buffers in a loop: an OpenMP team of 2 then waits at every
  op for its member the copier descheduled, a team of 1 does not (why the engine computes
  on one core fewer while chunks stream).

Usage: ``.venv/bin/python bench/contention.py [--rounds 3] [--work DIR]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np

COPY_MIB = 256


def copy_rate_gbps(seconds: float = 2.0) -> float:
    """GB/s of repeated ``COPY_MIB`` copies for ``seconds`` (bytes copied / wall time)."""
    source = np.ones(COPY_MIB << 20, dtype=np.uint8)
    target = np.empty_like(source)
    np.copyto(target, source)
    copies, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        np.copyto(target, source)
        copies += 1
    return copies * source.nbytes / (time.perf_counter() - started) / 1e9


def copier(seconds: float) -> subprocess.Popen[str]:
    """A process copying buffers for ``seconds``; prints its rate in GB/s at the end."""
    code = f"import contention as m; print(m.copy_rate_gbps({seconds}))"
    return subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parent,
        stdout=subprocess.PIPE,
        text=True,
    )


async def token_ms(work: Path, rounds: int) -> dict[str, list[float]]:
    """Packed SmolLM2 resident on 2 and 1 intra-op threads: ms per token alone and beside a
    copying process."""
    from packed_sets import chunk_set
    from prompts import chat_ids
    from transformers import AutoTokenizer

    from sw_core.engine import StreamingEngine
    from sw_core.local.demo import QUESTIONS

    folder, _ = chunk_set(work, "gguf")
    engine = await StreamingEngine.open(str(folder), memory_budget_mb=4096)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    request = [{"input_ids": chat_ids(tokenizer, QUESTIONS[2]), "max_new_tokens": 16}]
    await engine.run_async("generate", request)
    sides = [(t, beside) for t in (2, 1) for beside in (False, True)]
    out: dict[str, list[float]] = {
        f"{t} thread{'s' if t > 1 else ''}, {'beside a copying process' if b else 'alone'}": []
        for t, b in sides
    }
    try:
        for _ in range(rounds):
            for (threads, beside), side in zip(sides, out, strict=True):
                engine.settings = engine.settings.replace(compute_threads=threads)
                busy = copier(30) if beside else None
                if busy is not None:
                    time.sleep(1.0)  # the copier is running
                started = time.perf_counter()
                result = await engine.run_async("generate", request)
                wall = time.perf_counter() - started
                out[side].append(wall / len(result[0]["token_ids"]) * 1e3)
                if busy is not None:
                    busy.kill()
                    busy.wait()
    finally:
        await engine.aclose()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", help="folder for the packed chunk set (default: temporary)")
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()}")
    alone, pair = [], []
    for _ in range(args.rounds):
        alone.append(copy_rate_gbps())
        both = [copier(2.0), copier(2.0)]
        pair.extend(float(p.communicate()[0]) for p in both)
    print(
        f"copy {COPY_MIB} MiB: alone {statistics.median(alone):.1f} GB/s; two processes at "
        f"once {statistics.median(pair):.1f} GB/s each"
    )
    with tempfile.TemporaryDirectory(prefix="sw-bench-contention-") as tmp:
        times = asyncio.run(token_ms(Path(args.work or tmp), args.rounds))
    for side, values in times.items():
        print(
            f"packed SmolLM2 resident, {side}: {statistics.median(values):.1f} ms "
            f"per token {[round(v) for v in values]}"
        )
    print(f"load average at the end: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
