"""``sw chunk``: cut a model into verified layer chunks."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from sw_core.progress import progress_bar
from sw_core.utils import mib

#: Same as ``sw_core.chunks.chunker.DEFAULT_MAX_CHUNK_MB``; the chunker (and torch) load only when run.
DEFAULT_MAX_CHUNK_MB = 16


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "chunk",
        help="cut a model folder or .gguf file into safetensors layer chunks + manifest",
        description=(
            "Write one safetensors chunk per transformer block, chunks for the embeddings and "
            "the head, the config and tokenizer files, and manifest.json with a sha256 per chunk."
        ),
    )
    parser.add_argument("source", help="a transformers model folder (safetensors) or a .gguf file")
    parser.add_argument("--out", required=True, type=Path, help="chunk-set folder to write")
    parser.add_argument("--name", help="model name in the manifest (default: from the source)")
    parser.add_argument(
        "--max-chunk-mb",
        type=float,
        default=DEFAULT_MAX_CHUNK_MB,
        help="split embedding/head matrices larger than this into row shards (0: never)",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument(
        "--dtype",
        choices=["bfloat16", "float16", "float32"],
        help="store floating-point weights in this dtype (default: as the source holds them); "
        "the engine computes in SW_COMPUTE_DTYPE (float32 on CPU: each chunk is widened; "
        "SW_COMPUTE_DTYPE=bfloat16 skips that, about 2x faster streamed on AVX-512 CPUs)",
    )
    parser.set_defaults(handler=_chunk)


def _chunk(args: argparse.Namespace) -> int:
    from sw_core.chunks.chunker import chunk_model

    with progress_bar(f"chunking {Path(args.source).name}", total=None) as progress:
        manifest = chunk_model(
            args.source,
            args.out,
            name=args.name,
            max_chunk_mb=args.max_chunk_mb,
            progress=progress,
            dtype=args.dtype,
        )
    largest = max(manifest.chunks, key=lambda c: c.size_bytes)
    if args.json:
        from sw_core.cli.output import data_json

        data_json(
            {
                "name": manifest.name,
                "model_class": manifest.model_class,
                "chunks": len(manifest.chunks),
                "blocks": len(manifest.blocks()),
                "total_bytes": manifest.total_bytes,
                "largest": largest.name,
                "out": str(args.out),
            }
        )
        return 0
    print(
        f"{manifest.name}: {manifest.model_class}, {len(manifest.chunks)} chunks "
        f"({len(manifest.blocks())} blocks), {mib(manifest.total_bytes):.1f} MiB, "
        f"largest {largest.name} {mib(largest.size_bytes):.1f} MiB -> {args.out}"
    )
    if args.dtype in ("bfloat16", "float16"):
        print(
            f"note: workers compute in SW_COMPUTE_DTYPE (float32 on CPU by default: each chunk is "
            f"widened as it arrives); SW_COMPUTE_DTYPE={args.dtype} computes in {args.dtype} "
            "without widening (docs/engine.md, 'Narrower stored weights')",
            file=sys.stderr,
        )
    return 0
