"""Read and write Hugging Face checkpoint directories (safetensors only, never pickle).

Loading is lazy: the model is built on the meta device and each tensor, read from a
memory-mapped safetensors file, is assigned in place, so peak memory stays near one copy of the
weights. Every problem is reported as a `CheckpointError` naming the file and what is wrong.
"""
from __future__ import annotations

import json
import math
import os
from contextlib import ExitStack
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .config import Phi3Config, UnsupportedConfigError
from .model import Phi3ForCausalLM

NANO_DIR = Path(__file__).parent / "assets" / "nano"
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
# Buffers some exporters write that carry no learned state.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}


class CheckpointError(ValueError):
    """A checkpoint directory is missing, incomplete or inconsistent."""


def resolve_model_path(name_or_path: str | os.PathLike | None) -> Path:
    """"nano" (or None) is the model shipped inside the package; anything else is a directory
    or a .gguf file (phi4r.gguf_io)."""
    if name_or_path is None or str(name_or_path) == "nano":
        return NANO_DIR
    path = Path(name_or_path).expanduser()
    if path.suffix == ".gguf" and path.is_file():
        return path
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a checkpoint directory (phi4r loads local Hugging Face "
                              "directories and .gguf files; nothing is downloaded)")
    return path


def resolve_dtype(dtype: str | torch.dtype | None, config: Phi3Config) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    name = config.torch_dtype if dtype in (None, "auto") else dtype
    if name not in _DTYPES:
        raise ValueError(f"unknown dtype {name!r}; use one of {sorted(_DTYPES)}")
    return _DTYPES[name]


def read_config(path: Path) -> Phi3Config:
    file = path / "config.json"
    if not file.is_file():
        raise CheckpointError(f"{file}: missing (every checkpoint directory needs a config.json)")
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{file}: not valid JSON ({e})") from e
    try:
        return Phi3Config.from_dict(data)
    except UnsupportedConfigError as e:
        raise CheckpointError(f"{file}: {e}") from e
    except TypeError as e:
        raise CheckpointError(f"{file}: bad field ({e})") from e


def read_generation_config(path: str | os.PathLike) -> dict:
    """The checkpoint's recommended sampling (empty when it has none)."""
    file = Path(path) / "generation_config.json"
    if not file.is_file():
        return {}
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{file}: not valid JSON ({e})") from e


def _weight_files(path: Path) -> list[Path]:
    index = path / INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{index}: unreadable index ({e!r})") from e
        files = [path / name for name in dict.fromkeys(weight_map.values())]
        for f in files:
            if not f.is_file():
                raise CheckpointError(f"{f}: shard listed in {INDEX_NAME} is missing")
        return files
    single = path / SINGLE_NAME
    if single.is_file():
        return [single]
    if list(path.glob("*.bin")) or list(path.glob("*.pt")):
        raise CheckpointError(f"{path}: only pickle weights (.bin/.pt) found; phi4r reads safetensors only")
    raise CheckpointError(f"{path}: no {SINGLE_NAME} or {INDEX_NAME}")


