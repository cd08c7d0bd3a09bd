"""Running under `torchrun`: process group, device, rank-aware sharding, and rank-0-only writes.

One process is the degenerate case (rank 0 of 1), so trainers call the same helpers either way.
Gradients are made exactly equal to a single process's by normalising every loss by a GLOBAL count
(tokens or sequences of the whole global batch) and summing across ranks: DDP and FSDP average, so
losses are multiplied by the world size before backward.

Two ways to spread a model over processes: DDP (every rank holds all weights, gradients and
optimizer state) and FSDP2 (`--fsdp`: torch's fully_shard per decoder layer, then the root, so each
rank holds 1/N of them and gathers one layer's weights at a time). Under FSDP every forward is a
collective: all ranks must run the same number of forwards (`lockstep`).
"""
from __future__ import annotations

import contextlib
import os
from datetime import timedelta

import torch
import torch.distributed as dist


def setup(device: str = "auto") -> torch.device:
    """Join the torchrun process group (if launched by torchrun) and pick this process's device."""
    if "RANK" in os.environ and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and device != "cpu" else "gloo"
        dist.init_process_group(backend, timeout=timedelta(minutes=30))
    if device == "auto":
        device = f"cuda:{local_rank()}" if torch.cuda.is_available() else "cpu"
    elif device == "cuda":
        device = f"cuda:{local_rank()}"
    if device.startswith("cuda"):
        torch.cuda.set_device(device)
    return torch.device(device)


def teardown() -> None:
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def shard(items: list) -> list:
    """This rank's share of a global batch: every world_size-th item, starting at its rank."""
    return items[rank()::world_size()]


def all_sum(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum over ranks (float64, so counts and sums stay exact)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if is_distributed():
        dist.all_reduce(t)
    return t.tolist()


def all_gather_objects(obj) -> list:
    if not is_distributed():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def wrap(model: torch.nn.Module, device: torch.device, cfg=None) -> torch.nn.Module:
    """FSDP2 in place when cfg.fsdp (the model itself, now sharded), else DDP when there are several
    processes, else the model itself."""
    if cfg is not None and getattr(cfg, "fsdp", False):
        return shard_fsdp(model, device, cfg.bf16, cfg.fsdp_cpu_offload)
    if not is_distributed():
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def shard_fsdp(model: torch.nn.Module, device: torch.device, bf16: bool = False, cpu_offload: bool = False):
    """fully_shard each decoder layer, then the root (embeddings, final norm, lm_head). With bf16 the
    gathered weights are bf16 and gradients are reduced in fp32; the shards (master weights) and the
    optimizer stay fp32. cpu_offload keeps shards, gradients and optimizer state in host memory."""
    from torch.distributed import fsdp

    if not dist.is_initialized():
        raise ValueError("--fsdp needs a process group: launch with torchrun (--nproc_per_node 1 for one process)")
    mp = (fsdp.MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16
          else fsdp.MixedPrecisionPolicy())
    # Pinned host memory needs an accelerator; on a CPU-only build the shards are in host memory anyway.
    offload = fsdp.CPUOffloadPolicy(pin_memory=torch.cuda.is_available()) if cpu_offload else fsdp.OffloadPolicy()
    for layer in model.model.layers:
        fsdp.fully_shard(layer, mp_policy=mp, offload_policy=offload)
    fsdp.fully_shard(model, mp_policy=mp, offload_policy=offload)
    return model


def is_fsdp(model: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def grad_sync(wrapped: torch.nn.Module, sync: bool):
    """Context for one micro-batch's backward: gradients reduced across ranks only when `sync` (the
    last micro-batch of a step); earlier ones accumulate locally."""
    if sync or not is_distributed():
        return contextlib.nullcontext()
    if is_fsdp(wrapped):
        return _fsdp_no_sync(wrapped)
    return wrapped.no_sync()


@contextlib.contextmanager
def _fsdp_no_sync(model):
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def lockstep(items: list, fill) -> list:
    """`items` padded with `fill` to the longest list over ranks: under FSDP every rank must run as many
    forwards as the others (each one gathers weights from all), also when its share is shorter."""
    n = max(all_gather_objects(len(items))) if is_distributed() else len(items)
    return items + [fill] * (n - len(items))


def full_state_dict(model: torch.nn.Module, everywhere: bool = False) -> dict:
    """The whole model's state dict gathered from FSDP shards (collective): on rank 0 in host memory
    (the other ranks get {}), or on every rank in place when `everywhere`."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
    )

    if not is_fsdp(model):
        return model.state_dict()
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=not everywhere))


def consolidate(model: torch.nn.Module) -> torch.nn.Module | None:
    """A plain (unsharded) copy of an FSDP model on rank 0, None elsewhere; collective."""
    from ..model import Phi3ForCausalLM

    state = full_state_dict(model)
    if not is_main():
        return None
    with torch.device("meta"):
        plain = Phi3ForCausalLM(model.config)
    plain.load_state_dict(state, assign=True)
    if model.config.tie_word_embeddings:
        plain.tie_weights()
    return plain


def copy_weights(model: torch.nn.Module, into: torch.nn.Module) -> None:
    """Load an FSDP model's current weights, gathered, into the plain module `into` on every rank
    (GRPO's sampler: decoding is not in lockstep across ranks, so it cannot run on the shards)."""
    with torch.no_grad():
        into.load_state_dict(full_state_dict(model, everywhere=True))
