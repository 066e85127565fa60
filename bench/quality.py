"""The quality gate of packed weights: perplexity and embedding cosine, side by side.

**Perplexity** of SmolLM2-135M-Instruct on a fixed English text that ships with every Python
install: the reference manual's topics in ``pydoc_data.topics`` (the stdlib module behind
``help()``), concatenated in name order, the first 4096 tokens, read in 8 windows of 512
tokens (each window scored on its own, as ``max_input_tokens`` allows). The text's sha256 and
the Python version are printed: the text can differ between Python releases.

Rows (the engine runs each chunk set resident; ``float32`` math means packed weights
widened on arrival, ``bfloat16`` the packed kernels):

- transformers in memory, float32 -- the reference (SmolLM2 dequantized from its GGUF file);
- the GGUF file kept packed (Q4_1 + Q8_0), float32 math: must equal the reference;
- the GGUF file kept packed, bfloat16 math: what a worker runs by default. Gate: within 1 %;
- the float32 weights re-quantized, ``sw chunk --quantize int8`` / ``int4`` (group 32),
  bfloat16 math: ratio to the reference printed;
- the float32 weights in bfloat16 math (no quantization): the cost of bfloat16 alone.

**Embeddings**: all-MiniLM-L6-v2 on the demo's sentences (``sw_core.local.demo.SENTENCES``),
``--quantize int8`` (bfloat16 math, and float32 math) against the float32 chunk set: the
smallest cosine. Gate: >= 0.999.

Usage: ``.venv/bin/python bench/quality.py [--work DIR] [--tokens 4096] [--json PATH]``
(about 10 minutes on 2 cores, half of it chunking on the first run).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch
from figures import Figure, Profile
from packed_sets import chunk_set, write_hf_folder

from sw_core.chunks.chunker import chunk_model
from sw_core.engine import StreamingEngine
from sw_core.local.bundled import load_smollm2, minilm_path
from sw_core.local.demo import SENTENCES

WINDOW = 512
#: Perplexity of the packed GGUF within this fraction of the float32 reference (either way).
PPL_GATE = 0.01
COSINE_GATE = 0.999


def fixed_text() -> str:
    """The reference manual's topics (``pydoc_data.topics``), in name order."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[name] for name in sorted(topics))


def token_windows(tokenizer: Any, n_tokens: int) -> list[list[int]]:
    ids = tokenizer(fixed_text(), add_special_tokens=False)["input_ids"][:n_tokens]
    return [ids[i : i + WINDOW] for i in range(0, len(ids), WINDOW) if len(ids[i : i + WINDOW]) > 1]


def nll(logits: torch.Tensor, ids: list[int]) -> tuple[float, int]:
    """Summed negative log-likelihood of ``ids[1:]`` under ``logits[:-1]``."""
    target = torch.tensor(ids[1:])
    logp = torch.log_softmax(logits[:-1].float(), dim=-1)
    return float(-logp[torch.arange(len(target)), target].sum()), len(target)


def perplexity_in_memory(model: Any, windows: list[list[int]]) -> float:
    total, count = 0.0, 0
    with torch.inference_mode():
        for ids in windows:
            logits = model(input_ids=torch.tensor([ids])).logits[0]
            value, n = nll(logits, ids)
            total, count = total + value, count + n
    return math.exp(total / count)


async def perplexity_engine(folder: Path, dtype: str, windows: list[list[int]]) -> float:
    engine = await StreamingEngine.open(str(folder), memory_budget_mb=4096, compute_dtype=dtype)
    total, count = 0.0, 0
    try:
        for ids in windows:
            [logits] = await engine.run_async("forward", [{"input_ids": ids}], tensors=True)
            value, n = nll(logits, ids)
            total, count = total + value, count + n
    finally:
        await engine.aclose()
    return math.exp(total / count)


