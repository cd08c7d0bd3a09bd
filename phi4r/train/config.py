"""Training configs: dataclasses whose fields are also `--flags` and keys of a YAML/JSON file.

Precedence: dataclass defaults < `--config file.yaml|json` < command-line flags. Field names follow
TRL's SFTConfig/GRPOConfig (learning_rate, num_generations, beta, epsilon, loss_type, ...), so a TRL
user's config file mostly carries over. Every run writes its resolved config as `train_config.yaml`
next to its checkpoints. No torch here: the CLI builds its parsers from these classes.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ALIASES = {"learning_rate": ["--lr"]}


def opt(default, help: str):
    """A field with its --help text; list defaults are copied per instance."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class TokenizerConfig:
    output_dir: str = opt("runs/tokenizer", "directory for tokenizer.json and its config files")
    tasks: list[str] = opt([], "tasks whose prompts and teacher traces make the corpus (default: every task with a teacher)")
    n_per_task: int = opt(200, "instances generated per task")
    difficulty: int | None = opt(None, "only this difficulty level (default: all levels)")
    data: str | None = opt(None, "extra JSONL corpus: {'messages': [...]} or {'text': ...} per line")
    vocab_size: int = opt(4096, "total vocabulary size, special tokens included")
    split: str = opt("cl100k", "pre-tokenizer: cl100k (Phi-4's) or fine (each digit and punctuation mark alone, for small models)")
    system_prompt: str | None = opt(None, "the checkpoint's default system prompt (default: Phi-4-reasoning's; '' for none)")
    seed: int = opt(0, "seed for the task generators")


