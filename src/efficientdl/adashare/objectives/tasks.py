"""The tasks of an AdaShare run: `Task` (name, output channels, loss, metrics with their Δ_T
directions, loss weight λ_k) and `Metric`, the `TaskSpec` of a run, and the built-in tasks of
the shipped datasets as `Task` instances.

A task's loss is called as `loss(pred, target)`, or `loss(pred, target, mask)` when the batch
holds `<task>_mask`; `pred` is the head's output (dense heads: 1/8 of the input resolution),
`target` the batch entry of the task. Its metrics come from `Metric.fn` callables and/or the
task's `meter` (an object with `update(pred, target, mask)` and `compute() -> {name: value}`);
both receive dense predictions upsampled to the target's size.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial

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
    upsample,
)
from efficientdl.core.errors import ConfigError, DataError

CUSTOM = "custom"
"""The preset (and `data.dataset`) of a run whose tasks and datasets come from the API."""
PRESETS = {
    "procedural": "procedural",
    "multi_mnist": "mnist",
    "nyu_v2": "nyu",
    "cityscapes": "cityscapes",
    "taskonomy": "taskonomy",
    CUSTOM: CUSTOM,
}


@dataclass(frozen=True)
class Metric:
    """One metric of a task and its direction for Δ_T.

    `fn(pred, target[, mask])` returns the metric of one batch as a number, the mean over its
    images; the split's value is the image-weighted mean over batches (so it does not depend
    on the batch size when `fn` is a per-image mean). Without `fn` the value is the one the
    task's `meter` reports under the metric's name. `higher_is_better` is required;
    `in_delta=False` reports the metric without counting it in Δ_T.
    """

    fn: Callable | None = None
    higher_is_better: bool | None = None
    in_delta: bool = True


@dataclass(frozen=True)
class Task:
    """One task: `name`, `channels` (outputs of its head), `loss` (pred, target[, mask] → scalar
    tensor), `metrics` {name: Metric}, the loss weight λ_k (`weight`) and an optional `meter`
    factory (called with no argument once per evaluation) for metrics aggregated otherwise
    than as a per-batch mean (pooled pixels, medians, confusion matrices)."""

    name: str
    channels: int
    loss: Callable | None = None
    metrics: Mapping[str, Metric] = field(default_factory=dict)
    weight: float = 1.0
    meter: Callable[[], object] | None = None

    def __post_init__(self) -> None:
        where = f"task {self.name!r}"
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ConfigError(f"task name {self.name!r}: expected a Python identifier")
        if isinstance(self.channels, bool) or not isinstance(self.channels, int):
            raise ConfigError(f"{where}: channels must be an int ≥ 1, got {self.channels!r}")
        if self.channels < 1:
            raise ConfigError(f"{where}: channels must be an int ≥ 1, got {self.channels!r}")
        if not callable(self.loss):
            raise ConfigError(
                f"{where} has no loss: pass loss=callable(pred, target[, mask]) -> scalar"
            )
        if not isinstance(self.metrics, Mapping) or not self.metrics:
            raise ConfigError(f"{where} has no metrics: pass metrics={{name: Metric(...)}}")
        for name, metric in self.metrics.items():
            if not isinstance(metric, Metric):
                raise ConfigError(
                    f"metric {name!r} of {where} has no direction: wrap it as "
                    "Metric(fn, higher_is_better=True or False)"
                )
            if not isinstance(metric.higher_is_better, bool):
                raise ConfigError(
                    f"metric {name!r} of {where} has no direction: pass "
                    "higher_is_better=True or False"
                )
            if metric.fn is None and self.meter is None:
                raise ConfigError(f"metric {name!r} of {where}: give it a fn, or the task a meter")
        if not any(m.in_delta for m in self.metrics.values()):
            raise ConfigError(f"{where}: Δ_T needs at least one metric with in_delta=True")
        if isinstance(self.weight, bool) or not isinstance(self.weight, numbers.Real):
            raise ConfigError(f"{where}: weight must be a number, got {self.weight!r}")
        object.__setattr__(self, "metrics", dict(self.metrics))
        object.__setattr__(self, "weight", float(self.weight))

    @property
    def higher_is_better(self) -> dict[str, bool]:
        """{metric: direction} of the metrics Δ_T counts."""
        return {n: m.higher_is_better for n, m in self.metrics.items() if m.in_delta}

    def batch_loss(self, pred: torch.Tensor, batch: dict) -> torch.Tensor:
        """The task's loss on one batch (with `<task>_mask` when the batch has one)."""
        if self.name not in batch:
            raise DataError(f"the batch has no target for task {self.name!r}")
        mask = batch.get(f"{self.name}_mask")
        args = (pred, batch[self.name]) if mask is None else (pred, batch[self.name], mask)
        out = self.loss(*args)
        if not isinstance(out, torch.Tensor) or out.dim() != 0:
            raise ConfigError(
                f"the loss of task {self.name!r} returned {type(out).__name__} "
                f"{tuple(getattr(out, 'shape', ()))}; expected a scalar tensor"
            )
        return out


