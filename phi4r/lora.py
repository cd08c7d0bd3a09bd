"""LoRA adapters in PEFT's format: trained on a frozen base, sampled from unmerged, merged on demand.

A `LoraLinear` takes the place of a target nn.Linear (kept as its `base_layer`) and adds
`scaling * B @ A @ x`, scaling = alpha / r (alpha / sqrt(r) with rsLoRA). A [r, in] and B [out, r]
stay fp32 whatever the base's dtype, as PEFT keeps them; B starts at zero, so a fresh adapter
changes nothing. Adapter directories are PEFT's: `adapter_config.json` + `adapter_model.safetensors`
with keys `base_model.model.<module>.lora_A.weight`, so `peft.PeftModel.from_pretrained` loads
phi4r's adapters on the transformers model and `load_adapter` loads PEFT's.

    add_adapters(model, LoraConfig(r=16, lora_alpha=32))    # training: only A and B require grad
    with adapters_disabled(model): model(ids)               # the base alone (GRPO's reference)
    load_adapter(model, "runs/sft/final"); merge(model)      # W + scaling * B @ A, plain nn.Linear again
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn

from .checkpoint import CheckpointError, _atomic_save, _atomic_write

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
DEFAULT_TARGETS = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]  # Phi-3's fused projections
_PREFIX = "base_model.model."
_KEY = re.compile(r"base_model\.model\.(.+)\.lora_([AB])\.weight")
# adapter_config.json fields whose non-default values change the maths in ways phi4r does not implement.
_UNSUPPORTED = {"use_dora": False, "bias": "none", "fan_in_fan_out": False, "rank_pattern": {}, "alpha_pattern": {},
                "modules_to_save": None, "layer_replication": None, "lora_bias": False, "use_qalora": False,
                "alora_invocation_tokens": None, "target_parameters": None, "trainable_token_indices": None,
                "use_bdlora": None, "arrow_config": None, "monteclora_config": None}


@dataclass
class LoraConfig:
    r: int = 16
    lora_alpha: float = 32
    lora_dropout: float = 0.0
    target_modules: list[str] | str = field(default_factory=lambda: list(DEFAULT_TARGETS))
    use_rslora: bool = False
    base_model_name_or_path: str | None = None

    @property
    def scaling(self) -> float:
        return self.lora_alpha / (math.sqrt(self.r) if self.use_rslora else self.r)

    def to_peft(self) -> dict:
        """adapter_config.json as PEFT writes it (fields PEFT fills by default left to it)."""
        return {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": self.base_model_name_or_path,
                "r": self.r, "lora_alpha": self.lora_alpha, "lora_dropout": self.lora_dropout,
                "target_modules": self.target_modules, "use_rslora": self.use_rslora, "bias": "none",
                "fan_in_fan_out": False, "init_lora_weights": True, "inference_mode": True, "modules_to_save": None,
                "use_dora": False}

    @classmethod
    def from_peft(cls, data: dict, where: str) -> LoraConfig:
        if data.get("peft_type") != "LORA":
            raise ValueError(f"{where}: peft_type {data.get('peft_type')!r}; phi4r loads LORA adapters only")
        for name, default in _UNSUPPORTED.items():
            if data.get(name, default) not in (default, None, {}, [], False):
                raise ValueError(f"{where}: {name}={data[name]!r} is not supported (phi4r implements plain LoRA)")
        try:
            return cls(r=int(data["r"]), lora_alpha=float(data["lora_alpha"]),
                       lora_dropout=float(data.get("lora_dropout") or 0.0), target_modules=data["target_modules"],
                       use_rslora=bool(data.get("use_rslora")),
                       base_model_name_or_path=data.get("base_model_name_or_path"))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{where}: bad LoRA config ({e!r})") from None


class LoraLinear(nn.Module):
    """base_layer(x) + scaling * B(A(dropout(x))), the adapter in fp32 and its result cast to the base's dtype."""

    def __init__(self, base_layer: nn.Linear, r: int, scaling: float, dropout: float = 0.0):
        super().__init__()
        self.base_layer = base_layer
        device = base_layer.weight.device
        self.lora_A = nn.Parameter(torch.zeros(r, base_layer.in_features, device=device))
        self.lora_B = nn.Parameter(torch.zeros(base_layer.out_features, r, device=device))
        self.scaling = scaling
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.enabled = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        if not self.enabled:
            return y
        update = F.linear(F.linear(self.dropout(x.to(self.lora_A.dtype)), self.lora_A), self.lora_B)
        return y + (update * self.scaling).to(y.dtype)

    def delta_weight(self) -> torch.Tensor:
        """scaling * B @ A in fp32: what merging adds to the base weight."""
        return (self.lora_B.detach().float() @ self.lora_A.detach().float()) * self.scaling


