"""`phi4r quantize SRC DST`: a quantized copy of a checkpoint, in the compressed-tensors format.

    phi4r quantize path/to/model path/to/model-w8a8 --quantization w8a8
    phi4r generate --model path/to/model-w8a8 "What is 7 + 5?"    # loads the int8 weights as they are

DST loads in phi4r in seconds (no re-quantization, the same logits as `--quantization` at load) and in vLLM
(phi4r/compressed.py: the formats; lm_head stays bf16 in the file).
"""
from __future__ import annotations

from pathlib import Path

from ._options import number


def register(subparsers) -> None:
    p = subparsers.add_parser("quantize", help="write a quantized copy of a checkpoint (compressed-tensors, "
                                               "as vLLM loads it)", description=__doc__.split("\n")[0])
    p.add_argument("src", type=Path, help="a float checkpoint directory ('nano': the shipped model)")
    p.add_argument("dst", type=Path, help="a new directory for the quantized checkpoint")
    p.add_argument("--quantization", required=True, choices=["int8", "w8a8", "int4"],
                   help="w8a8: int8 weights and per-token int8 activations; int8: weight-only int8; "
                        "int4: weight-only int4 in groups")
    p.add_argument("--group-size", type=number(int, 8, "a multiple of 8 >= 8"), default=128,
                   help="int4: weights per scale along a row [128]")
    p.set_defaults(func=_run)


def _run(args) -> int:
    import sys
    import time

    from phi4r.checkpoint import CheckpointError, resolve_model_path
    from phi4r.compressed import quantize_checkpoint

    src = resolve_model_path(str(args.src))
    if args.dst.exists() and any(args.dst.iterdir()):
        raise CheckpointError(f"{args.dst}: exists and is not empty; name a new directory")
    start = time.perf_counter()
    quantize_checkpoint(src, args.dst, args.quantization, group_size=args.group_size, progress=True)
    print(f"phi4r quantize: wrote {args.dst} ({args.quantization}) in {time.perf_counter() - start:.0f} s",
          file=sys.stderr)
    return 0
