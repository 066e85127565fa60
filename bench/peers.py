"""This engine against the peers a user would pick instead, on the same weights and prompt.

SmolLM2-135M-Instruct from the bundled GGUF, written once as a transformers folder
(safetensors, float32), the demo's chat prompt, greedy decoding on CPU. Systems:

- ``airllm``: AirLLM 4.x (``airllm.AutoModel``, ``device="cpu"``): it streams every layer
  from its layer shards at every decode step. Its shards are built once, before timing.
- ``accelerate``: transformers with accelerate's disk offload (``device_map="auto"``,
  ``max_memory`` at the engine's budget, ``offload_folder``): the layers that do not fit are
  read from the offload folder at every step.
- ``engine-folder``: this engine at a budget that keeps one block resident besides the
  embeddings/head (the packed set cut with row shards of about a block, 2.2 MiB; a KV-cache cap
  that runs the 16 requests as one batch), chunks from the chunk-set folder
  (BLAKE3-verified reads).
- ``engine-redis``: the same, chunks from the Redis chunk cache (filled beforehand by this
  process with what the engine reads: an engine's warm-up through the cache, so a packed
  set's blocks are cached as their kernel views, not whole).

Like with like: each system runs in a process of its own (``bench/peers_systems.py``), gets
the same warm-up (one request of 2 new tokens) and generates the same number of new tokens
(``--tokens``, default 4: AirLLM needs seconds per step on 2 cores; every step streams the
whole model, so per-step figures are what to compare). Rounds interleave the systems (the
order rotates each round; the 1- and 16-request runs alternate); medians over rounds.

Memory counts every process a system needs: the system's process peak RSS during the timed
generation (``VmHWM`` after the kernel's mark was reset once the model was loaded and warmed
up), plus, for ``engine-redis``, the Redis server holding the chunk set (its RSS, sampled
while the engine runs; the largest sample). One-time work -- AirLLM splitting its shards,
filling the Redis cache -- is not counted. Bytes read per step: the engine's fetched chunk
bytes; the peers' ``rchar`` from ``/proc/self/io`` or, as both read their weights through
``mmap``, which ``rchar`` misses, the size of the offload folder / layer shards, all of which
they read at every step.

- ``llama.cpp`` (``--dtype packed`` only): ``llama-cpp-python`` on the bundled GGUF file,
  memory-mapped and in memory after the warm-up, as many threads as cores, greedy: the
  in-memory anchor of a packed model. It serves one request at a time (its Python API has
  no batching), so 16 requests run one after another.

``--dtype packed``: the engine on the GGUF file kept packed (``sw chunk model.gguf``: Q4_1
and Q8_0, 117 MB, bfloat16 activations by default on this CPU); AirLLM and accelerate on
its float32 dequantization (their 4- and 8-bit modes need bitsandbytes on CUDA); llama.cpp
on the GGUF file. Goals (issue 23): >= 50x AirLLM's and >= 3x accelerate's tokens/s for
one request, each at no more memory.

``--dtype bfloat16`` runs every system on the same weights rounded to bfloat16, computed in
bfloat16 (the engine from a ``sw chunk --dtype bfloat16`` chunk set with
``SW_COMPUTE_DTYPE=bfloat16``, accelerate and AirLLM with ``dtype=torch.bfloat16``).

Usage: ``.venv/bin/pip install -c constraints.txt '.[bench]'``, then ``.venv/bin/python
bench/peers.py [--tokens 4] [--rounds 2] [--systems a,b] [--dtype float32|bfloat16|packed]``
(about 10 minutes per dtype and 2 rounds on a quiet 2-core machine).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from figures import Figure, Profile, print_figures  # bench/, beside this script
from peers_systems import PROMPT, child, fill_cache
from timing import rotated

SYSTEMS = ("engine-redis", "engine-folder", "accelerate", "airllm")
CONCURRENT = 16


def prepare(root: Path, dtype: str = "float32") -> dict[str, Any]:
    """The transformers folder and the chunk set in ``dtype`` (written once, reused by every
    system)."""
    from packed_sets import BLOCK_SHARD_MB  # bench/, beside this script
    from smollm2 import write_hf_folder

    from sw_core.chunks.chunker import chunk_model
    from sw_core.chunks.manifest import Manifest
    from sw_core.engine.memory.budget import plan_residency
    from sw_core.local.bundled import load_smollm2, smollm2_gguf_path

    peer_dtype = "float32" if dtype == "packed" else dtype
    hf_dir, chunk_dir = root / f"smollm2-hf-{peer_dtype}", root / f"smollm2-chunks-{dtype}"
    if not (hf_dir / "config.json").exists():
        model, tokenizer = load_smollm2()
        write_hf_folder(model, tokenizer, hf_dir, peer_dtype)
    if (chunk_dir / "manifest.json").exists():
        manifest = Manifest.load(chunk_dir)
    elif dtype == "packed":  # the GGUF file kept packed (Q4_1 + Q8_0), shards about a block
        manifest = chunk_model(
            smollm2_gguf_path(), chunk_dir, name="smollm2", max_chunk_mb=BLOCK_SHARD_MB
        )
    else:
        narrow = None if dtype == "float32" else dtype
        manifest = chunk_model(hf_dir, chunk_dir, name="smollm2", dtype=narrow)
    budget_mb = 1
    while True:  # the smallest budget whose plan keeps one block besides the small chunks
        try:
            plan = plan_residency(manifest, budget_mb << 20, 2)
        except Exception:
            budget_mb += 1
            continue
        if any(c.name in plan.keep for c in manifest.blocks()):
            break
        budget_mb += 1
    return {
        "hf_dir": str(hf_dir),
        "chunk_dir": str(chunk_dir),
        "budget_mb": budget_mb,
        "weights_mb": manifest.total_bytes / 2**20,
        "dtype": dtype,
        "peer_dtype": peer_dtype,
        "gguf": str(smollm2_gguf_path()),
    }


def redis_rss_mb(pid: int) -> float:
    """The Redis server's RSS now, in MiB (KiB / 1024, as the systems' own peaks)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def spawn(args: argparse.Namespace, info_path: Path, system: str, n: int, redis_pid: int) -> dict:
    """One system in a child process; for ``engine-redis`` the Redis server's RSS is
    sampled meanwhile (every 20 ms) and its largest sample added to the memory."""
    command = [sys.executable, __file__, "--child", "--system", system, "--n", str(n)]
    command += ["--tokens", str(args.tokens), "--info", str(info_path), "--work", args.work]
    samples: list[float] = []
    done_event = threading.Event()

    def sample() -> None:
        while not done_event.wait(0.02):
            samples.append(redis_rss_mb(redis_pid))

    sampler = threading.Thread(target=sample, daemon=True)
    if system == "engine-redis":
        sampler.start()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout_s)
    except subprocess.TimeoutExpired:
        return {"error": f"did not finish within {args.timeout_s} s"}
    finally:
        done_event.set()
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT ") :])
            result["redis_rss_mb"] = max(samples, default=0.0)
            result["memory_mb"] = result.get("peak_rss_mb", 0) + result["redis_rss_mb"]
            return result
    return {"error": f"exit {done.returncode}: {(done.stderr or done.stdout)[-1500:]}"}