def lora_modules(model: nn.Module) -> dict[str, LoraLinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLinear)}


def has_adapters(model: nn.Module) -> bool:
    return any(isinstance(m, LoraLinear) for m in model.modules())


def matches(name: str, targets: list[str] | str) -> bool:
    """PEFT's rule: a string is a regex the whole module name must match; list entries match the
    name or its last dotted parts; "all-linear" is every linear layer but the output head."""
    if targets in ("all-linear", ["all-linear"]):
        return not name.endswith("lm_head")
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def _wrap(model: nn.Module, name: str, config: LoraConfig) -> LoraLinear:
    base = model.get_submodule(name)
    if type(base) is not nn.Linear or base.bias is not None:
        raise ValueError(f"LoRA target {name} is a {type(base).__name__}, not a bias-free nn.Linear")
    layer = LoraLinear(base, config.r, config.scaling, config.lora_dropout).train(base.training)  # no dropout in eval
    model.set_submodule(name, layer)
    return layer


def add_adapters(model: nn.Module, config: LoraConfig, seed: int = 0) -> dict[str, LoraLinear]:
    """Fresh adapters on every target of `model`, the rest frozen: A as PEFT initialises it
    (kaiming-uniform, a=sqrt(5)), B zero. Returns the new layers by module name."""
    if has_adapters(model):
        raise ValueError("the model already has LoRA adapters")
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and matches(n, config.target_modules)]
    if not names:
        raise ValueError(f"LoRA target_modules {config.target_modules} match no linear layer of the model")
    model.requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)
    layers = {}
    for name in names:
        layer = layers[name] = _wrap(model, name, config)
        a = torch.empty(layer.lora_A.shape)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)
        layer.lora_A.data.copy_(a)
    if config.target_modules in ("all-linear", ["all-linear"]):  # PEFT saves the names it resolved to
        config = dataclasses.replace(config, target_modules=sorted({n.rsplit(".", 1)[-1] for n in names}))
    model.lora_config = config
    return layers


