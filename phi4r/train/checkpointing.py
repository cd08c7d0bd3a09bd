"""Checkpoints a killed run resumes from exactly.

`output_dir/checkpoint-N/` is a complete Hugging Face directory (weights, config, tokenizer,
generation_config.json: it loads in phi4r, transformers, vLLM; under --use-peft a PEFT adapter
directory with the tokenizer instead) plus `trainer_state.pt` (optimizer,
step, data position, RNG states of every rank) and the run's `train_config.yaml`. It is written to a
temporary directory and renamed into place, so a kill mid-save never leaves a checkpoint that looks
complete. `trainer_state.pt` holds tensors and plain Python values only and is read with
`weights_only=True` (no pickle code execution).

Under FSDP a checkpoint holds `sharded/` instead of the weights and optimizer: a
torch.distributed.checkpoint directory that every rank writes its shards of (model and optimizer
through get/set_state_dict, so it loads back into any number of processes, sharded or not), plus the
config and tokenizer; the Hugging Face weights are gathered once, into `final/`.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from .. import checkpoint as hf
from .. import lora
from . import config as config_mod

PREFIX = "checkpoint-"
STATE_FILE = "trainer_state.pt"
SHARDED = "sharded"


def rng_state() -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "python": [version, list(internal), gauss_next],
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss]}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))


def tmp_dir(final: Path, fresh: bool = True) -> Path:
    """Where `final` is written before the rename; emptied when `fresh`."""
    tmp = final.with_name(f".tmp-{final.name}")
    if fresh:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    return tmp


def _atomic_dir(final: Path, write, fresh: bool = True) -> Path:
    """Call write(tmp_dir), then rename tmp_dir to `final` (replacing an older one). Not `fresh`: tmp_dir
    already holds what other processes wrote there (sharded weights)."""
    tmp = tmp_dir(final, fresh)
    write(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    return final


def _save_weights(model, tokenizer, path: Path, generation_config: dict | None) -> None:
    """A Hugging Face directory, or PEFT's adapter directory when only LoRA adapters train."""
    if lora.has_adapters(model):
        lora.save(model, tokenizer, path)
    else:
        hf.save(model, tokenizer, path, generation_config=generation_config)


def save_model_dir(path: Path, model, tokenizer, generation_config: dict | None = None) -> Path:
    """An atomic Hugging Face (or adapter) directory (used for `final/`)."""
    return _atomic_dir(Path(path), lambda tmp: _save_weights(model, tokenizer, tmp, generation_config))


def save_checkpoint(output_dir: str | Path, step: int, model, tokenizer, state: dict, config,
                    generation_config: dict | None = None, keep: int | None = None, sharded: bool = False) -> Path:
    """Write `checkpoint-{step}` (rank 0 only) and prune all but the newest `keep`. `sharded`: the
    weights are already in its temporary directory (save_sharded); add the model's config only."""
    output_dir = Path(output_dir)

    def write(tmp: Path) -> None:
        if sharded:
            cfg = model.config.to_dict()
            cfg["torch_dtype"] = "float32"
            (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
            tokenizer.save(tmp)
        else:
            _save_weights(model, tokenizer, tmp, generation_config)
        torch.save(state, tmp / STATE_FILE)
        config_mod.save(config, tmp / "train_config.yaml")
        (tmp / "trainer_state.json").write_text(json.dumps({"step": step, **state.get("summary", {})}, indent=2) + "\n")

    path = _atomic_dir(output_dir / f"{PREFIX}{step}", write, fresh=not sharded)
    if keep:
        for old in checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old)
    return path


def checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    found = [p for p in Path(output_dir).glob(f"{PREFIX}*")
             if p.name[len(PREFIX):].isdigit() and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def resolve_resume(output_dir: str | Path, resume: str | None) -> Path | None:
    """The checkpoint to resume from. Refuses to start over a run that already has checkpoints
    unless told which one to resume (or given a fresh output_dir), so nothing is overwritten by accident."""
    existing = checkpoints(output_dir)
    if resume is None:
        if existing:
            raise FileExistsError(f"{output_dir} already has {existing[-1].name}: pass --resume-from-checkpoint "
                                  "latest to continue it, or choose another --output-dir")
        return None
    if resume == "latest":
        if not existing:
            raise FileNotFoundError(f"--resume-from-checkpoint latest: no checkpoint in {output_dir}")
        return existing[-1]
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"{path}: not a training checkpoint (no {STATE_FILE})")
    return path


def latest_if_any(output_dir: str | Path) -> str | None:
    """resume_from_checkpoint for a run that continues whatever `output_dir` holds."""
    return "latest" if checkpoints(output_dir) else None


def load_state(path: str | Path) -> dict:
    return torch.load(Path(path) / STATE_FILE, weights_only=True)


def save_sharded(path: Path, model, optimizer) -> None:
    """Every rank writes its shards of the model and optimizer to `path/sharded` (collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=str(Path(path) / SHARDED))


def load_sharded(path: Path, model, optimizer) -> None:
    """Load `path/sharded` into the model and optimizer, resharded to however they are laid out now."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optim_state}
    dcp.load(state, checkpoint_id=str(Path(path) / SHARDED))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])


def is_sharded(path: Path) -> bool:
    return (Path(path) / SHARDED).is_dir()