def measure(args: argparse.Namespace) -> dict[tuple[str, int], dict[str, Any]]:
    """Every system and request count in ``args.rounds`` interleaved rounds; medians."""
    from sw_core.local.redis_server import RedisServer

    systems = args.systems.split(",")
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
    started = time.perf_counter()
    info = prepare(Path(args.work), args.dtype)
    info_path = Path(args.work) / "info.json"
    print(
        f"SmolLM2 {info['weights_mb']:.0f} MiB {args.dtype}, prompt {PROMPT!r}, greedy, "
        f"{args.tokens} new tokens, CPU ({os.cpu_count()} cores); engine budget "
        f"{info['budget_mb']} MiB (one block resident); prepared in "
        f"{time.perf_counter() - started:.0f} s",
        flush=True,
    )
    with RedisServer() as server:
        info["redis_url"] = server.url
        fill_cache(info)
        info_path.write_text(json.dumps(info))
        assert server.process is not None
        if "airllm" in systems:  # its layer shards, once, before any timing
            built = spawn(args, info_path, "airllm", 0, server.process.pid)
            if "error" in built:
                print(f"  airllm (building its layer shards) ERROR {built['error']}")
        for r in range(args.rounds):
            for system in rotated(systems, r):
                for n in (1, args.concurrent) if r % 2 == 0 else (args.concurrent, 1):
                    result = spawn(args, info_path, system, n, server.process.pid)
                    runs.setdefault((system, n), []).append(result)
                    report(f"round {r + 1}: {system}", n, result)
    return {key: median_run(results) for key, results in runs.items()}


