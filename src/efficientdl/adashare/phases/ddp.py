"""The DDP steps of AdaShare training: this rank's shard of a global batch, the mean of a loss
over the ranks, gradient averaging and rank 0's BN running statistics."""

from __future__ import annotations

import torch
import torch.distributed as dist

from efficientdl.core.distributed import DistContext, all_reduce_gradients, all_reduce_sum


def to_device(batch: dict, device, channels_last: bool = False) -> dict:
    out = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    if channels_last:
        out["image"] = out["image"].contiguous(memory_format=torch.channels_last)
    return out


def shard(batch: dict, ctx: DistContext) -> dict:
    """This rank's contiguous 1/world_size slice of a global batch (all of it without DDP)."""
    size = len(batch["image"]) // ctx.world_size
    return {k: v[ctx.rank * size : (ctx.rank + 1) * size] for k, v in batch.items()}


def global_mean(value: torch.Tensor, ctx: DistContext) -> float:
    """The mean over all ranks of a scalar tensor, as a float."""
    total = all_reduce_sum(value.detach().double().reshape(1).clone(), ctx)
    return float(total) / ctx.world_size


def broadcast_buffers(model: torch.nn.Module) -> None:
    """Give every rank rank 0's floating-point buffers (BN running statistics), in one broadcast:
    batch statistics stay local to each rank, as under DistributedDataParallel."""
    buffers = [b for b in model.buffers() if b.is_floating_point()]
    flat = torch.cat([b.reshape(-1) for b in buffers])
    dist.broadcast(flat, src=0)
    for b, value in zip(buffers, flat.split([b.numel() for b in buffers])):
        b.copy_(value.view_as(b))


def synchronise(model: torch.nn.Module, ctx: DistContext) -> None:
    """Between backward and the optimiser step under DDP: average the gradients of the trainable
    parameters and share rank 0's BN running statistics (no-op in one process)."""
    if ctx.enabled:
        all_reduce_gradients([p for p in model.parameters() if p.requires_grad], ctx)
        broadcast_buffers(model)