class TaskMeter:
    """The metrics of one task over a split: its `meter` (if any) and its `Metric.fn`s, fed
    predictions upsampled to the target size (`nearest` [code] or `bilinear`)."""

    def __init__(self, task: Task, upsample_mode: str = "nearest") -> None:
        self.task, self.mode = task, upsample_mode
        self.meter = task.meter() if task.meter is not None else None
        self.fns = {n: m.fn for n, m in task.metrics.items() if m.fn is not None}
        self.sums = dict.fromkeys(self.fns, 0.0)
        self.images = 0

    def update(self, pred: torch.Tensor, target: torch.Tensor, mask=None) -> None:
        """Add one batch."""
        pred = pred.detach()
        if pred.dim() == 4 and target.dim() >= 3:
            pred = upsample(pred, target.shape[-2:], self.mode)
        args = (pred, target) if mask is None else (pred, target, mask)
        if self.meter is not None:
            self.meter.update(*args)
        for name, fn in self.fns.items():
            self.sums[name] += float(fn(*args)) * len(pred)
        self.images += len(pred)

    def compute(self) -> dict:
        """{metric: value}: everything the meter reports, then the `fn` metrics."""
        out = dict(self.meter.compute()) if self.meter is not None else {}
        out |= {n: s / max(self.images, 1) for n, s in self.sums.items()}
        missing = [n for n in self.task.metrics if n not in out]
        if missing:
            raise ConfigError(
                f"task {self.task.name!r}: its meter reports no metric {missing[0]!r} "
                f"(it reports {sorted(out)})"
            )
        return out


@dataclass(frozen=True)
class TaskSpec:
    """The tasks of a run, in order, with the preset they come from (`custom` for tasks given
    through the API) and, for Taskonomy segmentation, the class weights of the training split."""

    definitions: tuple[Task, ...]
    preset: str = CUSTOM
    class_weights: dict[str, torch.Tensor | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = [t.name for t in self.definitions]
        if not names:
            raise ConfigError("an AdaShare run needs at least one task")
        if len(set(names)) != len(names):
            raise ConfigError(f"task names must be unique, got {names}")

    def __getitem__(self, task: str) -> Task:
        for t in self.definitions:
            if t.name == task:
                return t
        raise KeyError(task)

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.definitions)

    @property
    def channels(self) -> dict[str, int]:
        return {t.name: t.channels for t in self.definitions}

    @property
    def lambdas(self) -> dict[str, float]:
        return {t.name: t.weight for t in self.definitions}

    @property
    def kinds(self) -> dict[str, str]:
        """Loss/metric family per task (`task_kind`)."""
        return {t: task_kind(self.preset, t) for t in self.tasks}

    @property
    def higher_is_better(self) -> dict[str, dict[str, bool]]:
        """{task: {metric: direction}} of the metrics Δ_T counts."""
        return {t.name: t.higher_is_better for t in self.definitions}

    def subset(self, tasks) -> TaskSpec:
        """The task specification restricted to `tasks` (single-task baselines)."""
        tasks = tuple(tasks)
        weights = {t: self.class_weights[t] for t in tasks if t in self.class_weights}
        return TaskSpec(tuple(self[t] for t in tasks), self.preset, weights)


