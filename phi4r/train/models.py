"""The model a run starts from: a checkpoint (fine-tuning, resuming) or a fresh initialisation.

Full fine-tuning keeps fp32 master weights (bf16 is only an autocast option), so checkpoints are
loaded in fp32 whatever their stored dtype. Under --use-peft the base stays frozen in --torch-dtype
(the checkpoint's own by default) and only fp32 LoRA adapters train (phi4r/lora.py).
"""
from __future__ import annotations

import math

import torch

from .. import checkpoint as hf
from .. import lora
from ..config import Phi3Config
from ..model import Phi3ForCausalLM
from . import config as config_mod


def fresh_model(sizes: dict, tokenizer, seed: int) -> Phi3ForCausalLM:
    """A random Phi-3 model of the given sizes for `tokenizer` (its vocabulary and special ids).

    GPT-2-style init: N(0, 0.02) for matrices, and the projections that write into the residual
    stream (o_proj, down_proj) scaled by 1/sqrt(2 * layers) so deep stacks start stable.
    """
    fields = {"vocab_size": tokenizer.vocab_size, "bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id,
              "pad_token_id": tokenizer.pad_id, "torch_dtype": "float32", **sizes}
    if fields["vocab_size"] < tokenizer.vocab_size:
        raise ValueError(f"vocab_size {fields['vocab_size']} is smaller than the tokenizer's {tokenizer.vocab_size}")
    config = Phi3Config.from_dict(fields)
    torch.manual_seed(seed)
    model = Phi3ForCausalLM(config)
    residual_std = 0.02 / math.sqrt(2 * config.num_hidden_layers)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, residual_std if name.endswith(("o_proj.weight", "down_proj.weight")) else 0.02)
    return model


def start(cfg, resume_path=None):
    """(model fp32, tokenizer, generation_config) for a run: the resume checkpoint, else --init-config
    with --tokenizer, else --model. A --system-prompt override becomes the tokenizer's default, so
    the checkpoints written inject at inference the prompt they were trained with."""
    loader = _load_lora if getattr(cfg, "use_peft", False) else _load
    model, tokenizer, generation_config = loader(cfg, resume_path)
    if cfg.system_prompt is not None:
        tokenizer.system_prompt = cfg.system_prompt
    return model, tokenizer, generation_config


def trainable(model) -> str:
    """What trains, for the run's first line: "LoRA r=16 on 160 modules: 0.5% of 14.7B parameters"."""
    params = {id(p): p for p in model.parameters()}.values()
    total, train = sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)
    if not lora.has_adapters(model):
        return f"all {total / 1e6:.1f}M parameters trained"
    return (f"LoRA r={model.lora_config.r} on {len(lora.lora_modules(model))} modules: {train / 1e6:.2f}M of "
            f"{total / 1e6:.1f}M parameters trained, base frozen in {str(model.dtype).removeprefix('torch.')}")


def _load(cfg, resume_path):
    from ..tokenizer import Tokenizer

    if resume_path is not None:
        model, tokenizer = hf.load(resume_path, dtype=torch.float32)
        return model, tokenizer, hf.read_generation_config(resume_path)
    if getattr(cfg, "init_config", None):
        if not cfg.tokenizer:
            raise ValueError("--init-config needs --tokenizer (a directory from `phi4r train tokenizer`)")
        tokenizer = Tokenizer.from_dir(cfg.tokenizer)
        sizes = cfg.init_config if isinstance(cfg.init_config, dict) else config_mod.load_file(cfg.init_config)
        return fresh_model(sizes, tokenizer, cfg.seed), tokenizer, None
    if not cfg.model:
        raise ValueError("say what to train: --model CHECKPOINT (or --init-config SIZES --tokenizer DIR)")
    model, tokenizer = hf.load(cfg.model, dtype=torch.float32)
    return model, tokenizer, hf.read_generation_config(hf.resolve_model_path(cfg.model)) or None


def _load_lora(cfg, resume_path):
    """The frozen base from --model with fresh adapters, or with the resume checkpoint's (an adapter directory)."""
    from ..tokenizer import Tokenizer

    if getattr(cfg, "init_config", None) or not cfg.model:
        raise ValueError("--use-peft adapts an existing model: give --model CHECKPOINT (not --init-config)")
    if getattr(cfg, "fsdp", False):
        raise ValueError("--use-peft with --fsdp is not supported: LoRA trains on one process or under DDP")
    base = hf.resolve_model_path(cfg.model)
    model, tokenizer = hf.load(base, dtype=cfg.torch_dtype)
    if resume_path is not None:
        lora.load_adapter(model, resume_path, trainable=True)
        tokenizer = Tokenizer.from_dir(resume_path)
    else:
        config = lora.LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                 target_modules=list(cfg.lora_target_modules), use_rslora=cfg.use_rslora,
                                 base_model_name_or_path=str(base.resolve()))
        lora.add_adapters(model, config, seed=cfg.seed)
    return model, tokenizer, hf.read_generation_config(base) or None
