"""`phi4r serve`: an OpenAI-compatible HTTP server and a chat page for one model.

    phi4r serve                                   # the nano model on http://127.0.0.1:8000 (chat page at /)
    phi4r serve --model ~/models/Phi-4-reasoning --dtype bfloat16 --api-key secret --port 8080
"""
from __future__ import annotations

import os
import sys

from ._options import add_loop_guard_arg, add_model_args, count, load_llm, non_negative, number, positive_int

EPILOG = ("Endpoints: POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /health, GET /metrics, "
          "GET / (chat page). Unset sampling fields take the checkpoint's generation_config.json. "
          "Ctrl+C lets streams in flight finish for --graceful-timeout seconds, then ends them.")


def register(subparsers) -> None:
    from phi4r.server import defaults

    p = subparsers.add_parser("serve", help="serve a model over the OpenAI HTTP API, with a chat page",
                              description=__doc__.split("\n")[0], epilog=EPILOG)
    add_model_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind [127.0.0.1: this machine only]")
    p.add_argument("--port", type=number(int, 0, "a port number", 65535), default=8000, help="[8000]")
    p.add_argument("--api-key", default=os.environ.get("PHI4R_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on /v1 [$PHI4R_API_KEY; none]")
    p.add_argument("--served-model-name", help="the model name clients send [the --model value]")
    p.add_argument("--max-num-seqs", type=positive_int, default=16, help="sequences generated together [16]")
    p.add_argument("--max-model-len", type=positive_int, help="context length [the model's]")
    p.add_argument("--max-queue", type=count, default=defaults.MAX_QUEUE,
                   help=f"sequences waiting for a slot before new requests get 429 [{defaults.MAX_QUEUE}]")
    p.add_argument("--max-body-bytes", type=positive_int, default=defaults.MAX_BODY_BYTES,
                   help=f"largest request body; larger ones get 413 [{defaults.MAX_BODY_BYTES}]")
    p.add_argument("--seed", type=int, help="makes unseeded requests reproducible across restarts")
    p.add_argument("--graceful-timeout", type=non_negative, default=defaults.GRACEFUL_TIMEOUT,
                   help=f"seconds to let streams finish on shutdown [{defaults.GRACEFUL_TIMEOUT:g}]")
    add_loop_guard_arg(p, default=False)
    p.add_argument("--reasoning-stream", choices=["eager", "hold"], default="eager",
                   help="eager: stream the answer as it is generated (a later </think> sends a correction); "
                        "hold: hold the answer back until the generation ends, so streams equal the final split [eager]")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=_run)


def _run(args) -> int:
    from phi4r.server.app import create_app, make_server

    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.api_key:
        print(f"warning: serving on {args.host} without --api-key: anyone who can reach it can use it", file=sys.stderr)
    llm = load_llm(args, "serve", max_num_seqs=args.max_num_seqs, max_model_len=args.max_model_len, seed=args.seed)
    name = args.served_model_name or args.model
    app = create_app(llm, model_name=name, api_key=args.api_key, max_queue=args.max_queue,
                     max_body_bytes=args.max_body_bytes, loop_guard=args.loop_guard,
                     reasoning_stream=args.reasoning_stream)
    print(f"serving {name!r} on http://{args.host}:{args.port} (chat page at /, API at /v1)", file=sys.stderr)
    try:
        make_server(app, host=args.host, port=args.port, graceful_timeout=args.graceful_timeout,
                    log_level=args.log_level).run()
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl+C after its graceful shutdown
        pass
    return 0