async def embeddings(folder: Path, dtype: str) -> torch.Tensor:
    engine = await StreamingEngine.open(str(folder), memory_budget_mb=4096, compute_dtype=dtype)
    try:
        vectors = await engine.run_async("embed", [{"text": s} for s in SENTENCES])
    finally:
        await engine.aclose()
    return torch.tensor(vectors)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(args.work)
    started = time.perf_counter()
    model, tokenizer = load_smollm2()
    write_hf_folder(root / "smollm2-hf-float32", model, tokenizer)
    sets = {which: chunk_set(root, which)[0] for which in ("float32", "gguf", "int8", "int4")}
    windows = token_windows(tokenizer, args.tokens)
    n_tokens = sum(len(w) for w in windows)
    text = fixed_text().encode()
    print(
        f"text: pydoc_data.topics (Python {platform.python_version()}), sha256 "
        f"{hashlib.sha256(text).hexdigest()[:16]}, first {n_tokens} tokens in {len(windows)} "
        f"windows of {WINDOW}; prepared in {time.perf_counter() - started:.0f} s"
    )
    rows: list[tuple[str, str, float]] = []
    reference = perplexity_in_memory(model, windows)
    rows.append(("transformers in memory (dequantized GGUF)", "float32", reference))
    cases = [
        ("GGUF kept packed (Q4_1 + Q8_0)", "gguf", "float32"),
        ("GGUF kept packed (Q4_1 + Q8_0)", "gguf", "bfloat16"),
        ("float32 re-quantized, --quantize int8", "int8", "bfloat16"),
        ("float32 re-quantized, --quantize int4 (group 32)", "int4", "bfloat16"),
        ("float32 chunks, no quantization", "float32", "bfloat16"),
    ]
    for label, which, dtype in cases:
        rows.append((label, dtype, await perplexity_engine(sets[which], dtype, windows)))
    print("\n| SmolLM2 weights | math | perplexity | vs float32 |\n|---|---|---|---|")
    for label, dtype, value in rows:
        print(f"| {label} | {dtype} | {value:.4f} | {value / reference:.4f}x |")
    packed = rows[2][2] / reference
    print(
        f"\ngate: GGUF kept packed (bfloat16 math) / float32 = {packed:.4f} (within "
        f"{PPL_GATE:.0%}: {'met' if abs(packed - 1) <= PPL_GATE else 'NOT met'}); float32 math "
        "equals the reference: "
        f"{rows[1][2] == reference}"
    )
    cosines = await minilm_cosines(root)
    print("\n| all-MiniLM-L6-v2 | math | smallest cosine to float32 | mean |\n|---|---|---|---|")
    for label, (low, mean) in cosines.items():
        print(f"| {label} | {low:.6f} | {mean:.6f} |")
    int8_low = cosines["--quantize int8 | bfloat16"][0]
    print(
        f"\ngate: MiniLM int8 cosine >= {COSINE_GATE}: {int8_low:.6f} "
        f"({'met' if int8_low >= COSINE_GATE else 'NOT met'})"
    )
    return {
        "perplexity": {f"{label} [{dtype}]": value for label, dtype, value in rows},
        "perplexity_ratio_packed": packed,
        "minilm_cosine": {k: v[0] for k, v in cosines.items()},
        "tokens": n_tokens,
        "python": platform.python_version(),
    }


async def minilm_cosines(root: Path) -> dict[str, tuple[float, float]]:
    source = minilm_path()
    float_dir, int8_dir = root / "minilm-float32", root / "minilm-int8"
    if not (float_dir / "manifest.json").exists():
        chunk_model(source, float_dir, name="minilm")
    if not (int8_dir / "manifest.json").exists():
        chunk_model(source, int8_dir, name="minilm", quantize="int8")
    reference = await embeddings(float_dir, "float32")
    out = {}
    for label, folder, dtype in (
        ("--quantize int8 | bfloat16", int8_dir, "bfloat16"),
        ("--quantize int8 | float32", int8_dir, "float32"),
        ("float32 chunks | bfloat16", float_dir, "bfloat16"),
    ):
        vectors = await embeddings(folder, dtype)
        cos = torch.nn.functional.cosine_similarity(vectors, reference, dim=-1)
        out[label] = (float(cos.min()), float(cos.mean()))
    return out


def figures(profile: Profile) -> list[Figure]:
    """Figures for ``bench/run.py``: the chunk sets in the run's shared folder."""
    import smollm2

    shared = smollm2.shared_dir()
    with tempfile.TemporaryDirectory(prefix="sw-bench-quality-") as tmp:
        args = argparse.Namespace(work=str(shared or tmp), tokens=profile.pick(1024, 4096))
        m = asyncio.run(run(args))
    ppl = m["perplexity"]
    reference = next(iter(ppl.values()))
    how = (
        f"SmolLM2 perplexity on pydoc_data.topics (Python {m['python']}), {m['tokens']} tokens "
        f"in windows of {WINDOW}; the reference is transformers in memory (float32)"
    )
    ratio = m["perplexity_ratio_packed"]
    out = [
        Figure(  # the gate is two-sided: the goal is on the distance from the reference
            "quality.gguf_packed_bf16_perplexity_off",
            abs(ratio - 1) * 100,
            "%",
            "perplexity, GGUF kept packed (bf16 math), off the float32 reference either way",
            goal=f"<= {PPL_GATE * 100:g}",
            note=how,
        ),
        Figure(
            "quality.gguf_packed_bf16_perplexity_ratio",
            ratio,
            "x",
            "perplexity, GGUF kept packed (bf16 math) / float32 reference",
            note=how,
        ),
    ]
    names = (None, "gguf_packed_f32_math", None, "int8_bf16", "int4_bf16", "float32_bf16_math")
    for name, (key, value) in zip(names, ppl.items(), strict=True):
        if name is not None:
            out.append(
                Figure(
                    f"quality.{name}_perplexity_ratio",
                    value / reference,
                    "x",
                    f"perplexity, {key} / float32",
                )
            )
    out.append(
        Figure("quality.reference_perplexity", reference, "", "perplexity, float32 reference")
    )
    out.append(
        Figure(
            "quality.minilm_int8_cosine",
            m["minilm_cosine"]["--quantize int8 | bfloat16"],
            "",
            "MiniLM --quantize int8 (bf16 math): smallest cosine to float32",
            goal=f">= {COSINE_GATE}",
            note="all-MiniLM-L6-v2 on the demo's sentences",
        )
    )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--work", help="folder for the chunk sets (default: a temporary one)")
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sw-bench-quality-") as tmp:
        args.work = args.work or tmp
        figures = asyncio.run(run(args))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
