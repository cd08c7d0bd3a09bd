"""`phi4r train tokenizer | sft | grpo | plan`: the training recipe from the command line.

Every field of the config dataclasses (phi4r/train/config.py) is a flag; `--config run.yaml` reads
a file of fields, flags override it. SFT and GRPO run unchanged under torchrun:

    torchrun --nproc_per_node 2 -m phi4r.cli train sft --model ckpt --tasks arithmetic --output-dir runs/sft
"""
from __future__ import annotations

EPILOG = "Flags override --config (YAML or JSON with the same field names); [defaults] in brackets."


def register(subparsers) -> None:
    from ..train import config as C

    parser = subparsers.add_parser("train", help="train a tokenizer, SFT on teacher traces, GRPO with verifiers",
                                   description="The Phi-4-reasoning recipe: SFT on reasoning traces, then GRPO "
                                               "with the length-aware reward.")
    sub = parser.add_subparsers(dest="train_command", metavar="STAGE", required=True)
    for name, cls, help_text, trainer in (  # trainer: the phi4r.train function that takes the config
        ("tokenizer", C.TokenizerConfig, "a small byte-level BPE with Phi-4's special tokens and <think>/</think>",
         "bpe.train_tokenizer"),
        ("sft", C.SFTConfig, "supervised fine-tuning on teacher traces or a JSONL of conversations", "sft.train_sft"),
        ("grpo", C.GRPOConfig, "GRPO with the tasks' verifiers and the report's length-aware reward", "grpo.train_grpo"),
    ):
        p = sub.add_parser(name, help=help_text, description=help_text, epilog=EPILOG.format(cmd=name))
        C.add_arguments(p, cls)
        p.set_defaults(func=_train, config_class=cls, trainer=trainer)
    _register_plan(sub)
    from ..recipes.nano import (
        recipe,  # the shipped model end to end (its own flags: --out, --ship, ...)
    )

    recipe.register(sub)


def _resolve(args):
    import json

    import yaml

    from ..train.config import from_args

    try:
        return from_args(args.config_class, args)
    except json.JSONDecodeError as e:
        raise ValueError(f"{args.config}: not valid JSON ({e.msg}, line {e.lineno})") from None
    except yaml.YAMLError as e:  # its text spans several lines: name the problem and where
        mark = getattr(e, "problem_mark", None)
        raise ValueError(f"{args.config}: not valid YAML ({getattr(e, 'problem', e)}"
                         f"{f', line {mark.line + 1}' if mark else ''})") from None


def _train(args) -> int:
    import importlib

    module, function = args.trainer.split(".")
    getattr(importlib.import_module(f"phi4r.train.{module}"), function)(_resolve(args))
    return 0


def _register_plan(sub) -> None:
    p = sub.add_parser("plan", help="memory per rank of a training setup, from the model config alone",
                       description="Weights, gradients, AdamW state, activations and logits per rank for one "
                                   "micro-batch step, before renting machines (phi4r/train/plan.py says what is counted).")
    p.add_argument("--model", required=True, help="model directory, config.json, JSON/YAML of Phi3Config fields, "
                                                  "'phi4-reasoning' or 'nano'")
    p.add_argument("--world-size", type=int, default=1, help="processes (GPUs) [1]")
    p.add_argument("--seq-len", type=int, required=True, help="tokens per sequence")
    p.add_argument("--micro-batch", type=int, default=1, help="sequences per forward on each rank [1]")
    p.add_argument("--dtype", default="bf16", help="compute dtype: bf16 (--bf16 / FSDP mixed precision; the LoRA "
                                                   "base) or fp32 [bf16]")
    p.add_argument("--fsdp", action="store_true", help="FSDP2: weights, gradients and AdamW state sharded over ranks")
    p.add_argument("--fsdp-cpu-offload", action="store_true", help="shards, gradients and AdamW state in host memory")
    p.add_argument("--gradient-checkpointing", action="store_true", help="recompute decoder layers in backward")
    p.add_argument("--loss-chunk-size", type=int, default=0, help="lm_head + log-softmax chunk (0: whole sequence) [0]")
    p.add_argument("--use-peft", action="store_true", help="LoRA: frozen base in --dtype, fp32 adapters")
    p.add_argument("--lora-r", type=int, default=16, help="LoRA rank [16]")
    p.add_argument("--lora-target-modules", default="qkv_proj,o_proj,gate_up_proj,down_proj",
                   help="comma separated [qkv_proj,o_proj,gate_up_proj,down_proj]")
    p.add_argument("--gpu-memory", type=float, default=None, help="GiB per GPU: say whether the peak fits (exit status 1 when not)")
    p.add_argument("--json", action="store_true", help="print the numbers (bytes) as JSON")
    p.set_defaults(func=_plan)


def _plan(args) -> int:
    import json
    import sys

    from ..train.plan import GB, describe, load_config, plan

    config = load_config(args.model)
    names = ("world_size", "seq_len", "micro_batch", "fsdp", "gradient_checkpointing", "loss_chunk_size", "use_peft", "dtype")
    options = {name: getattr(args, name) for name in names} | {"cpu_offload": args.fsdp_cpu_offload}
    if args.use_peft:
        options.update(lora_r=args.lora_r, lora_target_modules=[m.strip() for m in args.lora_target_modules.split(",")])
    result = plan(config, **options)
    if args.json:
        print(json.dumps(result))
    else:
        print(describe(config, result, {k: v for k, v in options.items() if v not in (False, 0)}))
    if args.gpu_memory is not None:
        fits = result["peak"] <= args.gpu_memory * GB
        print(f"{'fits' if fits else 'does NOT fit'} in {args.gpu_memory:g} GiB per GPU",
              file=sys.stderr if args.json else sys.stdout)
        return 0 if fits else 1
    return 0
