"""``sw synth``: write a chunk set of random weights in the shape of a real model."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from sw_core.cli.flags import add_cli_flags, settings_from_args
from sw_core.cli.output import data, data_json
from sw_core.progress import progress_bar

#: S3 settings ``sw synth --out s3://...`` takes as flags too.
STORAGE_FLAGS = ["s3_endpoint", "s3_access_key", "s3_secret_key", "s3_secure", "s3_region"]
#: Same as ``sw_core.chunks.chunker.DEFAULT_MAX_CHUNK_MB`` (torch loads only when run).
DEFAULT_MAX_CHUNK_MB = 16


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "synth",
        help="write a chunk set of random weights in the shape of a real model",
        description=(
            "Write a chunk set with random weights of a named real shape (sizes, layers, "
            "heads and vocabulary of the published config), straight to a folder or to "
            "s3://BUCKET/PREFIX, chunk by chunk and tensor by tensor: the model is never in "
            "memory. The same --seed writes the same bytes. The manifest marks the set "
            "synthetic; sw register, the gateway's model list and the workers' logs say so. "
            "It costs what the real model costs to stream and compute, and answers nonsense."
        ),
        epilog="Exit status: 0 written; 2 bad shape, flags or destination, or no room on disk.",
    )
    parser.add_argument("shape", nargs="?", help="a shape from --list (e.g. llama-3-8b)")
    parser.add_argument("--out", metavar="DIR|s3://BUCKET/PREFIX", help="where to write it")
    parser.add_argument("--list", action="store_true", help="list the shapes and their sizes")
    parser.add_argument(
        "--layers", type=int, help="write only the first N blocks (per-layer sizes unchanged)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the values (default 0)")
    parser.add_argument("--name", help="model name in the manifest (default: the shape)")
    parser.add_argument(
        "--dtype",
        default="bfloat16",
        choices=["bfloat16", "int4"],
        help="stored weights: bfloat16, or int4 (the blocks' linear layers packed as sw chunk "
        "--quantize int4 packs them, the output head int8, embeddings and norms bfloat16)",
    )
    parser.add_argument(
        "--group-size",
        type=int,
        default=128,
        choices=[32, 64, 128, 256],
        help="int4: weights per scale and offset (128: 0.53 bytes per weight)",
    )
    parser.add_argument(
        "--max-chunk-mb",
        type=float,
        default=DEFAULT_MAX_CHUNK_MB,
        help="row shards of the embedding and head matrices (as sw chunk)",
    )
    parser.add_argument(
        "--tokenizer",
        metavar="DIR",
        help="a folder of tokenizer files to copy beside the chunks (jobs can then send "
        "text); it may not have more tokens than the shape's vocabulary",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_cli_flags(parser, STORAGE_FLAGS)
    parser.set_defaults(handler=_synth)


def _synth(args: argparse.Namespace) -> int:
    from sw_core.exceptions import ConfigError
    from sw_core.synth import SHAPES, planned_bytes, planned_chunks, synth_chunk_set

    if args.list:
        return _list(args.json)
    if args.shape and args.shape not in SHAPES:
        raise ConfigError(f"unknown shape {args.shape!r}; choose one of {', '.join(SHAPES)}")
    if not args.shape or not args.out:
        raise ConfigError("give a SHAPE and --out DIR|s3://BUCKET/PREFIX (see sw synth --list)")
    _, _, chunks = planned_chunks(
        args.shape,
        layers=args.layers,
        max_chunk_mb=args.max_chunk_mb,
        dtype=args.dtype,
        group_size=args.group_size,
    )
    total = planned_bytes(chunks)
    with progress_bar(f"synth {args.shape}", total, unit_bytes=True) as bar:
        manifest = synth_chunk_set(
            args.shape,
            args.out,
            settings=settings_from_args(args),
            dtype=args.dtype,
            seed=args.seed,
            layers=args.layers,
            name=args.name,
            max_chunk_mb=args.max_chunk_mb,
            tokenizer=args.tokenizer,
            progress=bar,
            group_size=args.group_size,
        )
    summary = {
        "name": manifest.name,
        "shape": args.shape,
        "synthetic": manifest.synthetic,
        "chunks": len(manifest.chunks),
        "blocks": len(manifest.blocks()),
        "total_bytes": manifest.total_bytes,
        "out": args.out,
    }
    if args.json:
        data_json(summary)
    else:
        data(
            f"{manifest.name}: {manifest.model_class}, {len(manifest.chunks)} chunks, "
            f"{_size(manifest.total_bytes)} -> {args.out}"
        )
    print(
        f"note: {manifest.describe_synthetic()}; it computes at the real model's cost and "
        "answers nonsense",
        file=sys.stderr,
    )
    return 0


def _list(as_json: bool) -> int:
    from sw_core.synth import SHAPES, planned_bytes, planned_chunks

    rows: list[dict[str, Any]] = []
    for name, shape in SHAPES.items():
        config, _, chunks = planned_chunks(name)
        rows.append(
            {
                "shape": name,
                "layers": int(config.num_hidden_layers),
                "bfloat16_bytes": planned_bytes(chunks),
                "about": shape.about,
            }
        )
    if as_json:
        data_json(rows)
        return 0
    for row in rows:
        data(
            f"{row['shape']:<14} {row['layers']:>3} layers  "
            f"{_size(row['bfloat16_bytes']):>9} bfloat16  {row['about']}"
        )
    return 0


def _size(n_bytes: int) -> str:
    return f"{n_bytes / 1e9:.2f} GB" if n_bytes >= 1e9 else f"{n_bytes / 1e6:.1f} MB"
