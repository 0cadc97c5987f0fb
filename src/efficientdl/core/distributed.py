"""DistributedDataParallel set-up for runs launched with `torchrun` (gloo on CPU, NCCL on GPU)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in a (possibly single-process) run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def is_main_process() -> bool:
    """Whether this process is rank 0 of its torchrun job (or runs alone), from `RANK`; usable
    before the process group exists (to keep stdout to rank 0)."""
    return int(os.environ.get("RANK", "0")) == 0


def init_distributed(device_type: str) -> DistContext:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); else single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device_type == "cuda":
        torch.cuda.set_device(local)
    return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local)


def current_context() -> DistContext:
    """This process's place in an already initialised process group (single process if none)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        rank = dist.get_rank()
        local = int(os.environ.get("LOCAL_RANK", rank))
        return DistContext(rank=rank, world_size=dist.get_world_size(), local_rank=local)
    return DistContext()


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (no-op in a single process)."""
    if ctx.enabled:
        dist.barrier()


def broadcast_object(value, ctx: DistContext):
    """Rank 0's `value` (any picklable object) on every rank; unchanged in a single process."""
    if not ctx.enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_sum(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum a tensor over all processes (no-op when not distributed)."""
    if ctx.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_gradients(
    params: list[torch.nn.Parameter], ctx: DistContext, *, average: bool = True
) -> None:
    """Replace each gradient by its mean (`average`) or sum over the ranks, in one flat
    all-reduce (no-op in a single process).

    A missing gradient counts as zero on that rank (every rank sends the same layout, so none
    waits for another); a parameter without a gradient on every rank keeps none, as it would in
    one process (so Adam leaves it alone).
    """
    if not ctx.enabled or not params:
        return
    grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
    present = [float(p.grad is not None) for p in params]
    flat = torch.cat([grads[0].new_tensor(present)] + [g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    counts, values = flat[: len(params)].tolist(), flat[len(params) :]
    parts = values.split([g.numel() for g in grads])
    for p, grad, count, value in zip(params, grads, counts, parts):
        if count:
            p.grad = grad  # its own gradient, or the zeros sent for it (same memory format)
            grad.copy_(value.view_as(grad))
            if average:
                grad.div_(ctx.world_size)


def shutdown(ctx: DistContext) -> None:
    """Leave the process group if this process joined one."""
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()
