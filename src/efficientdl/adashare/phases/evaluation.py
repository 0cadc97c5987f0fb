"""Evaluation of a forward function over a split (`validate` reads val during training, `test`
the test split in the final evaluation only), and the selection score Δ_T."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from tqdm import tqdm

from efficientdl.adashare.objectives.metrics import delta_t
from efficientdl.adashare.objectives.tasks import TaskMeter, TaskSpec
from efficientdl.adashare.phases.ddp import to_device
from efficientdl.core.distributed import broadcast_object
from efficientdl.data.multitask import batches


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

    Every built-in metric is aggregated per image or pooled over pixels, so the result does not
    depend on `batch_size`; the mean task losses are added as `loss`.
    """
    meters = {t.name: TaskMeter(t, upsample) for t in spec.definitions}
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
        for task in spec.definitions:
            t, pred = task.name, outputs[task.name].float()
            meters[t].update(pred, batch[t], batch.get(f"{t}_mask"))
            loss_sums[t] += float(task.batch_loss(pred, batch)) * len(batch["image"])
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


def _metrics(ctx, forward, spec: TaskSpec, model, split: str) -> dict:
    model.eval()
    metrics = evaluate(
        forward,
        ctx.splits[split],
        spec,
        batch_size=ctx.cfg.train.eval_batch_size,
        device=ctx.device,
        upsample=ctx.cfg.parity.eval_upsample,
        channels_last=ctx.cfg.perf.channels_last,
        progress=ctx.cfg.progress and ctx.dist.is_main,
        desc=split,
    )
    return broadcast_object(metrics, ctx.dist)


def validate(ctx, forward, spec: TaskSpec, model) -> dict:
    """Metrics of `forward` on the val split, the model in eval mode (rank 0's on every rank)."""
    return _metrics(ctx, forward, spec, model, "val")


def test(ctx, forward, spec: TaskSpec, model) -> dict:
    """Final evaluation on the test split (the only place it is read)."""
    with ctx.autocast():
        return _metrics(ctx, forward, spec, model, "test")
