"""The model a run starts from: a checkpoint (fine-tuning, resuming) or a fresh initialisation.

Training keeps fp32 master weights (bf16 is only an autocast option), so checkpoints are loaded in
fp32 whatever their stored dtype.
"""
from __future__ import annotations

import math

import torch

from .. import checkpoint as hf
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
    model, tokenizer, generation_config = _load(cfg, resume_path)
    if cfg.system_prompt is not None:
        tokenizer.system_prompt = cfg.system_prompt
    return model, tokenizer, generation_config


def _load(cfg, resume_path):
    from ..tokenizer import Tokenizer

    if resume_path is not None:
        model, tokenizer = hf.load(resume_path, dtype=torch.float32)
        return model, tokenizer, hf.read_generation_config(resume_path)
    if getattr(cfg, "init_config", None):
        if not cfg.tokenizer:
            raise ValueError("--init-config needs --tokenizer (a directory from `phi4r train tokenizer`)")
        tokenizer = Tokenizer.from_dir(cfg.tokenizer)
        return fresh_model(config_mod.load_file(cfg.init_config), tokenizer, cfg.seed), tokenizer, None
    if not cfg.model:
        raise ValueError("say what to train: --model CHECKPOINT (or --init-config SIZES --tokenizer DIR)")
    model, tokenizer = hf.load(cfg.model, dtype=torch.float32)
    return model, tokenizer, hf.read_generation_config(hf.resolve_model_path(cfg.model)) or None
