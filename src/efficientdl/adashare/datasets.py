"""Datasets, splits and the task specification used by the trainer."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from efficientdl.adashare.metrics import DELTA_METRICS
from efficientdl.core.errors import ConfigError
from efficientdl.data.multitask import Memoized, Subset, augment, halves, split_off

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


def _base_splits(cfg) -> dict:
    """{split: dataset} for the dataset's own splits (train, test and val if it has one)."""
    d = cfg.data
    tasks = tuple(d.tasks)
    if d.dataset == "procedural":
        from efficientdl.data.scenes import ProceduralScenes

        nums = {"train": d.num_train, "val": d.num_val, "test": d.num_test}
        return {
            s: ProceduralScenes(s, size=d.size, num=n, seed=d.scene_seed, tasks=tasks)
            for s, n in nums.items()
        }
    if d.dataset == "multi_mnist":
        from efficientdl.data.multi_mnist import MultiMNIST

        return {
            s: MultiMNIST(d.root, s, variant=d.variant, seed=d.split_seed)
            for s in ("train", "val", "test")
        }
    if d.dataset == "nyu_v2":
        from efficientdl.data.nyuv2 import NYUv2

        enc = cfg.parity.normals_encoding
        return {s: NYUv2(d.root, s, tasks=tasks, normals_encoding=enc) for s in ("train", "test")}
    if d.dataset == "cityscapes":
        from efficientdl.data.cityscapes import CityScapes

        return {s: CityScapes(d.root, s, tasks=tasks) for s in ("train", "test")}
    from efficientdl.data.taskonomy import Taskonomy

    weights = d.class_weights
    train = Taskonomy(d.root, "train", tasks=tasks, class_weights=weights)
    others = [s for s in ("val", "test") if s in train.split_names]  # splits.csv has a val split
    return {"train": train} | {
        s: Taskonomy(d.root, s, tasks=tasks, class_weights=weights) for s in others
    }


def build_data(cfg) -> tuple[dict, TaskSpec]:
    """Splits train (minus val), train1, train2, val, test, and the TaskSpec."""
    d = cfg.data
    base = _base_splits(cfg)
    train = base["train"]
    if d.cache:
        base = {k: Memoized(v) for k, v in base.items()}
    unknown = [t for t in d.tasks if t not in train.task_channels]
    if unknown:
        raise ConfigError(
            f"config key 'data.tasks': {unknown} not available in {d.dataset}; "
            f"known {list(train.task_channels)}"
        )
    if "val" in base:
        rest, val = np.arange(len(base["train"])), None
    else:
        rest, val = split_off(len(base["train"]), d.val_fraction, d.split_seed)
    official = getattr(train, "official_halves", None)
    if official is not None:
        held = set() if val is None else set(val.tolist())
        h1, h2 = ([i for i in h if i not in held] for h in official)
    else:
        h1, h2 = halves(rest, d.split_seed)
    splits = {
        "train": Subset(base["train"], rest),
        "train1": Subset(base["train"], h1),
        "train2": Subset(base["train"], h2),
        "val": base["val"] if val is None else Subset(base["train"], val),
        "test": base["test"],
    }
    preset = PRESETS[d.dataset]
    tasks = tuple(d.tasks)
    weights = getattr(train, "class_weights", {}) or {}
    spec = TaskSpec(
        tasks=tasks,
        channels={t: train.task_channels[t] for t in tasks},
        kinds={t: task_kind(preset, t) for t in tasks},
        lambdas={t: float(cfg.train.lambdas.get(t, 1.0)) for t in tasks},
        preset=preset,
        class_weights={t: weights.get(t) for t in tasks},
    )
    return splits, spec


def augmenter(cfg, dataset):
    """The training augmentation of `cfg.data` (None when off)."""
    if not cfg.data.augment:
        return None
    crop = tuple(cfg.data.crop) if cfg.data.crop else None
    flip_x = cfg.parity.normals_encoding != "official_raw"
    pad = getattr(dataset, "pad_value", 0.0)
    return lambda sample, rng: augment(
        sample, crop=crop, rng=rng, pad_value=pad, flip_normal_x=flip_x
    )
