"""This engine against the peers a user would pick instead, on the same weights and prompt.

SmolLM2-135M-Instruct from the bundled GGUF, written once as a transformers folder
(safetensors, float32), the demo's chat prompt, greedy decoding on CPU. Systems:

- ``airllm``: AirLLM 4.x (``airllm.AutoModel``, ``device="cpu"``, float32): it streams every
  layer from its layer shards at every decode step. Its shards are built once, before timing.
- ``accelerate``: transformers with accelerate's disk offload (``device_map="auto"``,
  ``max_memory`` at the engine's budget, ``offload_folder``): the layers that do not fit are
  read from the offload folder at every step.
- ``engine-folder``: this engine at a budget that keeps one block resident besides the
  embeddings/head, chunks from the chunk-set folder (BLAKE3-verified reads).
- ``engine-redis``: the same, chunks from the Redis chunk cache.

Each system runs in its own process (``--system NAME``). Peak RSS is the process's
high-water mark while it generates (``VmHWM`` after the kernel's peak was reset through
``/proc/self/clear_refs`` once the model was loaded and warmed up), so one-time work --
AirLLM splitting its shards (done in a process of its own beforehand), filling the Redis
cache (done by the parent, as loader workers would) -- is not counted; the load-time peak is
printed too. A system that cannot run prints its error in the table instead of a figure. Each is timed as one request and as 16
concurrent requests (one batch); seconds per generated token, peak RSS and bytes read per
generation step (the engine: chunk bytes it fetched; the peers: ``rchar`` from
``/proc/self/io``, or, as both read their weights through ``mmap``, which ``rchar`` misses,
the size of the offload folder / layer shards, all of which they read at every step).

AirLLM needs minutes per request on 2 cores, so it generates fewer tokens (``--peer-tokens``,
default 4; per-token figures stay comparable: every step streams the whole model).

``--dtype bfloat16`` runs every system on the same weights rounded to bfloat16, computed in
bfloat16 (the engine from a ``sw chunk --dtype bfloat16`` chunk set with
``SW_COMPUTE_DTYPE=bfloat16``, accelerate and AirLLM with ``dtype=torch.bfloat16``).

Usage: ``.venv/bin/python bench/peers.py [--tokens 32] [--peer-tokens 4] [--systems a,b]
[--dtype float32|bfloat16]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

PROMPT = "What is the capital of France?"  # the demo's first chat question
SYSTEMS = ("engine-redis", "engine-folder", "accelerate", "airllm")
CONCURRENT = 16


def rchar() -> int:
    """Bytes this process read through system calls so far (0 where /proc is missing)."""
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("rchar:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())


def peak_rss_mb() -> float:
    """The process's peak RSS since start (or since :func:`reset_peak_rss`), in MB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> float:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0); returns the peak before, in MB."""
    before = peak_rss_mb()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    return before


def chat_ids(tokenizer: Any, n: int) -> tuple[Any, Any]:
    import torch

    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": PROMPT}], add_generation_prompt=True, tokenize=False
    )
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    ids = ids.repeat(n, 1)
    return ids, torch.ones_like(ids)


