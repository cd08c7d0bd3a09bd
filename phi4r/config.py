"""The Phi-3-family model configuration, as Hugging Face's `config.json` spells it.

Defaults are Phi-4-reasoning's (the `config.json` of huggingface.co/microsoft/Phi-4-reasoning). Fields phi4r does not
model are kept in `extra` so a config read and written back loses nothing.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class UnsupportedConfigError(ValueError):
    """A config asks for something phi4r does not implement (refused, never ignored)."""


@dataclass
class Phi3Config:
    vocab_size: int = 100352
    hidden_size: int = 5120
    intermediate_size: int = 17920
    num_hidden_layers: int = 40
    num_attention_heads: int = 40
    num_key_value_heads: int = 10
    max_position_embeddings: int = 32768
    original_max_position_embeddings: int | None = None
    rope_theta: float = 500000.0
    rope_scaling: dict | None = None
    partial_rotary_factor: float = 1.0
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = False
    hidden_act: str = "silu"
    bos_token_id: int | None = 100257
    eos_token_id: int | list[int] | None = 100265
    pad_token_id: int | None = 100349
    sliding_window: int | None = None
    attention_bias: bool = False
    torch_dtype: str = "bfloat16"
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def rotary_dim(self) -> int:
        return int(self.partial_rotary_factor * self.head_dim)

    def validate(self) -> None:
        if self.rope_scaling:
            kind = self.rope_scaling.get("type") or self.rope_scaling.get("rope_type")
            if kind not in (None, "default"):
                raise UnsupportedConfigError(
                    f"rope_scaling type {kind!r} (e.g. Phi-4-mini's longrope) is not implemented by "
                    "phi4r; refusing to load rather than silently running without it")
        if self.hidden_act != "silu":
            raise UnsupportedConfigError(f"hidden_act {self.hidden_act!r} is not supported (only 'silu')")
        if self.attention_bias:
            raise UnsupportedConfigError("attention_bias=True is not supported (Phi-3 has no biases)")
        if self.hidden_size % self.num_attention_heads:
            raise UnsupportedConfigError("hidden_size must be divisible by num_attention_heads")
        if self.num_attention_heads % self.num_key_value_heads:
            raise UnsupportedConfigError("num_attention_heads must be a multiple of num_key_value_heads")
        if self.rotary_dim % 2:
            raise UnsupportedConfigError(f"rotary dim {self.rotary_dim} must be even")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Phi3Config":
        arch = d.get("architectures") or ["Phi3ForCausalLM"]
        if d.get("model_type", "phi3") != "phi3" or "Phi3ForCausalLM" not in arch:
            raise UnsupportedConfigError(
                f"unknown architecture {arch} / model_type {d.get('model_type')!r}: phi4r reads "
                "Phi3ForCausalLM (model_type 'phi3') checkpoints")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in d.items() if k in names}
        extra = {k: v for k, v in d.items() if k not in names}
        # transformers >= 5 may nest rope settings in rope_parameters.
        rp = extra.get("rope_parameters")
        if isinstance(rp, dict):
            known.setdefault("rope_theta", rp.get("rope_theta", cls.rope_theta))
            if "partial_rotary_factor" in rp:
                known.setdefault("partial_rotary_factor", rp["partial_rotary_factor"])
            if rp.get("rope_type", "default") != "default":
                known.setdefault("rope_scaling", rp)
        if "dtype" in extra and "torch_dtype" not in known:
            known["torch_dtype"] = extra["dtype"]
        return cls(**known, extra=extra)

    @classmethod
    def from_json(cls, path: str | Path) -> "Phi3Config":
        return cls.from_dict(json.loads(Path(path).read_text()))

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in dataclasses.asdict(self).items() if k != "extra"}
        d.update({k: v for k, v in self.extra.items() if k not in ("rope_parameters", "dtype")})
        if d["original_max_position_embeddings"] is None:
            del d["original_max_position_embeddings"]  # transformers wants an int or nothing
        d["architectures"] = ["Phi3ForCausalLM"]
        d["model_type"] = "phi3"
        d.setdefault("attention_dropout", 0.0)
        d.setdefault("embd_pdrop", 0.0)
        d.setdefault("resid_pdrop", 0.0)
        d.setdefault("initializer_range", 0.02)
        d.setdefault("use_cache", True)
        return d
