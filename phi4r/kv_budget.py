"""How many tokens the KV cache may hold: the `--kv-cache-memory` budget.

The budget is given in bytes ("8GiB", "512MiB", "2e9", "4GB") or as a fraction in (0, 1] of the memory
available when the engine starts (after the weights are loaded). Unset: room for
max(max_model_len, max_num_seqs * 2048) tokens, at most half the available memory. The engine then
admits, waits and preempts within that many blocks (engine.py); max_model_len is lowered to what one
sequence can use when the budget is smaller (an error when max_model_len was asked for explicitly).
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import torch

from .config import Phi3Config

log = logging.getLogger(__name__)

DEFAULT_TOKENS_PER_SEQ = 2048
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_memory(value: str | float | int) -> float | int:
    """A fraction (float in (0, 1]) or a byte count (int) from a number or a string such as "8GiB",
    "512 MiB", "2e9", "0.4"; ValueError with what is accepted otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"kv_cache_memory must be bytes or a fraction, got {value!r}")
    if isinstance(value, (int, float)):
        number, unit = float(value), ""
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", str(value))
        if not m or m.group(2).lower() not in _UNITS:
            raise ValueError(f"kv_cache_memory {value!r} is neither a size (e.g. 8GiB, 512MiB, 2e9 bytes) "
                             f"nor a fraction of the available memory in (0, 1]")
        number, unit = float(m.group(1)), m.group(2).lower()
    if not unit and 0 < number <= 1:
        return number
    size = number * _UNITS[unit]
    if size < 1 or size != size:
        raise ValueError(f"kv_cache_memory {value!r} must be a positive size or a fraction in (0, 1]")
    return int(size)


def available_memory(device: torch.device) -> int:
    """Bytes that can still be allocated on `device` (CPU: the OS's MemAvailable)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    import psutil

    return psutil.virtual_memory().available


def bytes_per_token(config: Phi3Config, dtype: torch.dtype) -> int:
    """K and V of one position in every layer."""
    size = torch.empty((), dtype=dtype).element_size()
    return 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * size


@dataclass
class Plan:
    num_blocks: int
    max_model_len: int


def plan(config: Phi3Config, dtype: torch.dtype, device: torch.device, block_size: int,
         max_model_len: int, explicit_max_len: bool, max_num_seqs: int,
         kv_cache_memory: str | float | int | None = None, available: int | None = None) -> Plan:
    """The number of blocks for the budget, and max_model_len lowered to fit it (see the module doc)."""
    per_token = bytes_per_token(config, dtype)
    per_block = per_token * block_size
    if available is None:
        available = available_memory(device)
    if kv_cache_memory is None:
        # Whole blocks: a max_model_len between two multiples of the block size needs its last block too.
        tokens = -(-max(max_model_len, max_num_seqs * DEFAULT_TOKENS_PER_SEQ) // block_size) * block_size
        budget = min(tokens * per_token, available // 2)
        why = f"room for {tokens} tokens, at most half the available memory ({available / 2**30:.1f} GiB)"
    else:
        spec = parse_memory(kv_cache_memory)
        budget = int(spec * available) if isinstance(spec, float) else spec
        why = (f"kv_cache_memory={kv_cache_memory!r}" +
               (f" of {available / 2**30:.1f} GiB available" if isinstance(spec, float) else ""))
    num_blocks = budget // per_block
    if num_blocks < 1:
        raise ValueError(f"the KV cache budget ({why}: {budget} bytes) holds no {block_size}-token block "
                         f"of {per_block} bytes; give --kv-cache-memory at least {per_block} bytes")
    tokens = num_blocks * block_size
    if tokens < max_model_len:
        if explicit_max_len:
            raise ValueError(f"max_model_len={max_model_len} needs {-(-max_model_len // block_size) * per_block} "
                             f"bytes of KV cache but the budget ({why}) holds {tokens} tokens; raise "
                             f"--kv-cache-memory or lower --max-model-len")
        log.warning("phi4r: the KV cache budget (%s) holds %d tokens, fewer than the model's context of %d: "
                    "max_model_len lowered to %d", why, tokens, max_model_len, tokens)
        max_model_len = tokens
    return Plan(num_blocks, max_model_len)
