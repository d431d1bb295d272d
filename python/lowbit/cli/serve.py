"""``lowbit serve [MODEL]``: an OpenAI-compatible HTTP server (needs ``pip install 'lowbit[server]'``)."""
from __future__ import annotations

import os
import sys

from lowbit.cli.common import DEFAULT_MODEL, add_act_precision_flag, add_device_flags, load_for_cli, positive_int


def run(args) -> int:
    from lowbit.server import (MAX_SOLO_RUN_MS, MAX_STREAM_INTERVAL_MS, bind, build_app, check_in_range,
                               require_server_deps, serve)
    require_server_deps()                       # before the model loads
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in 0..65535, got {args.port}")
    if args.queue_size < 0:
        raise ValueError(f"--queue-size must be >= 0, got {args.queue_size}")
    for flag, value, top in (("--stream-interval-ms", args.stream_interval_ms, MAX_STREAM_INTERVAL_MS),
                             ("--solo-run-ms", args.solo_run_ms, MAX_SOLO_RUN_MS)):
        if value is not None:                   # the range build_app checks, named as the flag
            check_in_range(flag, value, top)
    api_key = args.api_key if args.api_key is not None else os.environ.get("LOWBIT_API_KEY") or None
    if api_key is not None and not api_key.strip():
        raise ValueError("--api-key is empty")
    sock = bind(args.host, args.port)
    try:
        model = load_for_cli(args.model, args, quiet=args.quiet)
        name = args.alias or args.model
        app = build_app(model, name, parallel=args.parallel, max_queue=args.queue_size,
                        prefill_chunk=args.prefill_chunk, api_key=api_key,
                        stream_interval_ms=args.stream_interval_ms, solo_run_ms=args.solo_run_ms)
        host, port = sock.getsockname()[:2]
        print(f"lowbit: serving {name} (n_ctx {model.n_ctx}, {args.parallel} parallel, "
              f"{args.act_precision} activations) at http://{host}:{port}/v1"
              f"{' (API key required)' if api_key else ''}; Ctrl+C stops", file=sys.stderr, flush=True)
        serve(app, sock, log_level=args.log_level)
    finally:
        sock.close()
    return 0


def add_parser(sub) -> None:
    from lowbit.server import (DEFAULT_ACT_PRECISION, DEFAULT_HOST, DEFAULT_PORT, DEFAULT_QUEUE, DEFAULT_SOLO_RUN_MS,
                               DEFAULT_STREAM_INTERVAL_MS)
    sp = sub.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API",
                        usage="lowbit serve [options] [MODEL]",
                        description="Serve MODEL (a registry name or a GGUF path) at /v1/chat/completions, /v1/embeddings, "
                                    "/v1/completions, /v1/models, /health and /metrics. Binds 127.0.0.1 "
                                    "unless --host says otherwise. Needs: pip install 'lowbit[server]'.")
    sp.add_argument("model", nargs="?", default=DEFAULT_MODEL, metavar="MODEL",
                    help=f"registry name or GGUF path (default {DEFAULT_MODEL})")
    sp.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST}; "
                                                         f"0.0.0.0 exposes the server to the network)")
    sp.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"TCP port (default {DEFAULT_PORT}; 0: a free one)")
    sp.add_argument("--parallel", "-np", type=positive_int, default=1,
                    help="requests generated at once, each in its own KV cache (default 1)")
    sp.add_argument("--queue-size", type=int, default=DEFAULT_QUEUE,
                    help=f"requests that may wait for a slot; more get HTTP 429 (default {DEFAULT_QUEUE})")
    sp.add_argument("--prefill-chunk", type=positive_int, default=None,
                    help="most prompt tokens evaluated per step, so long prompts do not stall running "
                         "streams (default 256)")
    sp.add_argument("--stream-interval-ms", type=float, default=None,
                    help="a stream's tokens drawn within this many ms of its last SSE chunk share the next "
                         f"chunk (fewer chunks: less CPU for server and client; 0: a chunk per token; "
                         f"default {DEFAULT_STREAM_INTERVAL_MS:g})")
    sp.add_argument("--solo-run-ms", type=float, default=None,
                    help="while one request decodes alone, its steps run in the core for up to this many ms "
                         "per call and its tokens go out together, each its own chunk (less CPU per token; "
                         f"0: a call per token; default {DEFAULT_SOLO_RUN_MS:g})")
    sp.add_argument("--api-key", default=None,
                    help="require 'Authorization: Bearer KEY' on /v1 (default: $LOWBIT_API_KEY, else none)")
    sp.add_argument("--alias", default=None, help="model id shown in /v1/models (default: MODEL as given)")
    sp.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"],
                    help="uvicorn's log level (default warning)")
    sp.add_argument("-q", "--quiet", action="store_true", help="no load progress")
    g = sp.add_argument_group("model")
    g.add_argument("--n-ctx", "--ctx", dest="ctx", type=positive_int, default=None,
                   help="context length of each slot (default: the model's, capped to available memory)")
    g.add_argument("--threads", "-t", type=positive_int, default=None, help="CPU threads (default: physical cores)")
    g.add_argument("--batch", type=positive_int, default=512, help="prefill batch size")
    g.add_argument("--kv-type", default="f16", choices=["f16", "q8_0"], help="KV cache type")
    # q8 by default: a decode step of several streams batched together is compute-bound, and two-pass
    # activations double its int8 work (README, "Serve")
    add_act_precision_flag(g, DEFAULT_ACT_PRECISION)
    add_device_flags(g)
    sp.set_defaults(func=run)
