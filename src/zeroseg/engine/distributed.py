"""Distributed data parallel through ``torchrun`` (NCCL on GPUs, Gloo on CPUs).

Single-process runs take the same code path: every helper here is a no-op when no process group
is initialised.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as td


def init_from_env(device: torch.device) -> bool:
    """Joins the process group when launched by torchrun (``WORLD_SIZE`` > 1)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or td.is_initialized():
        return td.is_initialized()
    backend = "nccl" if device.type == "cuda" else "gloo"
    td.init_process_group(backend=backend)
    if device.type == "cpu":
        # Ranks on one machine share its cores: oversubscribed threads slow CPU training badly.
        local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return True


def is_dist() -> bool:
    return td.is_available() and td.is_initialized()


def rank() -> int:
    return td.get_rank() if is_dist() else 0


def world_size() -> int:
    return td.get_world_size() if is_dist() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_dist():
        td.barrier()


def barrier_if_needed(ckpt_every: int, step: int) -> None:
    """Keeps ranks together after rank 0 writes a step checkpoint."""
    if is_dist() and ckpt_every and (step + 1) % ckpt_every == 0:
        td.barrier()


def wrap(model: torch.nn.Module) -> torch.nn.Module:
    """DDP-wraps a module with trainable parameters when distributed; the module itself otherwise."""
    if not is_dist() or not any(p.requires_grad for p in model.parameters()):
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, find_unused_parameters=True)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sums a tensor over ranks (in place) and returns it; identity when not distributed."""
    if is_dist():
        td.all_reduce(t, op=td.ReduceOp.SUM)
    return t
