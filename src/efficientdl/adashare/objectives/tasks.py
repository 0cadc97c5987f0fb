"""The tasks of an AdaShare run: their specification (output channels, loss/metric kind, loss
weights λ_k, Δ_T metric directions) and the loss and meter of each task kind."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from efficientdl.adashare.objectives import losses
from efficientdl.adashare.objectives.metrics import (
    DELTA_METRICS,
    AccuracyMeter,
    CEMeter,
    DepthMeter,
    L1Meter,
    NormalMeter,
    SegmentationMeter,
)

PRESETS = {
    "procedural": "procedural",
    "multi_mnist": "mnist",
    "nyu_v2": "nyu",
    "cityscapes": "cityscapes",
    "taskonomy": "taskonomy",
}


@dataclass
class TaskSpec:
    """Tasks, output channels, loss/metric kind, loss weights λ_k and Δ_T metric directions."""

    tasks: tuple[str, ...]
    channels: dict[str, int]
    kinds: dict[str, str]
    lambdas: dict[str, float]
    preset: str
    class_weights: dict[str, torch.Tensor | None]

    @property
    def higher_is_better(self) -> dict[str, dict[str, bool]]:
        table = DELTA_METRICS[self.preset]
        return {t: table[t] for t in self.tasks}

    def subset(self, tasks) -> TaskSpec:
        """The task specification restricted to `tasks` (single-task baselines)."""
        tasks = tuple(tasks)
        pick = lambda d: {t: d[t] for t in tasks}  # noqa: E731
        return TaskSpec(
            tasks,
            pick(self.channels),
            pick(self.kinds),
            pick(self.lambdas),
            self.preset,
            pick(self.class_weights),
        )


def task_kind(preset: str, task: str) -> str:
    """Loss/metric family of `task`: seg, seg_weighted, normal, depth, l1 or cls."""
    if preset == "mnist":
        return "cls"
    if task == "seg":
        return "seg_weighted" if preset == "taskonomy" else "seg"
    if task in ("normal", "depth"):
        return task
    if task in ("keypoint", "edge"):
        return "l1"
    raise ValueError(f"unknown task {task!r} for dataset preset {preset!r}")


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


def task_spec(cfg, train) -> TaskSpec:
    """The TaskSpec of `cfg.data.tasks` on the training split `train` (its channels and, for
    Taskonomy, its class weights) with the loss weights `cfg.train.lambdas`."""
    preset = PRESETS[cfg.data.dataset]
    tasks = tuple(cfg.data.tasks)
    weights = getattr(train, "class_weights", {}) or {}
    return TaskSpec(
        tasks=tasks,
        channels={t: train.task_channels[t] for t in tasks},
        kinds={t: task_kind(preset, t) for t in tasks},
        lambdas={t: float(cfg.train.lambdas.get(t, 1.0)) for t in tasks},
        preset=preset,
        class_weights={t: weights.get(t) for t in tasks},
    )
