"""`phi4r serve`: an OpenAI-compatible HTTP server and a chat page for one model.

    phi4r serve                                   # the nano model on http://127.0.0.1:8000 (chat page at /)
    phi4r serve --model ~/models/Phi-4-reasoning --dtype bfloat16 --api-key secret --port 8080
"""
from __future__ import annotations

import os
import sys

EPILOG = ("Endpoints: POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /health, GET /metrics, "
          "GET / (chat page). Unset sampling fields take the checkpoint's generation_config.json. "
          "Ctrl+C lets streams in flight finish for --graceful-timeout seconds, then ends them.")


def register(subparsers) -> None:
    from phi4r.server import defaults

    p = subparsers.add_parser("serve", help="serve a model over the OpenAI HTTP API, with a chat page",
                              description=__doc__.split("\n")[0], epilog=EPILOG)
    p.add_argument("--model", default="nano", help="'nano' or a checkpoint directory [nano]")
    p.add_argument("--host", default="127.0.0.1", help="address to bind [127.0.0.1: this machine only]")
    p.add_argument("--port", type=int, default=8000, help="[8000]")
    p.add_argument("--api-key", default=os.environ.get("PHI4R_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on /v1 [$PHI4R_API_KEY; none]")
    p.add_argument("--served-model-name", help="the model name clients send [the --model value]")
    p.add_argument("--max-num-seqs", type=int, default=16, help="sequences generated together [16]")
    p.add_argument("--max-model-len", type=int, help="context length [the model's]")
    p.add_argument("--max-queue", type=int, default=defaults.MAX_QUEUE,
                   help=f"sequences waiting for a slot before new requests get 429 [{defaults.MAX_QUEUE}]")
    p.add_argument("--max-body-bytes", type=int, default=defaults.MAX_BODY_BYTES,
                   help=f"largest request body; larger ones get 413 [{defaults.MAX_BODY_BYTES}]")
    p.add_argument("--dtype", help="float32, bfloat16 or float16 [the checkpoint's]")
    p.add_argument("--quantization", choices=["int8", "w8a8"],
                   help="int8: weight-only int8 linear layers; w8a8: int8 weights and per-token int8 activations")
    p.add_argument("--threads", type=int, help="torch CPU threads [1 for models under 100M parameters, else torch's "
                                               "default, one per core]; fewer is "
                                               "faster on a machine busy with other work")
    p.add_argument("--compile", action="store_true", default=None,
                   help="decode through torch.compile: faster steps after 5-70 s of compiling at start (also PHI4R_COMPILE=1)")
    p.add_argument("--seed", type=int, help="makes unseeded requests reproducible across restarts")
    p.add_argument("--graceful-timeout", type=float, default=defaults.GRACEFUL_TIMEOUT,
                   help=f"seconds to let streams finish on shutdown [{defaults.GRACEFUL_TIMEOUT:g}]")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=_run)


def _run(args) -> int:
    import torch

    from phi4r.api import LLM
    from phi4r.checkpoint import CheckpointError
    from phi4r.server.app import create_app, make_server

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.api_key:
        print(f"warning: serving on {args.host} without --api-key: anyone who can reach it can use it", file=sys.stderr)
    try:
        llm = LLM(args.model, dtype=args.dtype, quantization=args.quantization, max_num_seqs=args.max_num_seqs,
                  max_model_len=args.max_model_len, seed=args.seed, threads=args.threads, compile=args.compile)
    except (CheckpointError, ValueError) as e:
        print(f"phi4r serve: {e}", file=sys.stderr)
        return 1
    name = args.served_model_name or args.model
    app = create_app(llm, model_name=name, api_key=args.api_key, max_queue=args.max_queue,
                     max_body_bytes=args.max_body_bytes)
    print(f"serving {name!r} on http://{args.host}:{args.port} (chat page at /, API at /v1)", file=sys.stderr)
    try:
        make_server(app, host=args.host, port=args.port, graceful_timeout=args.graceful_timeout,
                    log_level=args.log_level).run()
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl+C after its graceful shutdown
        pass
    return 0
