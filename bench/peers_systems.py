"""The systems ``bench/peers.py`` compares, each run in a process of its own
(``bench/peers.py --child``): this engine (from a chunk folder or the Redis chunk cache),
transformers with accelerate's disk offload, AirLLM, and llama.cpp (``llama-cpp-python``,
for the packed comparison: the GGUF file in memory).

Every system gets the same warm-up -- one request of :data:`WARMUP_TOKENS` new tokens, the
same prompt -- after loading and before the kernel's peak-RSS mark is reset; then it
generates the timed request(s). Peak RSS is this process's; the parent adds the Redis
server's for the engine that reads from it.
"""

from __future__ import annotations

import asyncio
import json
import resource
import time
import traceback
from pathlib import Path
from typing import Any

PROMPT = "What is the capital of France?"  # the demo's first chat question
#: New tokens of the warm-up request every system gets.
WARMUP_TOKENS = 2


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


#: The engine's KV-cache cap (a limit on what a batch may grow to, not an allocation): the 16
#: requests run as one batch, as in every other system, their KV in the engine's RSS like
#: theirs. The default, a quarter of the small budget, split float32 rows into two batches,
#: two sweeps per step.
KV_CAP_MB = 256


def engine_compute_dtype(dtype: str) -> str:
    """float32 / packed: the default (packed weights compute with bf16 activations on this
    CPU); bfloat16: bf16 math, no widening."""
    return dtype if dtype == "bfloat16" else "auto"


def fill_cache(info: dict[str, Any]) -> None:
    """What the engine reads into the Redis chunk cache: an engine with the children's
    settings, warmed up through the cache (every chunk fetched once through it)."""
    import redis

    from sw_core.cache import ChunkCache
    from sw_core.engine import CachedChunkSource, StreamingEngine
    from sw_core.keys import Keys
    from sw_core.storage import FilesystemBackend

    async def warm(source: CachedChunkSource) -> None:
        engine = await StreamingEngine.open(
            source,
            memory_budget_mb=info["budget_mb"],
            compute_dtype=engine_compute_dtype(info["dtype"]),
        )
        try:
            await engine.warmup()
        finally:
            await engine.aclose()

    client = redis.Redis.from_url(info["redis_url"])
    with ChunkCache(client, keys=Keys("peers"), cache_size_bytes=2048 << 20) as cache:
        asyncio.run(warm(CachedChunkSource(cache, FilesystemBackend(Path(info["chunk_dir"])))))
    client.close()


def run_engine(info: dict[str, Any], system: str, n: int, tokens: int) -> dict[str, Any]:
    from sw_core.cache import ChunkCache
    from sw_core.engine import CachedChunkSource, StreamingEngine
    from sw_core.keys import Keys
    from sw_core.storage import FilesystemBackend

    async def go(where: Any) -> dict[str, Any]:
        engine = await StreamingEngine.open(
            where,
            memory_budget_mb=info["budget_mb"],
            compute_dtype=engine_compute_dtype(info["dtype"]),
            max_kv_cache_mb=KV_CAP_MB,
        )
        try:
            request = {"messages": [{"role": "user", "content": PROMPT}], "max_new_tokens": tokens}
            await engine.run_async("generate", [dict(request, max_new_tokens=WARMUP_TOKENS)])
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


def timed_generate(model: Any, ids: Any, mask: Any, tokens: int) -> dict[str, Any]:
    """transformers' ``generate`` (AirLLM's is the same call): the warm-up request, the
    peak-RSS mark reset, then the timed greedy generation of ``ids``."""
    import torch

    with torch.inference_mode():
        model.generate(input_ids=ids[:1], attention_mask=mask[:1], max_new_tokens=WARMUP_TOKENS)
        load_peak = reset_peak_rss()
        before, started = rchar(), time.perf_counter()
        out = model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=tokens, do_sample=False
        )
        wall_s = time.perf_counter() - started
    sequences = out.sequences if hasattr(out, "sequences") else out
    return {
        "wall_s": wall_s,
        "tokens": sequences[:, ids.shape[1] :].tolist(),
        "rchar": rchar() - before,
        "load_peak_rss_mb": load_peak,
    }


