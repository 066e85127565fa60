"""``sw chunk``: cut a model into verified layer chunks."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sw_core.cli.flags import Subparsers
from sw_core.progress import progress_bar
from sw_core.utils import mib

#: Same as ``sw_core.chunks.chunker.DEFAULT_MAX_CHUNK_MB``; the chunker (and torch) load only when run.
DEFAULT_MAX_CHUNK_MB = 16
#: Same as ``sw_core.chunks.quantize.DEFAULT_GROUP_SIZE``.
DEFAULT_GROUP_SIZE = 32

FORMATS_HELP = """\
packed formats (kept at their stored width; docs/engine.md, "Packed weights"):
  GGUF Q4_0, Q4_1, Q4_K        int4, repacked losslessly into the int4 kernel's layout
  GGUF Q5_0, Q5_1, Q5_K, Q8_0  int4 in two planes (8-bit values), lossless
  GGUF Q6_K and other types    re-rounded to 8 bits per group of 32 (error documented)
  GGUF F32, F16, BF16          kept as they are
  --quantize int8              linear layers: int8, one scale per output channel
  --quantize int4              linear layers: int4, scale and offset per --group-size
                               inputs; the output head int8; embeddings, norms and
                               biases as stored (--dtype narrows them)
Workers compute packed weights with bfloat16 activations (SW_COMPUTE_DTYPE=auto on AVX-512
CPUs and GPUs) or widen them on arrival (SW_COMPUTE_DTYPE=float32: exactly the dequantized
model)."""


def register(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "chunk",
        help="cut a model folder or .gguf file into safetensors layer chunks + manifest",
        description=(
            "Write one safetensors chunk per transformer block, chunks for the embeddings and "
            "the head, the config and tokenizer files, and manifest.json with a sha256 per chunk."
        ),
        epilog=FORMATS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
    parser.add_argument(
        "--quantize",
        choices=["int8", "int4"],
        help="quantize the linear layers of a safetensors/transformers source as they are read "
        "(round to nearest, weight only; see the formats below)",
    )
    parser.add_argument(
        "--group-size",
        type=int,
        default=DEFAULT_GROUP_SIZE,
        choices=[32, 64, 128, 256],
        help=f"inputs per scale and offset of --quantize int4 (default {DEFAULT_GROUP_SIZE})",
    )
    parser.set_defaults(handler=_chunk)


def _peak_rss(source: str) -> dict[str, float] | None:
    """The GGUF reader's resident memory before and at the peak of its tensor phase."""
    if not str(source).endswith(".gguf"):
        return None
    from sw_core.chunks.gguf_chunker import LAST_PEAK_RSS_MB

    return dict(LAST_PEAK_RSS_MB) or None


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
            quantize=args.quantize,
            group_size=args.group_size,
        )
    largest = max(manifest.chunks, key=lambda c: c.size_bytes)
    rss = _peak_rss(args.source)
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
                "packed_tensors": len(manifest.packed),
                **({"tensor_phase_rss_mb": rss} if rss else {}),
            }
        )
        return 0
    print(
        f"{manifest.name}: {manifest.model_class}, {len(manifest.chunks)} chunks "
        f"({len(manifest.blocks())} blocks), {mib(manifest.total_bytes):.1f} MiB, "
        f"largest {largest.name} {mib(largest.size_bytes):.1f} MiB -> {args.out}"
    )
    if manifest.packed:
        kinds: dict[str, int] = {}
        for fmt in manifest.formats.values():
            label = f"{fmt.kind}{'x2' if fmt.planes == 2 else ''} ({fmt.source})"
            kinds[label] = kinds.get(label, 0) + 1
        print("packed: " + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())))
    if rss:
        print(
            f"peak RSS reading the tensors: {rss['peak']:.0f} MiB "
            f"({rss['peak'] - rss['before']:.0f} MiB above the {rss['before']:.0f} MiB before)"
        )
    if args.dtype in ("bfloat16", "float16"):
        print(
            f"note: workers compute in SW_COMPUTE_DTYPE (float32 on CPU by default: each chunk is "
            f"widened as it arrives); SW_COMPUTE_DTYPE={args.dtype} computes in {args.dtype} "
            "without widening (docs/engine.md, 'Narrower stored weights')",
            file=sys.stderr,
        )
    return 0
