"""edge serve [MODEL ...]: an OpenAI-compatible HTTP server (needs the `serve` extra)."""

from __future__ import annotations

import argparse

from edge.cli.options import (
    add_draft_options,
    add_model_options,
    cluster_config,
    draft_kwargs,
    non_negative_int,
)

HELP = "serve models over an OpenAI-compatible HTTP API (pip install 'edge[serve]')"

EPILOG = """\
endpoints: POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /health,
GET /metrics (Prometheus), GET / (a chat page).

examples:
  edge serve                                   # smollm2-135m on http://127.0.0.1:8080
  edge serve qwen2.5-coder-0.5b --port 8000 --draft lookup
  edge serve --host 0.0.0.0 --api-key "$(openssl rand -hex 16)"   # for the home network
  edge serve --cors-origin http://localhost:3000   # a web app there may call the API
"""


def configure_parser(parser: argparse.ArgumentParser) -> None:
    from edge.server.config import DEFAULT_KV_SLOTS

    parser.epilog = EPILOG
    parser.add_argument(
        "models",
        nargs="*",
        metavar="MODEL",
        help="models to serve; clients name them by this name (a path by its last "
        "component) (default: smollm2-135m)",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: 127.0.0.1, this machine only; any other needs "
        "--api-key)",
    )
    parser.add_argument(
        "--port", type=_port, default=8080, help="TCP port (default: 8080; 0 picks a free one)"
    )
    parser.add_argument(
        "--api-key",
        default=None,
        metavar="KEY",
        help="require 'Authorization: Bearer KEY' on every API request (default: $EDGE_API_KEY)",
    )
    parser.add_argument(
        "--cors-origin",
        action="append",
        default=None,
        metavar="ORIGIN",
        dest="cors_origins",
        help="let web pages from ORIGIN (scheme://host[:port], or * for any) call the API from "
        "a browser (CORS; repeatable; the key, if set, is still required). Default: none, so "
        "browsers refuse other sites' calls",
    )
    parser.add_argument(
        "--queue",
        type=non_negative_int,
        default=8,
        metavar="N",
        help="requests that may wait while one generates; more get HTTP 429 (default: 8)",
    )
    parser.add_argument(
        "--kv-slots",
        type=non_negative_int,
        default=DEFAULT_KV_SLOTS,
        metavar="N",
        help="earlier KV cache prefixes kept per model, so conversations taking turns each "
        "prefill only what is new (at most a quarter of the memory available; 0: off; "
        f"default: {DEFAULT_KV_SLOTS})",
    )
    add_model_options(parser)
    add_draft_options(parser)


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is in [0, 65535], got {port}")
    return port


def main(args: argparse.Namespace) -> int:
    import os

    from edge.server import ServeConfig, check_extra
    from edge.server.config import DEFAULT_MODEL
    from edge.step_inputs import check_threads

    check_extra()  # before a pull or an export, not after
    check_threads(args.threads)
    check_threads(getattr(args, "draft_threads", None), "draft threads")
    config = ServeConfig(
        models=tuple(args.models) or (DEFAULT_MODEL,),
        host=args.host,
        port=args.port,
        api_key=args.api_key or os.environ.get("EDGE_API_KEY") or None,
        queue_size=args.queue,
        cors_origins=tuple(args.cors_origins or ()),
        kv_slots=args.kv_slots,
        load={
            "max_context": args.ctx,
            "threads": args.threads,
            "progress": not args.quiet,
            "memory_budget": args.memory_budget,
            "plan": args.plan,
            "cluster": cluster_config(args),
            **draft_kwargs(args),
        },
    )
    from edge.server import serve

    serve(config, quiet=args.quiet)
    return 0