class _Shard:
    """A safetensors file read with plain reads into new tensors, not through a memory map: the bytes of a
    weight being quantized then never count in the process's memory (a mapped shard's pages that were read
    do, until it is closed, and a shard holds ~5 GB)."""

    def __init__(self, file: Path):
        self.file, self._f = file, open(file, "rb")  # noqa: SIM115 (closed by __exit__)
        try:
            size = int.from_bytes(self._f.read(8), "little")
            self.header = json.loads(self._f.read(size))
            self.base = 8 + size
        except (ValueError, UnicodeDecodeError) as e:
            self._f.close()
            raise CheckpointError(f"{file}: unreadable safetensors header ({e})") from e

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()

    def read(self, name: str, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Rows start:stop of a tensor (all of it by default), in the file's dtype."""
        info = self.header[name]
        if info["dtype"] not in _FILE_DTYPES:
            raise CheckpointError(f"{self.file}: tensor {name!r} has dtype {info['dtype']}, which phi4r does not read")
        dtype, shape = _FILE_DTYPES[info["dtype"]], info["shape"]
        if shape:
            stop = shape[0] if stop is None else min(stop, shape[0])
            shape = [stop - start, *shape[1:]]
        out = torch.empty(shape, dtype=dtype)
        row_bytes = out[0].numel() * out.element_size() if out.dim() else 0
        view = out.reshape(-1).view(torch.uint8).numpy()
        self._f.seek(self.base + info["data_offsets"][0] + start * row_bytes)
        if self._f.readinto(view) != view.nbytes:
            raise CheckpointError(f"{self.file}: tensor {name!r} is cut short")
        return out


_FILE_DTYPES = {"F64": torch.float64, "F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16,
                "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                "BOOL": torch.bool}
# fp32 bytes of the block of rows a weight is read and quantized in (Phi-4's lm_head, 100352 x 5120: 16 MB
# blocks of 819 rows instead of a 2 GB fp32 copy); the temporaries of loading are a few blocks.
QUANT_BLOCK_BYTES = 16 * 2**20


def _block_rows(shape) -> int:
    return max(1, QUANT_BLOCK_BYTES // (4 * max(1, math.prod(shape[1:]))))


def read_blocks(shard: _Shard, name: str, shape, dtype: torch.dtype, on_read=None):
    """A tensor of `shard` as consecutive blocks of rows (_block_rows) in `dtype`; on_read(bytes read)."""
    step = _block_rows(shape)
    for start in range(0, shape[0], step):
        block = shard.read(name, start, start + step)
        if on_read:
            on_read(block.nbytes)
        yield block.to(dtype)


def read_converted(shard: _Shard, name: str, shape, dtype: torch.dtype, on_read=None) -> torch.Tensor:
    """A whole tensor of `shard` in `dtype`, converted block by block: no whole copy in the file's dtype."""
    if not shape:
        return shard.read(name).to(dtype)
    out = torch.empty(shape, dtype=dtype)
    for start, block in zip(range(0, shape[0], _block_rows(shape)), read_blocks(shard, name, shape, dtype, on_read)):
        out[start:start + len(block)] = block
    return out


def check_tensor(file: Path, name: str, shape: tuple, expected: dict[str, tuple]) -> None:
    """Refuse a stored tensor the model has no place for, or of another shape than its config gives."""
    if name not in expected:
        raise CheckpointError(f"{file}: unexpected tensor {name!r} for Phi3ForCausalLM")
    if shape != expected[name]:
        raise CheckpointError(f"{file}: tensor {name!r} has shape {list(shape)}, "
                              f"expected {list(expected[name])} from config.json")


QUANTIZATIONS = ("int8", "w8a8", "int4")


def load_model(path: str | os.PathLike, dtype: str | torch.dtype | None = None, device: str | torch.device = "cpu",
               progress: bool = False, quantization: str | None = None, quantize_lm_head: bool = True,
               group_size: int = 128) -> tuple[Phi3ForCausalLM, Phi3Config]:
    """progress: a bar on stderr (bytes read) when loading takes more than 2 s.

    quantization ("int8", "w8a8", "int4"; activations then default to bf16): each Linear is replaced by its
    phi4r.quant module as its weight is read, a block of rows at a time (QUANT_BLOCK_BYTES), so the float weights never exist
    whole and peak memory is about the quantized weights (the numbers equal quantizing the loaded float
    model: phi4r.quant's per_channel_int8). A compressed-tensors checkpoint (phi4r.compressed) loads its
    quantized weights as stored; quantization must then be None or its own. quantize_lm_head=False keeps
    lm_head in float (`phi4r quantize` writes it so); group_size: int4's.
    """
    from tqdm.auto import tqdm

    from . import compressed

    path = resolve_model_path(path)
    if path.suffix == ".gguf":
        from .gguf_io import load_model as load_gguf
        return load_gguf(path, dtype=dtype, device=device, progress=progress)
    config = read_config(path)
    layout = None
    if "quantization_config" in config.extra:
        try:
            layout = compressed.Layout(config.extra["quantization_config"], str(path / "config.json"))
        except ValueError as e:
            raise CheckpointError(str(e)) from None
        if quantization not in (None, layout.kind):
            raise CheckpointError(f"{path}: already quantized ({layout.kind}); load it with quantization "
                                  f"{layout.kind!r} or none")
        quantization = layout.kind if layout.kind != "mixed" else "int8"  # (the kind an ignored lm_head gets)
        # An ignored (float) lm_head is quantized here like the stored layers, in their int4 groups.
        group_size = next((s.group_size for _, s in layout.groups if s.kind == "int4" and s.group_size), group_size)
    if quantization not in (None, *QUANTIZATIONS):
        raise ValueError(f"quantization must be None or one of {list(QUANTIZATIONS)}, got {quantization!r}")
    if quantization and dtype is None:
        dtype = "bfloat16"  # the activation dtype the CPU int8 kernels are fast in
    dtype = resolve_dtype(dtype, config)
    with torch.device("meta"):
        model = Phi3ForCausalLM(config)
    expected = {n: tuple(t.shape) for n, t in model.state_dict().items()}
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    # Linears stored quantized: their tensors by local name (weight, weight_scale, ...), gathered across shards.
    stored = {n: {} for n, m in linears.items() if layout and layout.scheme(n, m)}
    loaded: dict[str, torch.Tensor] = {}
    replaced: set[str] = set()  # expected names now held by a quantized module
    files = _weight_files(path)
    with ExitStack() as stack, tqdm(total=sum(f.stat().st_size for f in files), desc=f"loading {path.name}",
                                    unit="B", unit_scale=True, delay=2, disable=not progress, leave=False) as bar:
        where = {}
        for file in files:
            try:
                handle = stack.enter_context(safe_open(str(file), framework="pt", device=str(device)))
            except Exception as e:  # safetensors raises its own types for truncated or bad headers
                raise CheckpointError(f"{file}: unreadable safetensors file ({e})") from e
            shard = stack.enter_context(_Shard(file)) if quantization else None
            where.update({name: (file, handle, shard) for name in handle.keys()})  # noqa: SIM118 (not a dict)

        def blocks(name, shard, shape):
            return read_blocks(shard, name, shape, dtype, bar.update)

        for name, (file, handle, shard) in where.items():
            prefix, _, leaf = name.rpartition(".")
            if name.endswith(_IGNORED_SUFFIXES):
                continue
            if prefix in stored:
                stored[prefix][leaf] = name
                continue
            shape = tuple(handle.get_slice(name).get_shape())
            check_tensor(file, name, shape, expected)
            if (quantization and leaf == "weight" and prefix in linears
                    and (quantize_lm_head if prefix == "lm_head" else layout is None)):
                model.set_submodule(prefix, quantized_linear(quantization, blocks(name, shard, shape), shape,
                                                             group_size))
                replaced.add(name)
                release_memory()
                continue
            if shard is not None:
                loaded[name] = read_converted(shard, name, shape, dtype, bar.update)
                continue
            try:
                tensor = handle.get_tensor(name)
                loaded[name] = tensor.to(dtype)
            except Exception as e:
                raise CheckpointError(f"{file}: cannot read tensor {name!r} ({e})") from e
            bar.update(tensor.nbytes)
        for prefix, names in stored.items():
            module = linears[prefix]
            try:
                if not names:
                    raise ValueError(f"{path}: no tensors for the quantized layer {prefix!r}")
                extra = [leaf for leaf in names if leaf not in compressed.TENSOR_NAMES]
                if extra:
                    raise ValueError(f"{where[names[extra[0]]][0]}: unexpected tensor {names[extra[0]]!r}")
                tensors = {leaf: where[n][2].read(n) for leaf, n in names.items()}
                bar.update(sum(t.nbytes for t in tensors.values()))
                quantized = compressed.module_from_tensors(layout.scheme(prefix, module), tensors,
                                                           (module.out_features, module.in_features),
                                                           f"{where[next(iter(names.values()))][0]}: {prefix}")
            except ValueError as e:
                raise CheckpointError(str(e)) from None
            model.set_submodule(prefix, quantized)
            replaced.add(f"{prefix}.weight")
            del tensors
            release_memory()
    tied = config.tie_word_embeddings or "lm_head.weight" not in loaded.keys() | replaced
    missing = [n for n in expected if n not in loaded and n not in replaced and not (tied and n == "lm_head.weight")]
    if missing:
        raise CheckpointError(f"{path}: missing tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    model.load_state_dict(loaded, strict=False, assign=True)
    if tied:
        model.tie_weights()
        if quantization and quantize_lm_head:  # a quantized copy of the embeddings (which stay float)
            embed = model.model.embed_tokens.weight.detach()
            model.lm_head = quantized_linear(quantization, embed.cpu().split(_block_rows(embed.shape)), tuple(embed.shape),
                                             group_size)
    if quantization:
        from .quant import prepare_kernels

        model.to(device)
        prepare_kernels(model)
    return model.eval(), config


def quantized_linear(kind: str, blocks, shape: tuple[int, int], group_size: int = 128) -> nn.Module:
    """phi4r's `kind` module for a float weight of `shape` given as consecutive row blocks."""
    from .quant import Int8Linear, int8_module, per_channel_int8_chunks, w8a8_from_chunks

    if kind == "w8a8":
        return w8a8_from_chunks(blocks, shape)
    if kind == "int8":
        return int8_module(Int8Linear, *per_channel_int8_chunks(blocks, shape))
    from .quant_int4 import Int4Linear, quantize_weight

    # quantize_weight a block of rows at a time (groups run along a row), into the layer's own buffers.
    packed = torch.empty(shape[0], -(-shape[1] // 8), dtype=torch.int32)
    scales = torch.empty(shape[0], -(-shape[1] // group_size), dtype=torch.bfloat16)
    row = 0
    for block in blocks:
        p, s, _ = quantize_weight(block, group_size)
        packed[row:row + len(p)], scales[row:row + len(p)] = p, s
        row += len(p)
    if row != shape[0]:
        raise ValueError(f"weight blocks gave {row} rows, expected {shape[0]}")
    return Int4Linear.from_compressed({"weight_packed": packed, "weight_scale": scales,
                                       "weight_shape": torch.tensor(shape)}, group_size)


def release_memory() -> None:
    """Give the C heap's free pages back to the OS (glibc's malloc_trim; elsewhere nothing). Loading frees
    a weight's temporaries (blocks of a few MB) between long-lived quantized weights; glibc keeps such
    freed memory in the process (it counts in its RSS) unless asked to return it."""
    global _TRIM
    if _TRIM is None:
        try:
            import ctypes

            _TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _TRIM = False
    if _TRIM:
        _TRIM(0)


_TRIM = None


def save_model(model: Phi3ForCausalLM, path: str | os.PathLike, max_shard_bytes: int = 2 * 1024**3,
               generation_config: dict | None = None) -> None:
    """Write config.json, safetensors weights (sharded above max_shard_bytes) and generation_config.json."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = model.config
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if model.lm_head.weight is model.model.embed_tokens.weight:
        state.pop("lm_head.weight")
        config.tie_word_embeddings = True
    cfg = config.to_dict()
    cfg["torch_dtype"] = str(model.dtype).removeprefix("torch.")
    write_weights(state, path, max_shard_bytes)
    _atomic_write(path / "config.json", cfg)
    if generation_config is not None:
        _atomic_write(path / "generation_config.json", generation_config)


def write_weights(state: dict[str, torch.Tensor], path: Path, max_shard_bytes: int = 2 * 1024**3) -> None:
    """The tensors as model.safetensors, or shards of at most max_shard_bytes and their index."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in state.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    # Write to temporary names, then rename: an interrupted save never looks complete.
    if len(shards) == 1:
        _atomic_save(shards[0], path / SINGLE_NAME)
        (path / INDEX_NAME).unlink(missing_ok=True)
    else:
        weight_map = {}
        for i, shard in enumerate(shards, 1):
            name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            _atomic_save(shard, path / name)
            weight_map.update({k: name for k in shard})
        total = sum(t.numel() * t.element_size() for t in state.values())
        _atomic_write(path / INDEX_NAME, {"metadata": {"total_size": total}, "weight_map": weight_map})
        (path / SINGLE_NAME).unlink(missing_ok=True)


def default_generation_config(config: Phi3Config, stop_ids: list[int]) -> dict:
    """The card's recommended sampling, in transformers' generation_config.json form."""
    return {"bos_token_id": config.bos_token_id, "eos_token_id": stop_ids, "pad_token_id": config.pad_token_id,
            "do_sample": True, "temperature": 0.8, "top_p": 0.95, "top_k": 50}


def _atomic_save(tensors: dict[str, torch.Tensor], file: Path) -> None:
    tmp = file.with_name(file.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, file)


def _atomic_write(file: Path, data: dict) -> None:
    tmp = file.with_name(file.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, file)


def load(path: str | os.PathLike | None = "nano", dtype: str | torch.dtype | None = None,
         device: str | torch.device = "cpu"):
    """(model, tokenizer) from a Hugging Face directory, or the shipped nano model."""
    from .tokenizer import Tokenizer

    path = resolve_model_path(path)
    model, _ = load_model(path, dtype=dtype, device=device)
    return model, Tokenizer.from_dir(path)


def save(model: Phi3ForCausalLM, tokenizer, path: str | os.PathLike, generation_config: dict | None = None,
         max_shard_bytes: int = 2 * 1024**3) -> None:
    """Write a directory that transformers, vLLM and llama.cpp's converter read."""
    if generation_config is None:
        generation_config = default_generation_config(model.config, list(tokenizer.stop_ids))
    save_model(model, path, max_shard_bytes=max_shard_bytes, generation_config=generation_config)
    tokenizer.save(path)
