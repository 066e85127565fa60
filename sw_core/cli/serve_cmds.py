"""``sw serve``: the OpenAI-compatible HTTP gateway (see :mod:`gateway`)."""

from __future__ import annotations

import argparse

from sw_core.cli.flags import Subparsers, add_cli_flags, settings_from_args

#: Settings ``sw serve`` takes as flags (the rest come from SW_* variables).
SERVE_FLAGS = [
    "redis_url",
    "key_prefix",
    "heartbeat_ttl_s",
    "gateway_timeout_s",
    "gateway_max_streams",
    "gateway_allowed_origins",
    "gateway_read_timeout_s",
    "gateway_idle_timeout_s",
    "gateway_max_connections",
    "max_payload_bytes",
]


def register(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve the OpenAI-compatible HTTP API and the status page",
        description=(
            "POST /v1/embeddings, /v1/chat/completions (stream: true -> Server-Sent Events), "
            "/v1/completions; GET /v1/models, /healthz, /readyz; a status page with a "
            "playground at /. Each request becomes jobs on the job stream. API keys come "
            "from SW_API_KEYS (comma-separated, never a flag); without keys only a loopback "
            "--host is accepted."
        ),
        epilog="Exit status: SIGINT/SIGTERM finish the open requests (5 s at most), then end "
        "the process by that signal (130/143, as uvicorn does); 2 bad settings (e.g. a public "
        "--host without SW_API_KEYS).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (8000)")
    add_cli_flags(parser, SERVE_FLAGS)
    parser.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    from gateway.server import serve

    serve(settings_from_args(args), host=args.host, port=args.port)
    return 0
