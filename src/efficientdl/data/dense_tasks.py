"""The multi-task dense-prediction datasets of AdaShare (registered as `dataset` entries that
build a dataset's own splits), the train/train1/train2/val/test splits of a run and the training
augmentation."""

from __future__ import annotations

import numpy as np

from efficientdl.core.errors import ConfigError
from efficientdl.core.registry import create, register
from efficientdl.data.cityscapes import CityScapes
from efficientdl.data.multi_mnist import MultiMNIST
from efficientdl.data.multitask import Memoized, Subset, augment, halves, split_off
from efficientdl.data.nyuv2 import NYUv2
from efficientdl.data.scenes import ProceduralScenes
from efficientdl.data.taskonomy import Taskonomy

SPLITS = ("train", "val", "test")


@register("dataset", "procedural", doc="procedural 3-D scenes (seg, normal, depth); splits")
def procedural(*, data, parity) -> dict:
    """{train, val, test} procedural scenes of `data.size` pixels, `data.num_*` each."""
    nums = {"train": data.num_train, "val": data.num_val, "test": data.num_test}
    tasks = tuple(data.tasks)
    return {
        s: ProceduralScenes(s, size=data.size, num=n, seed=data.scene_seed, tasks=tasks)
        for s, n in nums.items()
    }


def first(dataset, num: int | None, key: str):
    """The first `num` items of `dataset` (all when `num` is None); `key` names the config field
    in the error when the dataset is smaller."""
    if num is None:
        return dataset
    if not 0 < num <= len(dataset):
        raise ConfigError(f"config key '{key}': {num} not in 1..{len(dataset)} (the split's size)")
    return Subset(dataset, np.arange(num))


@register("dataset", "multi_mnist", doc="Multi-MNIST (left/right digit classification); splits")
def multi_mnist(*, data, parity) -> dict:
    """{train, val, test} of Multi-MNIST `data.variant`, split by `data.split_seed`; the first
    `data.num_*` pairs of each split when they are set."""
    return {
        s: first(
            MultiMNIST(data.root, s, variant=data.variant, seed=data.split_seed),
            getattr(data, f"num_{s}"),
            f"data.num_{s}",
        )
        for s in SPLITS
    }


@register("dataset", "nyu_v2", doc="NYU-v2 (seg, normal, depth); splits")
def nyu_v2(*, data, parity) -> dict:
    """{train, test} of NYU-v2 with normals in `parity.normals_encoding`."""
    enc = parity.normals_encoding
    tasks = tuple(data.tasks)
    return {s: NYUv2(data.root, s, tasks=tasks, normals_encoding=enc) for s in ("train", "test")}


@register("dataset", "cityscapes", doc="CityScapes (seg, depth); splits")
def cityscapes(*, data, parity) -> dict:
    """{train, test} of CityScapes."""
    return {s: CityScapes(data.root, s, tasks=tuple(data.tasks)) for s in ("train", "test")}


@register("dataset", "taskonomy", doc="Taskonomy (seg, normal, depth, keypoint, edge); splits")
def taskonomy(*, data, parity) -> dict:
    """{train, test} of Taskonomy, and val when its splits.csv has one."""
    tasks, weights = tuple(data.tasks), data.class_weights
    train = Taskonomy(data.root, "train", tasks=tasks, class_weights=weights)
    others = [s for s in ("val", "test") if s in train.split_names]
    return {"train": train} | {
        s: Taskonomy(data.root, s, tasks=tasks, class_weights=weights) for s in others
    }


def dense_splits(cfg) -> dict:
    """Splits train (minus val), train1, train2, val, test of `cfg.data` (the registered dataset
    `cfg.data.dataset`; val carved from train when the dataset has none)."""
    d = cfg.data
    base = create("dataset", d.dataset, data=d, parity=cfg.parity)
    train = base["train"]
    unknown = [t for t in d.tasks if t not in train.task_channels]
    if unknown:
        raise ConfigError(
            f"config key 'data.tasks': {unknown} not available in {d.dataset}; "
            f"known {list(train.task_channels)}"
        )
    return run_splits(base, d)


def run_splits(base: dict, data) -> dict:
    """Splits train (minus val), train1, train2, val, test of the datasets `base` ({train, test}
    and optionally val), each memoised with `data.cache`: val carved from train
    (`data.val_fraction`, seeded by `data.split_seed`) when there is none, and the weight and
    policy halves train1 / train2 the dataset's official lists when it has them, else a seeded
    halving."""
    train = base["train"]
    if data.cache:
        base = {k: Memoized(v) for k, v in base.items()}
    if "val" in base:
        rest, val = np.arange(len(base["train"])), None
    else:
        rest, val = split_off(len(base["train"]), data.val_fraction, data.split_seed)
    official = getattr(train, "official_halves", None)
    if official is not None:
        held = set() if val is None else set(val.tolist())
        h1, h2 = ([i for i in h if i not in held] for h in official)
    else:
        h1, h2 = halves(rest, data.split_seed)
    return {
        "train": Subset(base["train"], rest),
        "train1": Subset(base["train"], h1),
        "train2": Subset(base["train"], h2),
        "val": base["val"] if val is None else Subset(base["train"], val),
        "test": base["test"],
    }


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