def task_kind(preset: str, task: str) -> str:
    """Loss/metric family of `task`: seg, seg_weighted, normal, depth, l1, cls or custom."""
    if preset == CUSTOM:
        return CUSTOM
    if preset == "mnist":
        return "cls"
    if task == "seg":
        return "seg_weighted" if preset == "taskonomy" else "seg"
    if task in ("normal", "depth"):
        return task
    if task in ("keypoint", "edge"):
        return "l1"
    raise ValueError(f"unknown task {task!r} for dataset preset {preset!r}")


def builtin_loss(kind: str, pred, target, mask=None, *, class_weight=None) -> torch.Tensor:
    """The loss of a built-in task family (segmentation and classification ignore `mask`)."""
    if kind in ("seg", "seg_weighted", "cls"):
        return losses.seg_loss(pred, target, class_weight=class_weight)
    if kind == "normal":
        return losses.normal_loss(pred, target, mask)
    if kind == "depth":
        return losses.depth_loss(pred, target, mask)
    return losses.l1_loss(pred, target, mask)


def weighted_loss(outputs: dict, batch: dict, spec: TaskSpec) -> tuple[torch.Tensor, dict]:
    """Σ_k λ_k L_k and the per-task losses."""
    parts = {t.name: t.batch_loss(outputs[t.name].float(), batch) for t in spec.definitions}
    total = sum(t.weight * parts[t.name] for t in spec.definitions)
    return total, parts


def make_meter(
    kind: str,
    channels: int,
    class_weight=None,
    upsample: str = "nearest",
    preset: str = "",
    normals_encoding: str = "unit",
):
    """The meter of a task kind (Taskonomy depth: validity from its explicit mask alone;
    normals: targets in `normals_encoding`)."""
    if kind == "seg":
        return SegmentationMeter(channels, upsample=upsample)
    if kind == "seg_weighted":
        return CEMeter(class_weight, upsample=upsample)
    if kind == "normal":
        return NormalMeter(upsample=upsample, encoding=normals_encoding)
    if kind == "depth":
        return DepthMeter(upsample=upsample, explicit_mask=preset == "taskonomy")
    if kind == "cls":
        return AccuracyMeter()
    return L1Meter(upsample=upsample)


def builtin_task(
    preset: str,
    name: str,
    channels: int,
    *,
    weight: float = 1.0,
    class_weight=None,
    normals_encoding: str = "unit",
) -> Task:
    """Task `name` of a shipped dataset `preset`: its family's loss and meter, and the paper's
    Δ_T metrics (`DELTA_METRICS`)."""
    kind = task_kind(preset, name)
    return Task(
        name,
        channels,
        loss=partial(builtin_loss, kind, class_weight=class_weight),
        metrics={m: Metric(higher_is_better=h) for m, h in DELTA_METRICS[preset][name].items()},
        weight=weight,
        meter=partial(
            make_meter,
            kind,
            channels,
            class_weight,
            preset=preset,
            normals_encoding=normals_encoding,
        ),
    )


def task_spec(cfg, train) -> TaskSpec:
    """The TaskSpec of `cfg.data.tasks` on the training split `train` (its channels, its
    normals encoding and, for Taskonomy, its class weights) with the loss weights
    `cfg.train.lambdas`."""
    preset = PRESETS[cfg.data.dataset]
    weights = getattr(train, "class_weights", {}) or {}
    weights = {t: weights.get(t) for t in cfg.data.tasks}
    encoding = getattr(train, "normals_encoding", "unit")
    definitions = tuple(
        builtin_task(
            preset,
            t,
            train.task_channels[t],
            weight=float(cfg.train.lambdas.get(t, 1.0)),
            class_weight=weights[t],
            normals_encoding=encoding,
        )
        for t in cfg.data.tasks
    )
    return TaskSpec(definitions, preset, weights)
