"""Per-batch losses, evaluation over a split, the selection score and the DDP
steps of the trainer: batch shards, gradient averaging, rank 0's BN statistics and results.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.distributed as dist
from tqdm import tqdm

from efficientdl.adashare import losses
from efficientdl.adashare.datasets import TaskSpec
from efficientdl.adashare.metrics import (
    AccuracyMeter,
    CEMeter,
    DepthMeter,
    L1Meter,
    NormalMeter,
    SegmentationMeter,
    delta_t,
)
from efficientdl.core.distributed import DistContext, all_reduce_gradients, all_reduce_sum
from efficientdl.data.multitask import batches


def task_loss(kind: str, pred: torch.Tensor, batch: dict, task: str, spec: TaskSpec):
    """The loss of one task on one batch."""
    target = batch[task]
    mask = batch.get(f"{task}_mask")
    if kind in ("seg", "seg_weighted", "cls"):
        return losses.seg_loss(pred, target, class_weight=spec.class_weights.get(task))
    if kind == "normal":
        return losses.normal_loss(pred, target, mask)
    if kind == "depth":
        return losses.depth_loss(pred, target, mask)
    return losses.l1_loss(pred, target, mask)


def weighted_loss(outputs: dict, batch: dict, spec: TaskSpec) -> tuple[torch.Tensor, dict]:
    """Σ_k λ_k L_k and the per-task losses."""
    parts = {t: task_loss(spec.kinds[t], outputs[t].float(), batch, t, spec) for t in spec.tasks}
    total = sum(spec.lambdas[t] * parts[t] for t in spec.tasks)
    return total, parts


def make_meter(
    kind: str, channels: int, class_weight=None, upsample: str = "nearest", preset: str = ""
):
    """The meter of a task kind (Taskonomy depth: validity from its explicit mask alone)."""
    if kind == "seg":
        return SegmentationMeter(channels, upsample=upsample)
    if kind == "seg_weighted":
        return CEMeter(class_weight, upsample=upsample)
    if kind == "normal":
        return NormalMeter(upsample=upsample)
    if kind == "depth":
        return DepthMeter(upsample=upsample, explicit_mask=preset == "taskonomy")
    if kind == "cls":
        return AccuracyMeter()
    return L1Meter(upsample=upsample)


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


@torch.no_grad()
def evaluate(
    forward: Callable[[torch.Tensor, int], dict],
    dataset,
    spec: TaskSpec,
    *,
    batch_size: int,
    device,
    upsample: str = "nearest",
    channels_last: bool = False,
    progress: bool = False,
    desc: str = "eval",
) -> dict:
    """Metrics {task: {metric: value}} of `forward(images, batch_index)` over `dataset`.

    Every metric is aggregated per image or pooled over pixels, so the result does not depend on
    `batch_size`; the mean task losses are added as `loss`.
    """
    meters = {
        t: make_meter(
            spec.kinds[t], spec.channels[t], spec.class_weights.get(t), upsample, spec.preset
        )
        for t in spec.tasks
    }
    loss_sums = dict.fromkeys(spec.tasks, 0.0)
    n = 0
    total = math.ceil(len(dataset) / batch_size)
    for b, batch in enumerate(
        tqdm(
            batches(dataset, batch_size), total=total, desc=desc, leave=False, disable=not progress
        )
    ):
        batch = to_device(batch, device, channels_last)
        outputs = forward(batch["image"], b)
        for t in spec.tasks:
            pred = outputs[t].float()
            meters[t].update(pred, batch[t], batch.get(f"{t}_mask"))
            loss = task_loss(spec.kinds[t], pred, batch, t, spec)
            loss_sums[t] += float(loss) * len(batch["image"])
        n += len(batch["image"])
    results = {}
    for t in spec.tasks:
        metrics = meters[t].compute()
        metrics.pop("confusion", None)
        metrics["loss"] = loss_sums[t] / max(n, 1)
        results[t] = metrics
    return results


def selection_score(results: dict, reference: dict, spec: TaskSpec) -> float:
    """Δ_T of `results` against `reference` (the selection score).

    Metrics whose reference value is 0 (possible for an early, untrained reference) are left out
    of the score instead of making it undefined.
    """
    hib = {
        t: {m: h for m, h in ms.items() if reference[t][m] != 0}
        for t, ms in spec.higher_is_better.items()
    }
    hib = {t: ms for t, ms in hib.items() if ms}
    if not hib:
        return 0.0
    return delta_t(results, reference, hib)["delta_t"]