def median_run(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One system's rounds: medians of wall time and memory (an error if any round failed)."""
    errors = [r["error"] for r in results if "error" in r]
    if errors:
        return {"error": errors[0]}
    tokens = [r["tokens"] for r in results]
    if any(t != tokens[0] for t in tokens):
        return {"error": "tokens differ between rounds"}
    out = dict(results[0])
    for key in ("wall_s", "peak_rss_mb", "redis_rss_mb", "memory_mb", "read_bytes"):
        out[key] = statistics.median(r[key] for r in results)
    out["rounds"] = len(results)
    return out


def steps(result: dict[str, Any]) -> int:
    return max(len(t) for t in result["tokens"])


def tokens_s(result: dict[str, Any]) -> float:
    return sum(len(t) for t in result["tokens"]) / result["wall_s"]


def report(label: str, n: int, result: dict[str, Any]) -> None:
    label = f"{label}, {n} request{'s' if n > 1 else ''}"
    if "error" in result:
        print(f"  {label:40s} ERROR {result['error']}", flush=True)
        return
    print(
        f"  {label:40s} {result['wall_s']:7.2f} s {result['wall_s'] / steps(result):7.3f} "
        f"s/step {tokens_s(result):7.2f} tokens/s  memory {result['memory_mb']:5.0f} MiB "
        f"(process {result['peak_rss_mb']:.0f}, Redis {result['redis_rss_mb']:.0f})  read "
        f"{result['read_bytes'] / steps(result) / 1e6:5.0f} MB/step",
        flush=True,
    )


ROWS = {
    "engine-redis": "engine, Redis cache (+ its Redis server)",
    "engine-folder": "engine, chunk folder",
    "accelerate": "accelerate disk offload",
    "airllm": "AirLLM 4.0.0",
    "llama.cpp": "llama.cpp (llama-cpp-python, the GGUF in memory, one request at a time)",
}

#: Goals per weights: (peer, requests) -> (speed goal, memory goal). float32: issue 16's;
#: packed (the GGUF kept packed; the peers run its float32 dequantization): issue 23's.
GOALS: dict[str, dict[tuple[str, int], tuple[str | None, str | None]]] = {
    "float32": {("airllm", 1): (">= 10", "<= 1"), ("airllm", CONCURRENT): (">= 100", None)},
    "bfloat16": {},
    "packed": {("airllm", 1): (">= 50", "<= 1"), ("accelerate", 1): (">= 3", "<= 1")},
}
SUFFIX = {"float32": "", "bfloat16": "_bf16", "packed": "_packed"}


def to_figures(
    medians: dict[tuple[str, int], dict[str, Any]], args: argparse.Namespace
) -> list[Figure]:
    """Ratios against each peer (goals against AirLLM, issue 16) and the table's cells."""
    d = SUFFIX[args.dtype]
    grid = f"peers, {args.dtype}"
    weights = (
        "the GGUF kept packed for the engine, its float32 dequantization for AirLLM and "
        "accelerate, the GGUF file for llama.cpp"
        if args.dtype == "packed"
        else args.dtype
    )
    how = (
        f"SmolLM2 {weights}, {args.tokens} new tokens, same warm-up, medians of "
        f"{args.rounds} interleaved rounds, each system in its own process"
    )
    goals = GOALS[args.dtype]
    peers = [p for p in ("airllm", "accelerate", "llama.cpp") if p in args.systems.split(",")]
    out: list[Figure] = []

    def ok(key: tuple[str, int]) -> dict[str, Any] | None:
        r = medians.get(key)
        return None if r is None or "error" in r else r

    for engine in ("engine-redis", "engine-folder"):
        where = "Redis" if engine == "engine-redis" else "folder"
        for peer, n in [(p, n) for p in peers for n in (1, args.concurrent)]:
            goal, memory_goal = goals.get((peer, n), (None, None))
            ours, theirs = ok((engine, n)), ok((peer, n))
            speed = tokens_s(ours) / tokens_s(theirs) if ours and theirs else None
            memory = ours["memory_mb"] / theirs["memory_mb"] if ours and theirs else None
            what = f"engine ({where}) / {peer}, {n} request{'s' if n > 1 else ''}"
            out.append(
                Figure(
                    f"peers{d}.{engine}.vs_{peer}_{n}.speed",
                    speed,
                    "x",
                    f"{what}, tokens/s ({args.dtype})",
                    goal=goal,
                    note=how,
                )
            )
            out.append(
                Figure(
                    f"peers{d}.{engine}.vs_{peer}_{n}.memory",
                    memory,
                    "x",
                    f"{what}, peak memory of every process ({args.dtype})",
                    goal=memory_goal,
                    note=how,
                )
            )
    for (system, n), r in medians.items():
        if "error" in r:
            continue
        row = f"{ROWS[system]}, {n} request{'s' if n > 1 else ''}"
        cells = {
            "s / step": (r["wall_s"] / steps(r), "s"),
            "tokens/s": (tokens_s(r), "tokens/s"),
            "memory MiB": (r["memory_mb"], "MiB"),
            "MB read / step": (r["read_bytes"] / steps(r) / 1e6, "MB"),
        }
        for column, (value, unit) in cells.items():
            key = column.split(" ")[0].replace("/", "_")
            out.append(
                Figure(
                    f"peers{d}.{system}.{n}.{key}",
                    value,
                    unit,
                    f"{row}: {column}",
                    note=how,
                    extra={"grid": grid, "row": row, "column": column},
                )
            )
    return out


def options(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4, help="new tokens, every system")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds")
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--concurrent", type=int, default=CONCURRENT)
    parser.add_argument("--timeout-s", type=int, default=900, help="limit per system and run")
    parser.add_argument("--work", help="folder for the model copies (default: a temporary one)")
    parser.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "packed"],
        default="float32",
        help="weights (and math) of every system; packed: the engine on the GGUF kept packed, "
        "llama.cpp on the GGUF file, AirLLM and accelerate on its float32 dequantization",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--system", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--info", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def figures(profile: Profile) -> list[Figure]:
    """Figures for ``bench/run.py --with peers``: float32 (issue 16's goals) and packed
    (issue 23's, with llama.cpp), and in the full profile bfloat16."""
    out: list[Figure] = []
    for dtype in profile.pick(("float32", "packed"), ("float32", "bfloat16", "packed")):
        args = options(["--dtype", dtype, "--rounds", str(profile.pick(1, 2))])
        if dtype == "packed":
            args.systems = ",".join((*SYSTEMS, "llama.cpp"))
        with tempfile.TemporaryDirectory(prefix="sw-bench-peers-") as tmp:
            args.work = tmp
            out += to_figures(measure(args), args)
    return out


def main() -> int:
    args = options()
    if args.child:
        return child(args.system, args.n, args.tokens, args.info, args.work)
    with tempfile.TemporaryDirectory(prefix="sw-bench-peers-") as tmp:
        args.work = args.work or tmp
        print_figures(to_figures(measure(args), args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
