"""Read and write Hugging Face checkpoint directories (safetensors only, never pickle).

Loading is lazy: the model is built on the meta device and each tensor, read from a
memory-mapped safetensors file, is assigned in place, so peak memory stays near one copy of the
weights. Every problem is reported as a `CheckpointError` naming the file and what is wrong.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

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


def load_model(path: str | os.PathLike, dtype: str | torch.dtype | None = None, device: str | torch.device = "cpu",
               progress: bool = False) -> tuple[Phi3ForCausalLM, Phi3Config]:
    """progress: a bar on stderr (bytes read) when loading takes more than 2 s."""
    from tqdm.auto import tqdm

    path = resolve_model_path(path)
    if path.suffix == ".gguf":
        from .gguf_io import load_model as load_gguf
        return load_gguf(path, dtype=dtype, device=device, progress=progress)
    config = read_config(path)
    dtype = resolve_dtype(dtype, config)
    with torch.device("meta"):
        model = Phi3ForCausalLM(config)
    expected = dict(model.state_dict())
    loaded: dict[str, torch.Tensor] = {}
    files = _weight_files(path)
    with tqdm(total=sum(f.stat().st_size for f in files), desc=f"loading {path.name}", unit="B", unit_scale=True,
              delay=2, disable=not progress, leave=False) as bar:
        for file in files:
            try:
                handle = safe_open(str(file), framework="pt", device=str(device))
            except Exception as e:  # safetensors raises its own types for truncated or bad headers
                raise CheckpointError(f"{file}: unreadable safetensors file ({e})") from e
            with handle:
                for name in handle.keys():
                    if name.endswith(_IGNORED_SUFFIXES):
                        continue
                    if name not in expected:
                        raise CheckpointError(f"{file}: unexpected tensor {name!r} for Phi3ForCausalLM")
                    shape = tuple(handle.get_slice(name).get_shape())
                    if shape != tuple(expected[name].shape):
                        raise CheckpointError(f"{file}: tensor {name!r} has shape {list(shape)}, "
                                              f"expected {list(expected[name].shape)} from config.json")
                    try:
                        tensor = handle.get_tensor(name)
                        loaded[name] = tensor.to(dtype)
                    except Exception as e:
                        raise CheckpointError(f"{file}: cannot read tensor {name!r} ({e})") from e
                    bar.update(tensor.nbytes)
    tied = config.tie_word_embeddings or "lm_head.weight" not in loaded
    missing = [n for n in expected if n not in loaded and not (tied and n == "lm_head.weight")]
    if missing:
        raise CheckpointError(f"{path}: missing tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    model.load_state_dict(loaded, strict=False, assign=True)
    if tied:
        model.tie_weights()
    return model.eval(), config


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
    _atomic_write(path / "config.json", cfg)
    if generation_config is not None:
        _atomic_write(path / "generation_config.json", generation_config)


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