@dataclass
class TrainConfig:
    """What SFT and GRPO share."""
    model: str | None = opt(None, "checkpoint directory (or 'nano') to start from")
    output_dir: str = opt("runs/train", "checkpoints, metrics.jsonl, PNG curves, train_config.yaml and final/")
    tasks: list[str] = opt([], "task names, comma separated (e.g. arithmetic,sat3)")
    n_per_task: int = opt(1000, "instances generated per task")
    difficulty: int | None = opt(None, "only this difficulty level (default: all levels)")
    data: str | None = opt(None, "JSONL file instead of / besides --tasks (SFT: {'messages': [...]}; GRPO: "
                                 "{'prompt': ..., 'answer': ..., 'task': ...} as phi4r.tasks.Instance)")
    system_prompt: str | None = opt(None, "system prompt injected when a conversation has none (default: the checkpoint's; '' for none)")
    learning_rate: float = opt(1e-5, "peak AdamW learning rate")
    warmup_steps: int = opt(0, "linear warm-up steps before the schedule")
    lr_scheduler_type: str = opt("cosine", "after the warm-up: cosine (to 0 at max_steps) or constant_with_warmup")
    weight_decay: float = opt(1e-4, "AdamW weight decay (matrices only; norm weights are not decayed)")
    adam_beta1: float = opt(0.9, "AdamW beta1")
    adam_beta2: float = opt(0.999, "AdamW beta2")
    adam_epsilon: float = opt(1e-8, "AdamW epsilon")
    max_grad_norm: float = opt(1.0, "gradient clipping norm (0 disables)")
    max_steps: int | None = opt(None, "optimizer steps (SFT default: from num_train_epochs)")
    logging_steps: int = opt(10, "log metrics every N steps")
    save_steps: int = opt(500, "write a checkpoint every N steps")
    save_total_limit: int | None = opt(2, "keep only the newest N checkpoints (none: keep all)")
    seed: int = opt(0, "seed for data order, initialisation and sampling")
    fsdp: bool = opt(False, "shard weights, gradients and optimizer state over the torchrun processes (FSDP2, "
                            "per decoder layer) instead of replicating them (DDP); checkpoints are sharded")
    fsdp_cpu_offload: bool = opt(False, "with --fsdp: keep the shards, gradients and optimizer state in host memory")
    gradient_checkpointing: bool = opt(False, "recompute each decoder layer's activations in backward instead of storing them")
    loss_chunk_size: int = opt(0, "positions per lm_head + log-softmax chunk, recomputed in backward, so the fp32 "
                                  "logits of a long sequence never exist at once (0: whole sequence)")
    resume_from_checkpoint: str | None = opt(None, "'latest' (newest checkpoint in output_dir) or a checkpoint directory")
    device: str = opt("auto", "cpu, cuda, cuda:N or auto (under torchrun: cuda:LOCAL_RANK when CUDA is there)")
    bf16: bool = opt(False, "bf16 autocast for forward/backward (weights and optimizer stay fp32)")
    use_peft: bool = opt(False, "train LoRA adapters on the frozen --model instead of all its weights; checkpoints "
                                "and final/ are PEFT adapter directories")
    lora_r: int = opt(16, "LoRA rank r")
    lora_alpha: int = opt(32, "LoRA alpha: the update is (alpha / r) * B @ A")
    lora_dropout: float = opt(0.05, "dropout on the adapters' input while training")
    lora_target_modules: list[str] = opt(["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
                                         "modules that get adapters: names or name suffixes (all-linear: every "
                                         "linear layer but lm_head)")
    use_rslora: bool = opt(False, "rank-stabilised LoRA: scale by alpha / sqrt(r)")
    torch_dtype: str = opt("auto", "dtype of the frozen base under --use-peft (auto: the checkpoint's, bf16 for "
                                   "Phi-4); adapters stay fp32, and full fine-tuning always trains fp32 weights")


@dataclass
class SFTConfig(TrainConfig):
    output_dir: str = opt("runs/sft", "checkpoints, metrics.jsonl, PNG curves, train_config.yaml and final/")
    init_config: str | None = opt(None, "JSON/YAML of Phi3Config sizes (from Python also the dict): start from a fresh "
                                        "random model instead of --model")
    tokenizer: str | None = opt(None, "tokenizer directory for --init-config (from `phi4r train tokenizer`)")
    max_length: int = opt(2048, "longest conversation in tokens; longer ones are dropped (counted in the log)")
    per_device_train_batch_size: int = opt(8, "conversations per forward/backward on each process")
    gradient_accumulation_steps: int = opt(1, "micro-batches per optimizer step; global batch = per_device * accum * processes")
    num_train_epochs: float = opt(1.0, "epochs when --max-steps is not given")
    eval_fraction: float = opt(0.05, "share of conversations held out for the evaluation loss "
                                     "(at least 8 while that leaves 3/4 to train on)")
    eval_steps: int = opt(100, "evaluate the held-out loss every N steps (and at the end)")
    group_by_length: bool = opt(True, "batch conversations of similar length together (less padding)")


@dataclass
class GRPOConfig(TrainConfig):
    output_dir: str = opt("runs/grpo", "checkpoints, metrics.jsonl, PNG curves, train_config.yaml and final/")
    learning_rate: float = opt(5e-8, "peak AdamW learning rate (the report: 5e-8)")
    weight_decay: float = opt(0.0, "AdamW weight decay")
    max_steps: int = opt(100, "steps: one batch of prompts each (num_iterations optimizer steps on it)")
    logging_steps: int = opt(1, "log metrics every N steps")
    save_steps: int = opt(50, "write a checkpoint every N steps")
    num_generations: int = opt(8, "G: completions sampled per prompt (the report: 8)")
    num_prompts_per_step: int = opt(64, "prompts per step across all processes (the report: 64)")
    per_device_train_batch_size: int = opt(8, "completions per forward/backward on each process")
    num_iterations: int = opt(1, "optimizer steps on each batch of generations (mu); >1 makes the ratio clip bite")
    verifier: str | None = opt(None, "task whose verifier grades --data lines that name no 'task'")
    max_num_seqs: int = opt(64, "sequences the engine decodes at once (at least num_generations)")
    max_prompt_length: int = opt(1024, "prompts longer than this (tokens) are dropped")
    max_completion_length: int = opt(1024, "sampling limit; also scales the length-aware reward's constants")
    temperature: float = opt(1.0, "sampling temperature")
    top_p: float = opt(1.0, "nucleus sampling")
    top_k: int = opt(0, "top-k sampling (0: off)")
    beta: float = opt(0.001, "KL coefficient to the frozen initial model, k3 estimator (0: no reference model)")
    epsilon: float = opt(0.2, "PPO ratio clip: ratios outside [1-epsilon, 1+epsilon_high] get no gradient")
    epsilon_high: float | None = opt(None, "upper clip (default: epsilon)")
    loss_type: str = opt("dapo", "grpo (per-sequence token mean), dapo/bnpo (token mean over the global batch), "
                                 "dr_grpo (token sum / (sequences * max_completion_length))")
    scale_rewards: bool = opt(True, "divide advantages by the group's reward std")
    l_max: int | None = opt(None, "length-aware reward L_max (default: max_completion_length)")
    l_pos: int | None = opt(None, "L_pos (default: 25600/31744 of L_max)")
    l_neg: int | None = opt(None, "L_neg (default: 3702/31744 of L_max)")
    repetition_ngram: int = opt(5, "n of the repetition penalty's n-grams")
    repetition_threshold: int = opt(5, "an n-gram seen this often or more counts as repeated")


# ---- coercion: CLI strings and YAML scalars to the field's type
def _coerce(hint, value, name: str):
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        (inner,) = [a for a in typing.get_args(hint) if a is not type(None)]
        return _coerce(inner, value, name)
    if typing.get_origin(hint) is list:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ValueError(f"{name}: expected a list or a comma-separated string, got {value!r}")
        return [str(x).strip() for x in items if str(x).strip()]
    if hint is bool:
        if isinstance(value, str):
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(f"{name}: expected true/false, got {value!r}")
            return value.lower() in ("true", "1", "yes")
        return bool(value)
    try:
        if hint is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        return hint(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected {hint.__name__}, got {value!r}") from None


def from_dict(cls, values: dict):
    """`cls(**values)` with type coercion; unknown keys are an error naming them."""
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(values) - set(hints))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s) {unknown}; known: {sorted(hints)}")
    return cls(**{k: _coerce(hints[k], v, k) for k, v in values.items()})


def load_file(path: str | Path) -> dict:
    path = Path(path)
    text = path.read_text()
    data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of config fields")
    return data


def save(config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))


def add_arguments(parser: argparse.ArgumentParser, cls) -> None:
    """One flag per field (`--n-per-task`, bools as `--x/--no-x`) plus `--config`. Flags default to
    "not given" so that a file's values survive unless overridden."""
    parser.add_argument("--config", help="YAML or JSON file of fields; flags override it")
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        flags = ["--" + f.name.replace("_", "-")] + ALIASES.get(f.name, [])
        kwargs = dict(dest=f.name, default=argparse.SUPPRESS, help=f"{f.metadata.get('help', '')} [{default}]")
        if hints[f.name] is bool:
            parser.add_argument(*flags, action=argparse.BooleanOptionalAction, **kwargs)
        else:
            parser.add_argument(*flags, metavar=f.name.upper(), **kwargs)


def from_args(cls, args: argparse.Namespace):
    """The config for parsed flags: the file (if --config) updated with the flags that were given."""
    values = load_file(args.config) if getattr(args, "config", None) else {}
    names = {f.name for f in dataclasses.fields(cls)}
    values.update({k: v for k, v in vars(args).items() if k in names})
    return from_dict(cls, values)