def load_adapter(model: nn.Module, path: str | os.PathLike, trainable: bool = False) -> LoraConfig:
    """Add the adapter saved in directory `path` (phi4r's or PEFT's) to `model`, unmerged. The
    modules it adapts are the ones its weights name; shapes are checked against the model.
    trainable: A and B require grad (resuming training), everything else is frozen either way."""
    path = Path(path)
    config_file, weights_file = path / CONFIG_NAME, path / WEIGHTS_NAME
    if not config_file.is_file():
        raise CheckpointError(f"{path}: no {CONFIG_NAME} (not a LoRA adapter directory)")
    if not weights_file.is_file():
        found = " (only pickle adapter_model.bin found; phi4r reads safetensors only)" \
            if (path / "adapter_model.bin").is_file() else ""
        raise CheckpointError(f"{path}: no {WEIGHTS_NAME}{found}")
    try:
        config = LoraConfig.from_peft(json.loads(config_file.read_text()), str(config_file))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{config_file}: not valid JSON ({e})") from e
    tensors: dict[str, dict[str, torch.Tensor]] = {}
    try:
        with safe_open(str(weights_file), framework="pt") as f:
            for key in f.keys():
                m = _KEY.fullmatch(key)
                if m is None:
                    raise CheckpointError(f"{weights_file}: unexpected tensor {key!r} (phi4r loads LoRA A/B "
                                          "matrices of linear layers only)")
                tensors.setdefault(m.group(1), {})[m.group(2)] = f.get_tensor(key)
    except CheckpointError:
        raise
    except Exception as e:  # safetensors' own errors for truncated or bad files
        raise CheckpointError(f"{weights_file}: unreadable safetensors file ({e})") from e
    if not tensors:
        raise CheckpointError(f"{weights_file}: holds no LoRA weights")
    if has_adapters(model):
        raise ValueError("the model already has LoRA adapters")
    modules = dict(model.named_modules())
    for name, pair in tensors.items():
        base = modules.get(name)
        if not isinstance(base, nn.Linear) or set(pair) != {"A", "B"}:
            raise CheckpointError(f"{weights_file}: {name} is not a linear layer of this model, or lacks lora_A/lora_B")
        want = {"A": (config.r, base.in_features), "B": (base.out_features, config.r)}
        for k, t in pair.items():
            if tuple(t.shape) != want[k]:
                raise CheckpointError(f"{weights_file}: {name}.lora_{k} has shape {list(t.shape)}, expected "
                                      f"{list(want[k])} for this model with r={config.r}")
    model.requires_grad_(False)
    for name, pair in tensors.items():
        layer = _wrap(model, name, config)
        with torch.no_grad():
            layer.lora_A.copy_(pair["A"])
            layer.lora_B.copy_(pair["B"])
        layer.requires_grad_(False)
        layer.lora_A.requires_grad_(trainable)
        layer.lora_B.requires_grad_(trainable)
    model.lora_config = config
    return config


def save_adapter(model: nn.Module, path: str | os.PathLike) -> None:
    """Write `model`'s adapters as PEFT does (temporary names renamed into place)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {}
    for name, layer in lora_modules(model).items():
        state[f"{_PREFIX}{name}.lora_A.weight"] = layer.lora_A.detach().contiguous()
        state[f"{_PREFIX}{name}.lora_B.weight"] = layer.lora_B.detach().contiguous()
    if not state:
        raise ValueError("the model has no LoRA adapters to save")
    _atomic_save(state, path / WEIGHTS_NAME)
    _atomic_write(path / CONFIG_NAME, model.lora_config.to_peft())


def save(model: nn.Module, tokenizer, path: str | os.PathLike) -> None:
    """An adapter directory with the tokenizer the run trained with (its chat template and system prompt)."""
    save_adapter(model, path)
    tokenizer.save(path)


@contextlib.contextmanager
def adapters_disabled(model: nn.Module):
    """Run `model` as its base alone inside the block (no copy of any weight)."""
    layers = lora_modules(model).values()
    before = [layer.enabled for layer in layers]
    for layer in layers:
        layer.enabled = False
    try:
        yield model
    finally:
        for layer, was in zip(layers, before):
            layer.enabled = was


class WithoutAdapters:
    """Callable like the model, computing the base alone: GRPO's reference under LoRA. Not an
    nn.Module on purpose, so the model's parameters are not registered (nor moved, nor saved) twice."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __call__(self, *args, **kwargs):
        with adapters_disabled(self.model):
            return self.model(*args, **kwargs)


@torch.no_grad()
def merge(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight (W + scaling * B @ A, summed in fp32, rounded once to
    W's dtype) and put the plain nn.Linear back, in place."""
    for name, layer in lora_modules(model).items():
        base = layer.base_layer
        base.weight.copy_((base.weight.float() + layer.delta_weight().to(base.weight.device)).to(base.weight.dtype))
        model.set_submodule(name, base)
    if hasattr(model, "lora_config"):
        del model.lora_config
    return model
