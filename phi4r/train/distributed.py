"""Running under `torchrun`: process group, device, rank-aware sharding, and rank-0-only writes.

One process is the degenerate case (rank 0 of 1), so trainers call the same helpers either way.
Gradients are made exactly equal to a single process's by normalising every loss by a GLOBAL count
(tokens or sequences of the whole global batch) and summing across ranks: DDP averages, so losses
are multiplied by the world size before backward.
"""
from __future__ import annotations

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
    return int(os.environ.get("LOCAL_RANK", 0))


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


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DDP when there are several processes, the model itself otherwise."""
    if not is_distributed():
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
