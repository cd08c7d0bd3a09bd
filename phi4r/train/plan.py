"""`phi4r train plan`: the memory one rank needs for a training configuration, from the model config alone.

What phi4r's trainers hold, per rank, for one optimizer step of `micro_batch` sequences of `seq_len`:
- weights: fp32 master weights (full fine-tuning; 1/N of them under FSDP), plus what a step gathers
  or casts: FSDP's unsharded root (embeddings, lm_head) and two decoder layers (the current one and
  the prefetched next) in the compute dtype; without FSDP, autocast's bf16 copy of every weight.
  LoRA: the frozen base in `dtype` plus fp32 adapters.
- grads: fp32, one per trainable weight (1/N under FSDP, plus the unsharded root and layer gradients
  waiting for their reduce-scatter, in the compute dtype and fp32).
- optimizer: AdamW's two fp32 moments per trainable weight (1/N under FSDP).
- activations: what backward keeps of each decoder layer (everything, or only its input with
  gradient checkpointing, plus one layer recomputed at a time), counted tensor by tensor for
  phi4r's layer with a fused attention kernel (no T x T matrix: flash/SDPA's memory-efficient path).
- logits: the fp32 log-softmax kept for backward and its two gradients, for the whole sequence or
  one `loss_chunk_size` chunk.
The peak is weights + optimizer + the larger of the two moments of backward: its start (activations
+ logits) and its middle (activations + the recomputed layer + gradients). Not counted: the CUDA
context, communication buffers and allocator fragmentation (budget a few GB). Checked against
measured peaks of small models on CPU (tests/test_train_plan.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import Phi3Config

GB = 1024**3
DTYPE_BYTES = {"bf16": 2, "bfloat16": 2, "fp16": 2, "float16": 2, "fp32": 4, "float32": 4}
LORA_MODULES = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")
NAMED = {"phi4-reasoning": {}}  # Phi3Config's defaults are Phi-4-reasoning's exact config


def load_config(spec: str) -> Phi3Config:
    """A model directory, its config.json, a JSON/YAML of Phi3Config fields, 'phi4-reasoning' or 'nano'."""
    from ..checkpoint import read_config, resolve_model_path
    from . import config as config_mod

    if spec in NAMED:
        return Phi3Config(**NAMED[spec])
    path = Path(spec)
    if path.is_file():
        return Phi3Config.from_dict(config_mod.load_file(path))
    return read_config(resolve_model_path(spec))


@dataclass
class Shapes:
    """Per-layer and whole-model parameter counts of a config."""
    layer: int
    root: int  # embeddings + lm_head + final norm: FSDP's root unit
    total: int

    @classmethod
    def of(cls, c: Phi3Config) -> Shapes:
        H, I, L, V = c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.vocab_size
        q, kv = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
        layer = H * (q + 2 * kv) + q * H + H * 2 * I + I * H + 2 * H
        root = V * H * (1 if c.tie_word_embeddings else 2) + H
        return cls(layer, root, L * layer + root)


def lora_params(c: Phi3Config, r: int, modules=LORA_MODULES) -> int:
    """A (r x in) and B (out x r) for each target module of each layer."""
    H, I = c.hidden_size, c.intermediate_size
    q, kv = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
    sizes = {"qkv_proj": (H, q + 2 * kv), "o_proj": (q, H), "gate_up_proj": (H, 2 * I), "down_proj": (I, H)}
    unknown = sorted(set(modules) - set(sizes))
    if unknown:
        raise ValueError(f"unknown LoRA target module(s) {unknown}; phi4r's are {list(sizes)}")
    return c.num_hidden_layers * sum(r * (i + o) for i, o in (sizes[m] for m in modules))


def layer_activations(c: Phi3Config) -> int:
    """Elements a decoder layer keeps for backward, per token: its input and the normed input (2H), the
    fused qkv output, the rotated q/k and the rolled copy RoPE multiplies, the attention output and its
    reshaped copy (o_proj's input), the residual and its norm (2H), gate_up's output (2I), silu(gate)
    and the product down_proj reads (2I), and the attention kernel's log-sum-exp (one per head)."""
    H, I = c.hidden_size, c.intermediate_size
    q, kv = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
    return 4 * H + (q + 2 * kv) + 2 * (q + kv) + 2 * q + 4 * I + c.num_attention_heads


def plan(c: Phi3Config, world_size: int = 1, seq_len: int = 4096, micro_batch: int = 1, fsdp: bool = False,
         gradient_checkpointing: bool = False, loss_chunk_size: int = 0, use_peft: bool = False, lora_r: int = 16,
         lora_target_modules=LORA_MODULES, dtype: str = "bf16", cpu_offload: bool = False) -> dict:
    """Bytes per rank: {weights, grads, optimizer, activations, logits, peak, host} (see the module doc)."""
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"dtype must be one of {sorted(DTYPE_BYTES)}, got {dtype!r}")
    if world_size < 1 or seq_len < 1 or micro_batch < 1:
        raise ValueError("world size, sequence length and micro-batch must be positive")
    s = DTYPE_BYTES[dtype]
    shapes = Shapes.of(c)
    n = world_size if fsdp else 1
    tokens = seq_len * micro_batch
    trainable = lora_params(c, lora_r, lora_target_modules) if use_peft else shapes.total
    sharded = (shapes.total * s + trainable * 4 if use_peft else shapes.total * 4) / n
    gathered = 0
    if fsdp:
        gathered = (shapes.root + 2 * shapes.layer) * s  # unsharded for compute
    elif s < 4 and not use_peft:
        gathered = shapes.total * s  # autocast's cast of every weight, kept for backward
    grads_sharded, optimizer = trainable * 4 / n, trainable * 8 / n
    # FSDP: the unsharded root and layer gradients waiting for their fp32 reduce-scatter.
    grads_working = (shapes.root + shapes.layer) * (s + 4) if fsdp and not use_peft else 0
    host = 0
    if cpu_offload and fsdp:  # the shards, their gradients and the optimizer state live in host memory
        host, sharded, grads_sharded, optimizer = sharded + grads_sharded + optimizer, 0, 0, 0
    weights, grads = sharded + gathered, grads_sharded + grads_working
    per_layer = layer_activations(c) + (len(lora_target_modules) * lora_r if use_peft else 0)
    kept = (c.hidden_size if gradient_checkpointing else per_layer) * c.num_hidden_layers
    activations = (kept + 2 * c.hidden_size) * tokens * s  # + the final norm's input and output
    recompute = per_layer * tokens * s if gradient_checkpointing else 0
    rows = min(loss_chunk_size, seq_len) * micro_batch if loss_chunk_size > 0 else tokens
    logits = rows * c.vocab_size * (12 + (s if s < 4 else 0))  # fp32 log-softmax + 2 fp32 grads (+ the cast)
    step = max(activations + logits, activations + recompute + grads)
    return {"parameters": shapes.total, "trainable": trainable, "weights": weights, "grads": grads,
            "optimizer": optimizer, "activations": activations + recompute, "logits": logits,
            "step": step, "peak": weights + optimizer + step, "host": host}


