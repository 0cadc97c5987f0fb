"""KE under torchrun: each rank trains on its shard of every global batch, and the update equals
one process training on the whole global batch.

- Sharding: rank r takes `batch[r::world]` of each global batch (inputs, augmentations and CS-KD
  partners are drawn for the whole global batch first, so every random draw is the one a single
  process makes).
- Loss: each rank's loss is its shard's mean scaled by `len(shard) / len(batch)`, so the sum over
  ranks is the global-batch mean even when the shards differ in size; the gradients are summed
  with one all-reduce (`core.distributed.all_reduce_gradients(average=False)`).
- BatchNorm: while a rank trains, every BatchNorm layer normalises with the mean and variance of
  the global batch (`synced_batchnorm`), computed with differentiable all-reduces, and updates its
  running statistics with them, as one process would. (`torch.nn.SyncBatchNorm` would do this but
  refuses CPU tensors, and the gloo CPU backend is what the tests and CPU users run.)
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from efficientdl.core.distributed import DistContext


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) whose backward sums the incoming gradients over the ranks, which is the
    gradient of the sum of every rank's loss."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # noqa: ARG004
        out = tensor.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: ARG004
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def sum_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """Differentiable all-reduce sum."""
    return _SumOverRanks.apply(tensor)


def _global_batch_norm(self: _BatchNorm, x: torch.Tensor) -> torch.Tensor:
    """BatchNorm over the union of every rank's batch (training mode), else the layer's own."""
    if not self.training:
        return type(self).forward(self, x)
    self._check_input_dim(x)
    channels = x.shape[1]
    dims = [0, *range(2, x.dim())]
    shape = [1, channels] + [1] * (x.dim() - 2)
    local = torch.tensor([x.numel() // channels], dtype=x.dtype, device=x.device)
    first = sum_over_ranks(torch.cat([x.sum(dims), local]))
    count = first[-1].detach()
    mean = first[:-1] / count
    centred = x - mean.view(shape)
    var = sum_over_ranks((centred * centred).sum(dims)) / count
    y = centred * torch.rsqrt(var + self.eps).view(shape)
    if self.weight is not None:
        y = y * self.weight.view(shape) + self.bias.view(shape)
    if self.track_running_stats:
        self.num_batches_tracked.add_(1)
        factor = (
            1.0 / float(self.num_batches_tracked) if self.momentum is None else float(self.momentum)
        )
        n = float(count)
        with torch.no_grad():
            self.running_mean.mul_(1 - factor).add_(mean.detach(), alpha=factor)
            unbiased = var.detach() * (n / max(n - 1.0, 1.0))
            self.running_var.mul_(1 - factor).add_(unbiased, alpha=factor)
    return y


@contextlib.contextmanager
def synced_batchnorm(model: nn.Module, ctx: DistContext) -> Iterator[None]:
    """While inside, every BatchNorm layer of `model` in training mode normalises over the
    global batch of all ranks (see the module docstring); nothing changes in a single process."""
    layers = [m for m in model.modules() if isinstance(m, _BatchNorm)] if ctx.enabled else []
    for layer in layers:
        layer.forward = types.MethodType(_global_batch_norm, layer)
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward


def shard_loss(loss: torch.Tensor, logits: torch.Tensor, shard: int, batch: int) -> torch.Tensor:
    """This rank's part of the global-batch mean: its shard mean × shard / batch (a zero that
    still reaches every parameter when the shard is empty, so that the backward collectives
    of every rank match)."""
    if shard == 0:
        return logits.sum() * 0.0
    return loss if shard == batch else loss * (shard / batch)


__all__ = [
    "shard_loss",
    "sum_over_ranks",
    "synced_batchnorm",
]