def run_llamacpp(info: dict[str, Any], n: int, tokens: int) -> dict[str, Any]:
    """llama.cpp on the GGUF file (memory-mapped, in memory once read), 2 threads, greedy;
    llama-cpp-python serves one request at a time, so ``n`` requests run one after another,
    each from an empty KV cache (no prompt reuse between them)."""
    import os

    from llama_cpp import Llama
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(info["hf_dir"])
    prompt = chat_ids(tokenizer, 1)[0][0].tolist()
    threads = os.cpu_count() or 1
    llm = Llama(
        model_path=info["gguf"],
        n_ctx=256,
        n_threads=threads,
        n_threads_batch=threads,
        seed=0,
        verbose=False,
    )

    def one(new_tokens: int) -> list[int]:
        llm.reset()  # forget the previous request: its prompt is evaluated again
        out: list[int] = []
        for token in llm.generate(prompt, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0):
            if token == llm.token_eos():
                break
            out.append(int(token))
            if len(out) >= new_tokens:
                break
        return out

    one(WARMUP_TOKENS)
    load_peak = reset_peak_rss()
    before, started = rchar(), time.perf_counter()
    new = [one(tokens) for _ in range(n)]
    return {
        "wall_s": time.perf_counter() - started,
        "tokens": new,
        "read_bytes": rchar() - before,
        "plan": f"llama.cpp, {threads} threads, the GGUF file memory-mapped",
        "load_peak_rss_mb": load_peak,
    }


def run_accelerate(info: dict[str, Any], n: int, tokens: int, offload: Path) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(info["hf_dir"])
    model = AutoModelForCausalLM.from_pretrained(
        info["hf_dir"],
        dtype=getattr(torch, info["peer_dtype"]),
        device_map="auto",
        max_memory={"cpu": f"{info['budget_mb']}MiB"},
        offload_folder=str(offload),
    ).eval()
    device_map = getattr(model, "hf_device_map", {})
    placed = set(device_map.values())
    on_disk = [name for name, device in device_map.items() if device == "disk"]
    offloaded = sum(  # bytes of the parameters accelerate reads from disk at every step
        p.numel() * p.element_size()
        for name, p in model.named_parameters()
        if any(d == "" or name == d or name.startswith(d + ".") for d in on_disk)
    )
    ids, mask = chat_ids(tokenizer, n)
    timed = timed_generate(model, ids, mask, tokens)
    new = timed["tokens"]
    return {
        "wall_s": timed["wall_s"],
        "tokens": new,
        # offloaded weights are memory-mapped (from the offload folder, or straight from the
        # checkpoint's safetensors files), which rchar misses; all of them at every step
        "read_bytes": max(timed["rchar"], offloaded * max(len(t) for t in new)),
        "plan": f"device_map places {sorted(placed)}, {offloaded / 1e6:.0f} MB on disk",
        "load_peak_rss_mb": timed["load_peak_rss_mb"],
    }


def run_airllm(info: dict[str, Any], n: int, tokens: int, shards: Path) -> dict[str, Any]:
    import torch
    from airllm import AutoModel
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(info["hf_dir"])
    model = AutoModel.from_pretrained(
        info["hf_dir"],
        device="cpu",
        dtype=getattr(torch, info["peer_dtype"]),
        layer_shards_saving_path=str(shards),
    )  # builds the layer shards (once, not timed)
    ids, mask = chat_ids(tokenizer, n)
    if n == 0:  # the preparation run: the shards are built above
        return {"wall_s": 0.0, "tokens": [], "read_bytes": 0, "plan": "shards built"}
    timed = timed_generate(model, ids, mask, tokens)
    new = timed["tokens"]
    steps = max(len(t) for t in new)
    return {
        "wall_s": timed["wall_s"],
        "tokens": new,
        # safetensors reads the layer shards through mmap (rchar misses it), every shard at
        # every step: the shards' size per step
        "read_bytes": max(timed["rchar"], folder_bytes(shards) * steps),
        "plan": "AirLLM, every layer from its shards at every step",
        "load_peak_rss_mb": timed["load_peak_rss_mb"],
    }


def child(system: str, n: int, tokens: int, info_path: str, work: str) -> int:
    """Run one system in this process; print its result as one ``RESULT {json}`` line."""
    info = json.loads(Path(info_path).read_text())
    try:
        if system.startswith("engine"):
            result = run_engine(info, system, n, tokens)
        elif system == "llama.cpp":
            result = run_llamacpp(info, n, tokens)
        elif system == "accelerate":
            result = run_accelerate(info, n, tokens, Path(work) / f"offload-{info['dtype']}")
        else:
            result = run_airllm(info, n, tokens, Path(work) / f"airllm-shards-{info['dtype']}")
    except Exception as exc:
        result = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-1500:]}
    result["peak_rss_mb"] = peak_rss_mb()  # since the reset: the generation's peak
    print("RESULT " + json.dumps(result))
    return 0