def describe(c: Phi3Config, p: dict, options: dict) -> str:
    """The plan as a table for the terminal (GiB, or MiB for small models)."""
    unit, scale = ("GiB", GB) if p["peak"] >= GB else ("MiB", 1024**2)
    model = (f"model: {c.num_hidden_layers} layers, hidden {c.hidden_size}, heads {c.num_attention_heads}/"
             f"{c.num_key_value_heads}, intermediate {c.intermediate_size}, vocab {c.vocab_size}: "
             f"{p['parameters'] / 1e9:.2f}B parameters ({p['trainable'] / 1e9:.3g}B trainable)")
    lines = [model, "setup: " + ", ".join(f"{k}={v}" for k, v in options.items()),
             f"{'per rank':<13}{unit:>9}"]
    for key, what in (("weights", "weights"), ("grads", "gradients"), ("optimizer", "AdamW state"),
                      ("activations", "activations"), ("logits", "logits")):
        lines.append(f"  {what:<11}{p[key] / scale:>9.2f}")
    lines.append(f"  {'peak':<11}{p['peak'] / scale:>9.2f}   (weights + AdamW + the larger moment of backward)")
    if p["host"]:
        lines.append(f"  {'host':<11}{p['host'] / scale:>9.2f}   (offloaded shards, gradients and AdamW state)")
    return "\n".join(lines)
