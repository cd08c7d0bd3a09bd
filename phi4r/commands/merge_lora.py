"""`phi4r merge-lora BASE ADAPTER OUT`: fold a LoRA adapter into its base, as a plain checkpoint.

    phi4r merge-lora runs/sft/base runs/lora/final runs/merged    # W + (alpha / r) * B @ A per adapted layer

OUT loads anywhere a Hugging Face Phi-3 checkpoint does (phi4r, transformers, vLLM), with no PEFT.
The tokenizer is the adapter directory's when it has one (a `--use-peft` run saves the one it
trained with), else the base's; generation_config.json is the base's.
"""
from __future__ import annotations

import sys


def register(subparsers) -> None:
    p = subparsers.add_parser("merge-lora", help="merge a LoRA adapter (PEFT's format) into its base checkpoint",
                              description=__doc__.split("\n")[0])
    p.add_argument("base", metavar="BASE", help="the base checkpoint directory ('nano': the shipped model)")
    p.add_argument("adapter", metavar="ADAPTER", help="adapter directory: adapter_config.json + adapter_model.safetensors")
    p.add_argument("out", metavar="OUT", help="directory for the merged checkpoint")
    p.add_argument("--dtype", help="dtype of the merged weights [the base checkpoint's]")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from pathlib import Path

    from phi4r import checkpoint as hf
    from phi4r import lora
    from phi4r.tokenizer import Tokenizer
    from phi4r.train.checkpointing import save_model_dir

    base = hf.resolve_model_path(args.base)  # refusals are ValueErrors: cli.main prints them as one line
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out}: already exists and is not empty; OUT must be a new directory")
    print(f"merge-lora: loading {base}", file=sys.stderr)
    model, tokenizer = hf.load(base, dtype=args.dtype)
    config = lora.load_adapter(model, args.adapter)
    n = len(lora.lora_modules(model))
    lora.merge(model)
    if (Path(args.adapter) / "tokenizer.json").is_file():
        tokenizer = Tokenizer.from_dir(args.adapter)
    save_model_dir(out, model, tokenizer, hf.read_generation_config(base) or None)
    print(f"merge-lora: {n} layers merged (r={config.r}, scaling {config.scaling:g}) into {out}", file=sys.stderr)
    return 0
