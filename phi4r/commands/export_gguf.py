"""`phi4r export-gguf`: write a checkpoint as a GGUF file that llama.cpp and Ollama load.

    phi4r export-gguf path/to/checkpoint model-q8_0.gguf --type q8_0
"""
from __future__ import annotations

import sys

EXPORT_TYPES = ("f32", "bf16", "q8_0", "q4_0")  # phi4r.gguf_io.EXPORT_TYPES, without importing numpy here


def register(subparsers) -> None:
    p = subparsers.add_parser("export-gguf", help="write a checkpoint as a GGUF file (llama.cpp, Ollama)",
                              description=__doc__.split("\n")[0])
    p.add_argument("src", help="'nano', a checkpoint directory or a .gguf file")
    p.add_argument("out", help="the .gguf file to write (replaced only once complete)")
    p.add_argument("--type", default="bf16", choices=EXPORT_TYPES,
                   help="weight type of the 2-D tensors; norms stay f32 [bf16]")
    p.add_argument("--force-pretokenizer", action="store_true",
                   help="write even when llama.cpp has no pre-tokenizer for the tokenizer's split regex "
                        "(llama.cpp then splits with cl100k's and tokenizes differently from phi4r)")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from phi4r.checkpoint import load
    from phi4r.gguf_io import write_gguf

    if not args.out.endswith(".gguf"):
        raise ValueError(f"{args.out}: the output name must end in .gguf")
    model, tokenizer = load(args.src)
    for note in write_gguf(model, tokenizer, args.out, args.type, force_pre=args.force_pretokenizer,
                           name=str(args.src).rstrip("/").rsplit("/", 1)[-1].removesuffix(".gguf")):
        print(f"phi4r export-gguf: note: {note}", file=sys.stderr)
    print(f"wrote {args.out} ({args.type})", file=sys.stderr)
    return 0
