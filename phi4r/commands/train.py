"""`phi4r train tokenizer | sft | grpo`: the training recipe from the command line.

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
    for name, cls, help_text, handler in (
        ("tokenizer", C.TokenizerConfig, "a small byte-level BPE with Phi-4's special tokens and <think>/</think>",
         _tokenizer),
        ("sft", C.SFTConfig, "supervised fine-tuning on teacher traces or a JSONL of conversations", _sft),
        ("grpo", C.GRPOConfig, "GRPO with the tasks' verifiers and the report's length-aware reward", _grpo),
    ):
        p = sub.add_parser(name, help=help_text, description=help_text, epilog=EPILOG.format(cmd=name))
        C.add_arguments(p, cls)
        p.set_defaults(func=handler, config_class=cls)
    from ..recipes.nano import recipe  # the shipped model end to end (its own flags: --out, --ship, ...)

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


def _tokenizer(args) -> int:
    from ..train.bpe import train_tokenizer

    train_tokenizer(_resolve(args))
    return 0


def _sft(args) -> int:
    from ..train.sft import train_sft

    train_sft(_resolve(args))
    return 0


def _grpo(args) -> int:
    from ..train.grpo import train_grpo

    train_grpo(_resolve(args))
    return 0