def prepare(root: Path, dtype: str = "float32") -> dict[str, Any]:
    """The transformers folder and the chunk set in ``dtype`` (written once, reused by every
    system)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sw_core.chunks.chunker import chunk_model
    from sw_core.chunks.manifest import Manifest
    from sw_core.engine.memory.budget import plan_residency
    from sw_core.local.bundled import smollm2_gguf_path

    hf_dir, chunk_dir = root / f"smollm2-hf-{dtype}", root / f"smollm2-chunks-{dtype}"
    if not (hf_dir / "config.json").exists():
        gguf = smollm2_gguf_path()
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
        # save_pretrained refuses a model loaded from GGUF: write the folder by hand (the
        # tied output head is the embedding matrix, stored once under its own name)
        from safetensors.torch import save_file

        hf_dir.mkdir(parents=True, exist_ok=True)
        state = {
            k: v.to(getattr(torch, dtype)).contiguous()
            for k, v in model.state_dict().items()
            if k != "lm_head.weight"
        }
        save_file(state, str(hf_dir / "model.safetensors"), metadata={"format": "pt"})
        config = model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.architectures = [type(model).__name__]
        config.dtype = dtype
        config.save_pretrained(hf_dir)
        model.generation_config.save_pretrained(hf_dir)
        tokenizer.save_pretrained(hf_dir)
    if (chunk_dir / "manifest.json").exists():
        manifest = Manifest.load(chunk_dir)
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
    }


# --------------------------------------------------------------------------- one system
def run_engine(info: dict[str, Any], system: str, n: int, tokens: int) -> dict[str, Any]:
    from sw_core.cache import ChunkCache
    from sw_core.engine import CachedChunkSource, StreamingEngine
    from sw_core.keys import Keys
    from sw_core.storage import FilesystemBackend

    async def go(where: Any) -> dict[str, Any]:
        compute = "auto" if info["dtype"] == "float32" else info["dtype"]  # no widening
        engine = await StreamingEngine.open(
            where, memory_budget_mb=info["budget_mb"], compute_dtype=compute
        )
        try:
            request = {"messages": [{"role": "user", "content": PROMPT}], "max_new_tokens": tokens}
            await engine.run_async("generate", [dict(request, max_new_tokens=2)])  # warm-up
            load_peak = reset_peak_rss()
            engine.residency.reset_stats()
            started = time.perf_counter()
            results = await engine.run_async("generate", [request] * n)
            wall_s = time.perf_counter() - started
            return {
                "wall_s": wall_s,
                "tokens": [r["token_ids"] for r in results],
                "read_bytes": engine.residency.stats.loaded_bytes,
                "plan": engine.plan.describe(),
                "load_peak_rss_mb": load_peak,
            }
        finally:
            await engine.aclose()

    folder = Path(info["chunk_dir"])
    if system == "engine-folder":
        return asyncio.run(go(str(folder)))
    import redis

    client = redis.Redis.from_url(info["redis_url"])
    cache = ChunkCache(client, keys=Keys("peers"), cache_size_bytes=2048 << 20)
    try:
        return asyncio.run(go(CachedChunkSource(cache, FilesystemBackend(folder))))
    finally:
        cache.close()
        client.close()


def run_accelerate(info: dict[str, Any], n: int, tokens: int, offload: Path) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(info["hf_dir"])
    model = AutoModelForCausalLM.from_pretrained(
        info["hf_dir"],
        dtype=getattr(torch, info["dtype"]),
        device_map="auto",
        max_memory={"cpu": f"{info['budget_mb']}MiB"},
        offload_folder=str(offload),
    ).eval()
    placed = set(getattr(model, "hf_device_map", {}).values())
    ids, mask = chat_ids(tokenizer, n)
    with torch.inference_mode():
        model.generate(input_ids=ids[:1], attention_mask=mask[:1], max_new_tokens=1)
        load_peak = reset_peak_rss()
        before, started = rchar(), time.perf_counter()
        out = model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=tokens, do_sample=False
        )
        wall_s = time.perf_counter() - started
    new = out[:, ids.shape[1] :].tolist()
    return {
        "wall_s": wall_s,
        "tokens": new,
        # offloaded weights are read through numpy memmaps (rchar misses them), all of them
        # at every step: the offload folder's size per step
        "read_bytes": max(rchar() - before, folder_bytes(offload) * max(len(t) for t in new)),
        "plan": f"device_map places {sorted(placed)}",
        "load_peak_rss_mb": load_peak,
    }


def run_airllm(info: dict[str, Any], n: int, tokens: int, shards: Path) -> dict[str, Any]:
    import torch
    from airllm import AutoModel
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(info["hf_dir"])
    model = AutoModel.from_pretrained(
        info["hf_dir"],
        device="cpu",
        dtype=getattr(torch, info["dtype"]),
        layer_shards_saving_path=str(shards),
    )  # builds the layer shards (once, not timed)
    ids, mask = chat_ids(tokenizer, n)
    if n == 0:  # the preparation run: the shards are built above
        return {"wall_s": 0.0, "tokens": [], "read_bytes": 0, "plan": "shards built"}
    with torch.inference_mode():
        load_peak = reset_peak_rss()
        before, started = rchar(), time.perf_counter()
        out = model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=tokens, do_sample=False
        )
        wall_s = time.perf_counter() - started
    sequences = out.sequences if hasattr(out, "sequences") else out
    new = sequences[:, ids.shape[1] :].tolist()
    steps = max(len(t) for t in new)
    return {
        "wall_s": wall_s,
        "tokens": new,
        # safetensors reads the layer shards through mmap (rchar misses it), every shard at
        # every step: the shards' size per step
        "read_bytes": max(rchar() - before, folder_bytes(shards) * steps),
        "plan": "AirLLM, every layer from its shards at every step",
        "load_peak_rss_mb": load_peak,
    }


def child(args: argparse.Namespace) -> int:
    info = json.loads(Path(args.info).read_text())
    try:
        if args.system.startswith("engine"):
            result = run_engine(info, args.system, args.n, args.tokens)
        elif args.system == "accelerate":
            result = run_accelerate(
                info, args.n, args.tokens, Path(args.work) / f"offload-{info['dtype']}"
            )
        else:
            result = run_airllm(
                info, args.n, args.tokens, Path(args.work) / f"airllm-shards-{info['dtype']}"
            )
    except Exception as exc:
        result = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-1500:]}
    result["peak_rss_mb"] = peak_rss_mb()  # since the reset: the generation's peak
    print("RESULT " + json.dumps(result))
    return 0


# --------------------------------------------------------------------------- the table
def spawn(args: argparse.Namespace, info_path: Path, system: str, n: int, tokens: int) -> dict:
    command = [
        sys.executable,
        __file__,
        "--child",
        "--system",
        system,
        "--n",
        str(n),
        "--tokens",
        str(tokens),
        "--info",
        str(info_path),
        "--work",
        args.work,
    ]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=args.timeout_s, check=False
        )
    except subprocess.TimeoutExpired:
        return {"error": f"did not finish within {args.timeout_s} s", "peak_rss_mb": 0}
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    tail = (done.stderr or done.stdout)[-1500:]
    return {"error": f"exit {done.returncode}: {tail}", "peak_rss_mb": 0}


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--tokens", type=int, default=32, help="new tokens (engine, accelerate)")
    parser.add_argument("--peer-tokens", type=int, default=4, help="new tokens for AirLLM")
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--concurrent", type=int, default=CONCURRENT)
    parser.add_argument("--timeout-s", type=int, default=600, help="limit per system and mode")
    parser.add_argument("--work", help="folder for the model copies (default: a temporary one)")
    parser.add_argument(
        "--dtype",
        choices=["float32", "bfloat16"],
        default="float32",
        help="weights (and math) of every system: bfloat16 runs the engine on a bfloat16 chunk "
        "set with SW_COMPUTE_DTYPE=bfloat16",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--system", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--info", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    with tempfile.TemporaryDirectory(prefix="sw-bench-peers-") as tmp:
        args.work = args.work or tmp
        started = time.perf_counter()
        info = prepare(Path(args.work), args.dtype)
        info_path = Path(args.work) / "info.json"
        print(
            f"SmolLM2 {info['weights_mb']:.0f} MiB {args.dtype}, prompt {PROMPT!r}, greedy, CPU "
            f"({os.cpu_count()} cores, shared); engine budget {info['budget_mb']} MiB (one block "
            f"resident); prepared in {time.perf_counter() - started:.0f} s"
        )
        from sw_core.local.redis_server import RedisServer

        results: dict[tuple[str, int], dict[str, Any]] = {}
        with RedisServer() as server:
            info["redis_url"] = server.url
            fill_cache(server.url, Path(info["chunk_dir"]))
            info_path.write_text(json.dumps(info))
            for system in args.systems.split(","):
                tokens = args.peer_tokens if system == "airllm" else args.tokens
                if system == "airllm":
                    prepared = spawn(args, info_path, system, 0, tokens)
                    if "error" in prepared:
                        print(f"  airllm (building its layer shards) ERROR {prepared['error']}")
                for n in (1, args.concurrent):
                    results[(system, n)] = spawn(args, info_path, system, n, tokens)
                    report(system, n, results[(system, n)])
        summarize(results, args.concurrent)
    return 0


def fill_cache(url: str, folder: Path) -> None:
    """Every chunk into the Redis chunk cache, as the loader workers would."""
    import redis

    from sw_core.cache import ChunkCache
    from sw_core.chunks.manifest import Manifest
    from sw_core.keys import Keys

    manifest = Manifest.load(folder)
    client = redis.Redis.from_url(url)
    with ChunkCache(client, keys=Keys("peers"), cache_size_bytes=2048 << 20) as cache:
        for chunk in manifest.chunks:
            cache.put(chunk.sha256, (folder / chunk.file).read_bytes(), blake3=chunk.blake3)
    client.close()


def report(system: str, n: int, result: dict[str, Any]) -> None:
    label = f"{system}, {n} request{'s' if n > 1 else ''}"
    if "error" in result:
        print(f"  {label:30s} ERROR {result['error']}")
        return
    generated = sum(len(t) for t in result["tokens"])
    steps = max(len(t) for t in result["tokens"])
    print(
        f"  {label:30s} {result['wall_s']:8.2f} s  {result['wall_s'] / steps:7.3f} s/step  "
        f"{generated / result['wall_s']:7.2f} tokens/s  peak RSS {result['peak_rss_mb']:6.0f} MB"
        f" (load {result.get('load_peak_rss_mb', 0):5.0f})"
        f"  read {result['read_bytes'] / steps / 1e6:7.0f} MB/step  ({result['plan']})"
    )


def summarize(results: dict[tuple[str, int], dict[str, Any]], concurrent: int) -> None:
    def rate(key: tuple[str, int]) -> float | None:
        r = results.get(key)
        if r is None or "error" in r:
            return None
        return sum(len(t) for t in r["tokens"]) / r["wall_s"]

    base = results.get(("engine-redis", 1), {})
    for system in ("engine-folder", "accelerate", "airllm"):
        other = results.get((system, 1), {})
        if "tokens" in base and "tokens" in other:
            a, b = base["tokens"][0], other["tokens"][0]
            common = min(len(a), len(b))
            print(
                f"  tokens engine-redis vs {system}: first {common} equal: {a[:common] == b[:common]}"
            )
    for peer in ("airllm", "accelerate"):
        for n in (1, concurrent):
            ours, theirs = rate(("engine-redis", n)), rate((peer, n))
            if ours is None or theirs is None:
                print(f"  engine-redis vs {peer}, {n} request(s): no figure (see errors above)")
                continue
            rss = results[("engine-redis", n)]["peak_rss_mb"], results[(peer, n)]["peak_rss_mb"]
            print(
                f"  engine-redis vs {peer}, {n} request(s): {ours / theirs:.1f}x tokens/s at "
                f"peak RSS {rss[0]:.0f} vs {rss[1]:.0f} MB"
            )


if __name__ == "__main__":
    raise SystemExit(main())
