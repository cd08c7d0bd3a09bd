"""Quantized checkpoints in the compressed-tensors format (what llm-compressor writes and vLLM serves).

config.json carries `quantization_config` (quant_method "compressed-tensors"); each quantized Linear `<m>`
is stored as its int8/int4 weights plus scales. phi4r writes and reads three schemes:

| phi4r | format | weights | activations | tensors of `<m>` |
|---|---|---|---|---|
| w8a8 | int-quantized | int8, per channel, symmetric | int8, dynamic per token | weight (int8 [out, in]), weight_scale [out, 1] |
| int8 | pack-quantized | int8, per channel, symmetric | - | weight_packed (int32 [out, in/4]), weight_scale [out, 1], weight_shape |
| int4 | pack-quantized | int4, groups along in, symmetric | - | weight_packed (int32 [out, in/8]), weight_scale [out, in/group], weight_shape |

Weight-only int8 is pack-quantized because that is the format vLLM's weight-only int kernels (WNA16) take;
int-quantized/naive-quantized weight-only int8 (a plain `weight`) is read too. Packing stores element i of a
row at bits 8*(i%4).. of word i/4 (4 bits: 4*(i%8)), offset to unsigned (+128, +8), as compressed-tensors'
pack_to_int32 does. lm_head stays in the file unquantized (bf16, `ignore: ["lm_head"]`): vLLM does not
quantize its LM head for this format. phi4r itself quantizes an ignored lm_head when loading (the vocab
projection is a large share of a decode step's bytes on CPU) the way it would quantize it at load, so a
saved checkpoint gives the same logits as quantizing the original at load.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

METHOD = "compressed-tensors"
LM_HEAD = "lm_head"
# The tensors a quantized Linear `<m>` may have, as `<m>.<name>`.
TENSOR_NAMES = ("weight", "weight_packed", "weight_scale", "weight_shape", "weight_zero_point")
_INT8 = {"num_bits": 8, "type": "int", "symmetric": True, "group_size": None, "strategy": "channel", "dynamic": False}
_TOKEN_INT8 = {"num_bits": 8, "type": "int", "symmetric": True, "group_size": None, "strategy": "token",
               "dynamic": True}


@dataclass(frozen=True)
class Scheme:
    kind: str  # "int8", "w8a8" or "int4": the phi4r module it becomes
    format: str
    group_size: int | None = None  # int4: None is one group per row (channel strategy)
    symmetric: bool = True


def quantization_config(kind: str, group_size: int = 128, version: str | None = None) -> dict:
    """config.json's quantization_config for phi4r's `kind`, with the fields llm-compressor writes."""
    if kind == "w8a8":
        fmt, weights, inputs = "int-quantized", dict(_INT8), dict(_TOKEN_INT8)
    elif kind == "int8":
        fmt, weights, inputs = "pack-quantized", dict(_INT8), None
    elif kind == "int4":
        fmt, inputs = "pack-quantized", None
        weights = {**_INT8, "num_bits": 4, "group_size": group_size, "strategy": "group"}
    else:
        raise ValueError(f"quantization must be 'int8', 'w8a8' or 'int4', got {kind!r}")
    group = {"targets": ["Linear"], "weights": weights, "input_activations": inputs, "output_activations": None,
             "format": fmt}
    return {"quant_method": METHOD, "format": fmt, "quantization_status": "compressed",
            "config_groups": {"group_0": group}, "ignore": [LM_HEAD], "kv_cache_scheme": None,
            "global_compression_ratio": None, "sparsity_config": {}, "transform_config": {},
            **({"version": version} if version else {})}


# ---- reading
class Layout:
    """Which scheme each Linear of a model has, from a compressed-tensors quantization_config."""

    def __init__(self, qconfig: dict, where: str):
        if not isinstance(qconfig, dict) or qconfig.get("quant_method") != METHOD:
            method = qconfig.get("quant_method") if isinstance(qconfig, dict) else qconfig
            raise ValueError(f"{where}: quantization_config quant_method {method!r}: phi4r reads quantized "
                             f"checkpoints in the {METHOD} format only")
        if qconfig.get("kv_cache_scheme"):
            raise ValueError(f"{where}: a quantized KV cache (kv_cache_scheme) is not supported")
        self.ignore = list(qconfig.get("ignore") or [])
        self.groups: list[tuple[list[str], Scheme]] = []
        for name, group in (qconfig.get("config_groups") or {}).items():
            fmt = group.get("format") or qconfig.get("format")
            self.groups.append((list(group.get("targets") or []), _scheme(group, fmt, f"{where}: config group {name!r}")))
        if not self.groups:
            raise ValueError(f"{where}: quantization_config has no config_groups")
        kinds = {s.kind for _, s in self.groups}
        self.kind = kinds.pop() if len(kinds) == 1 else "mixed"

    def scheme(self, name: str, module: nn.Module) -> Scheme | None:
        """The scheme of the Linear `name` (None: stored unquantized)."""
        if any(_matches(t, name, module) for t in self.ignore):
            return None
        return next((s for targets, s in self.groups if any(_matches(t, name, module) for t in targets)), None)


def _matches(target: str, name: str, module: nn.Module) -> bool:
    if target.startswith("re:"):
        return re.match(target[3:], name) is not None
    return target == name or target == type(module).__name__ or (target == "Linear" and isinstance(module, nn.Linear))


def _scheme(group: dict, fmt: str | None, where: str) -> Scheme:
    w, a = group.get("weights") or {}, group.get("input_activations")
    bits, strategy, symmetric = w.get("num_bits"), w.get("strategy"), w.get("symmetric", True)
    plain = w.get("type", "int") == "int" and not w.get("dynamic") and not group.get("output_activations")
    if plain and bits == 8 and strategy in ("channel", "tensor") and symmetric:
        if a is None and fmt in ("pack-quantized", "int-quantized", "naive-quantized"):
            return Scheme("int8", fmt)
        if (a and a.get("type", "int") == "int" and a.get("num_bits") == 8 and a.get("strategy") == "token"
                and a.get("dynamic") is True and a.get("symmetric", True) and fmt in ("int-quantized", "naive-quantized")):
            return Scheme("w8a8", fmt)
    if plain and bits == 4 and a is None and strategy in ("group", "channel") and fmt == "pack-quantized":
        return Scheme("int4", fmt, w.get("group_size") if strategy == "group" else None, bool(symmetric))
    raise ValueError(f"{where}: unsupported compressed-tensors scheme (format {fmt!r}, weights {w}, input "
                     f"activations {a}); phi4r reads int8 per-channel W8A8 with dynamic per-token activations, "
                     "int8 per-channel weight-only and int4 group-wise weight-only")


def pack_int8(q: torch.Tensor) -> torch.Tensor:
    """int8 [out, in] -> int32 [out, ceil(in / 4)] (compressed-tensors' 8-bit packing; little-endian host)."""
    u = (q.to(torch.int16) + 128).to(torch.uint8)
    pad = -q.shape[1] % 4
    if pad:
        u = torch.nn.functional.pad(u, (0, pad))
    return u.contiguous().view(torch.int32)


def unpack_int8(packed: torch.Tensor, cols: int) -> torch.Tensor:
    """pack_int8's inverse: int32 [out, words] -> int8 [out, cols]."""
    # The stored bytes are q + 128 (mod 256): flipping the top bit is subtracting 128, in one uint8 copy.
    return packed.contiguous().view(torch.uint8)[:, :cols].bitwise_xor(128).view(torch.int8)


def module_from_tensors(scheme: Scheme, tensors: dict[str, torch.Tensor], shape: tuple[int, int],
                        where: str) -> nn.Module:
    """The phi4r module for one quantized Linear of shape [out, in], from its tensors (local names:
    weight, weight_packed, weight_scale, weight_shape, weight_zero_point)."""
    from .quant import Int8Linear, W8A8Linear, int8_module

    out, cols = shape
    if "weight_shape" in tensors and tuple(int(x) for x in tensors["weight_shape"].tolist()) != shape:
        raise ValueError(f"{where}: weight_shape {tensors['weight_shape'].tolist()}, expected {list(shape)}")
    if scheme.kind == "int4":
        return _int4_module(scheme, tensors, shape, where)
    scale = tensors.get("weight_scale")
    if scale is None or scale.numel() not in (1, out):
        raise ValueError(f"{where}: weight_scale missing or of shape "
                         f"{None if scale is None else list(scale.shape)}, expected [{out}, 1]")
    zero = tensors.get("weight_zero_point")
    if zero is not None and bool(zero.ne(0).any()):
        raise ValueError(f"{where}: non-zero weight_zero_point in a symmetric int8 scheme")
    if "weight_packed" in tensors:
        packed = tensors["weight_packed"]
        if packed.dtype != torch.int32 or tuple(packed.shape) != (out, -(-cols // 4)):
            raise ValueError(f"{where}: weight_packed is {packed.dtype} {list(packed.shape)}, expected int32 "
                             f"[{out}, {-(-cols // 4)}]")
        q = unpack_int8(packed, cols)
    else:
        q = tensors.get("weight")
        if q is None or q.dtype != torch.int8 or tuple(q.shape) != shape:
            raise ValueError(f"{where}: weight missing or not int8 {list(shape)}")
    return int8_module(W8A8Linear if scheme.kind == "w8a8" else Int8Linear, q, scale)


def _int4_module(scheme: Scheme, tensors: dict, shape: tuple[int, int], where: str) -> nn.Module:
    from .quant_int4 import Int4Linear

    for need in ("weight_packed", "weight_scale"):
        if need not in tensors:
            raise ValueError(f"{where}: {need} missing")
    local = {k: v for k, v in tensors.items() if k != "weight_zero_point" or not scheme.symmetric}
    local.setdefault("weight_shape", torch.tensor(shape))
    return Int4Linear.from_compressed(local, scheme.group_size or shape[1], symmetric=scheme.symmetric)


# ---- writing
def module_tensors(module: nn.Module) -> tuple[str, dict[str, torch.Tensor]]:
    """(phi4r kind, compressed-tensors tensors with local names) of one quantized phi4r module."""
    from .quant import Int8Linear, W8A8Linear
    from .quant_int4 import Int4Linear, to_compressed

    shape = (module.out_features, module.in_features)
    if isinstance(module, W8A8Linear):
        return "w8a8", {"weight": module.int8_weight().contiguous(), "weight_scale": module.scales.reshape(-1, 1)}
    if isinstance(module, Int8Linear):
        return "int8", {"weight_packed": pack_int8(module.weight), "weight_scale": module.scales.reshape(-1, 1),
                        "weight_shape": torch.tensor(shape)}
    if isinstance(module, Int4Linear):
        return "int4", dict(to_compressed(module))
    raise TypeError(f"not a quantized phi4r module: {type(module).__name__}")


def quantize_checkpoint(src, dst, kind: str, group_size: int = 128, max_shard_bytes: int = 2 * 1024**3,
                        progress: bool = False) -> None:
    """Write the float checkpoint `src` quantized (`kind`) to the new directory `dst`, streaming: each
    tensor is read from src's shards in blocks of rows, quantized as loading would (checkpoint.quantized_linear)
    and added to the output shard being filled, which is written when full; so memory holds one output
    shard (max_shard_bytes) and one layer's temporaries, never the model. lm_head and the other float
    tensors are stored as bf16 (the activation dtype quantized loading uses); src's other files (tokenizer,
    generation_config.json, ...) are copied as they are; config.json, written last, gains quantization_config."""
    import json
    import os
    import shutil
    from pathlib import Path

    from tqdm.auto import tqdm

    from .checkpoint import (
        _IGNORED_SUFFIXES,
        INDEX_NAME,
        SINGLE_NAME,
        CheckpointError,
        _atomic_write,
        _Shard,
        _weight_files,
        check_tensor,
        quantized_linear,
        read_blocks,
        read_config,
        read_converted,
        release_memory,
    )
    from .model import Phi3ForCausalLM

    src, dst = Path(src), Path(dst)
    config = read_config(src)
    if "quantization_config" in config.extra:
        raise CheckpointError(f"{src}: already quantized; quantize the float checkpoint")
    quantization_config(kind, group_size)  # (an unknown kind is refused before anything is written)
    dtype = torch.bfloat16
    with torch.device("meta"):
        model = Phi3ForCausalLM(config)
    expected = {n: tuple(t.shape) for n, t in model.state_dict().items()}
    linears = {n for n, m in model.named_modules() if isinstance(m, nn.Linear)} - {LM_HEAD}
    del model
    files = _weight_files(src)
    dst.mkdir(parents=True, exist_ok=True)
    parts: list[tuple[Path, list[str]]] = []  # output shards written so far, under temporary names
    pending: dict[str, torch.Tensor] = {}
    pending_bytes = total = 0
    seen: set[str] = set()

    def flush() -> None:
        nonlocal pending, pending_bytes
        if pending:
            from safetensors.torch import save_file

            part = dst / f"part-{len(parts):05d}.safetensors.tmp"
            save_file(pending, str(part), metadata={"format": "pt"})
            parts.append((part, list(pending)))
            pending, pending_bytes = {}, 0
            release_memory()

    def add(name: str, t: torch.Tensor) -> None:
        nonlocal pending_bytes, total
        nbytes = t.numel() * t.element_size()
        if pending and pending_bytes + nbytes > max_shard_bytes:
            flush()
        pending[name] = t.contiguous()
        pending_bytes += nbytes
        total += nbytes

    with tqdm(total=sum(f.stat().st_size for f in files), desc=f"quantizing {src.name}", unit="B", unit_scale=True,
              delay=2, disable=not progress, leave=False) as bar:
        for file in files:
            with _Shard(file) as shard:
                for name, info in shard.header.items():
                    if name == "__metadata__" or name.endswith(_IGNORED_SUFFIXES):
                        continue
                    shape = tuple(info["shape"])
                    check_tensor(file, name, shape, expected)
                    seen.add(name)
                    prefix, _, leaf = name.rpartition(".")
                    if prefix in linears and leaf == "weight":
                        _, tensors = module_tensors(quantized_linear(kind, read_blocks(shard, name, shape, dtype, bar.update),
                                                                      shape, group_size))
                        for local, t in tensors.items():
                            add(f"{prefix}.{local}", t)
                        del tensors
                        release_memory()
                    else:
                        add(name, read_converted(shard, name, shape, dtype, bar.update))
    missing = [n for n in expected if n not in seen and n != f"{LM_HEAD}.weight"]
    if missing:
        raise CheckpointError(f"{src}: missing tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    flush()
    if len(parts) == 1:
        os.replace(parts[0][0], dst / SINGLE_NAME)
    else:
        weight_map = {}
        for i, (part, names) in enumerate(parts, 1):
            final = f"model-{i:05d}-of-{len(parts):05d}.safetensors"
            os.replace(part, dst / final)
            weight_map.update(dict.fromkeys(names, final))
        _atomic_write(dst / INDEX_NAME, {"metadata": {"total_size": total}, "weight_map": weight_map})
    cfg = json.loads((src / "config.json").read_text())
    cfg["torch_dtype"] = "bfloat16"
    from importlib.metadata import PackageNotFoundError, version

    try:
        ct_version = version("compressed-tensors")
    except PackageNotFoundError:  # not installed: the field is informational
        ct_version = None
    cfg["quantization_config"] = quantization_config(kind, group_size, ct_version)
    for item in src.iterdir():
        if item.is_file() and item.suffix != ".safetensors" and item.name not in (INDEX_NAME, "config.json"):
            shutil.copy2(item, dst / item.name)
    _atomic_write(dst / "config.json", cfg)  # last: a directory without it is visibly unfinished
