"""Multi-task dense datasets: subsets, memoisation, seeded splits, augmentation and collation.

A multi-task dataset has `__len__`, `__getitem__(i) -> dict` of numpy arrays (`image`, one entry
per task, optional `<task>_mask`), `tasks` and `task_channels`, and `pad_value` (the image value of
a raw-zero pixel, per channel). Segmentation uses 255 as ignore. `TaskDataset` gives a dataset of
your own that form.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from efficientdl.core.errors import ConfigError, DataError
from efficientdl.core.runtime import derive_seed

IGNORE = 255


def nearest_index(out_size: int, in_size: int) -> np.ndarray:
    """Source indices of `F.interpolate(mode='nearest')`: floor(i · in/out) in float32, clamped."""
    scale = np.float32(in_size / out_size)
    idx = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(idx, in_size - 1)


class Subset:
    """The items of `dataset` at `indices` (dataset attributes are forwarded)."""

    def __init__(self, dataset, indices: Sequence[int]) -> None:
        self.dataset = dataset
        self.indices = np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        return self.dataset[int(self.indices[i])]

    def __getattr__(self, name: str):
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


class Memoized:
    """Caches every item of `dataset` after its first read (for generated or small datasets)."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset
        self._items: dict[int, dict] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        if i not in self._items:
            self._items[i] = self.dataset[i]
        return self._items[i]

    def __getattr__(self, name: str):
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


def _as_array(value):
    """A sample entry as numpy (tensors moved to the CPU; float64 and Python floats → float32)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    value = np.asarray(value)
    return value.astype(np.float32) if value.dtype == np.float64 else value


class TaskDataset:
    """A dataset of your own as a multi-task dataset of the given `tasks`.

    Item i of `dataset` is `(image, {task: target, ...})` or a dict with `image` and one entry
    per task; `<task>_mask` entries (bool, [H, W]) are kept, anything else is dropped. The image
    is a float32 array [C, H, W]; tensors become numpy arrays, float64 values float32. An item
    without the target of a task raises a DataError naming the task (the first item is checked
    when the dataset is wrapped).
    """

    def __init__(self, dataset, tasks: Sequence[str], split: str = "train") -> None:
        self.dataset, self.tasks, self.split = dataset, tuple(tasks), split
        self.keys = ("image", *self.tasks, *(f"{t}_mask" for t in self.tasks))
        if len(dataset) == 0:
            raise DataError(f"the {split} dataset is empty")
        self[0]  # the first item is checked now, not at the first training step

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        item = self.dataset[i]
        where = f"{self.split} item {i}"
        if isinstance(item, tuple | list) and len(item) == 2 and isinstance(item[1], Mapping):
            item = {"image": item[0], **item[1]}
        if not isinstance(item, Mapping) or "image" not in item:
            raise DataError(
                f"{where}: expected (image, {{task: target}}) or a dict with 'image', "
                f"got {type(item).__name__}"
            )
        missing = [t for t in self.tasks if t not in item]
        if missing:
            have = sorted(str(k) for k in item if k != "image")
            raise DataError(f"{where} has no target for task {missing[0]!r} (it has {have})")
        out = {k: _as_array(item[k]) for k in self.keys if k in item}
        out["image"] = out["image"].astype(np.float32, copy=False)
        if out["image"].ndim != 3:
            raise DataError(f"{where}: image of shape {out['image'].shape}; expected [C, H, W]")
        return out


def split_off(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(rest, held-out) index arrays: ⌈fraction·n⌉ indices held out by a seeded permutation."""
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {fraction!r}")
    perm = np.random.default_rng(derive_seed(seed, "split")).permutation(n)
    k = int(np.ceil(fraction * n))
    return np.sort(perm[k:]), np.sort(perm[:k])


def halves(indices: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded halving of `indices` into train1 / train2 (AdaShare trains the network weights on
    train1 and the select policy on train2)."""
    perm = np.random.default_rng(derive_seed(seed, "halves")).permutation(np.asarray(indices))
    mid = len(perm) // 2
    return np.sort(perm[:mid]), np.sort(perm[mid:])


def collate(samples: list[dict]) -> dict[str, torch.Tensor]:
    """Stack a list of sample dicts into tensors (numbers become 1-D tensors)."""
    return {k: torch.from_numpy(np.stack([np.asarray(s[k]) for s in samples])) for k in samples[0]}


def _resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)[0].numpy()


def _resize_nearest(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    rows = nearest_index(size[0], array.shape[-2])
    cols = nearest_index(size[1], array.shape[-1])
    return array[..., rows, :][..., cols]


def _pad_value(key: str, array: np.ndarray, pad_value) -> np.ndarray | float:
    if key == "image":
        return np.asarray(pad_value, dtype=array.dtype).reshape(-1, 1, 1)
    if key == "seg":
        return IGNORE
    return 0  # masks pad with False, regression targets with 0


def augment(
    sample: dict,
    *,
    crop: tuple[int, int] | None,
    rng: np.random.Generator,
    pad_value=0.0,
    flip_normal_x: bool = True,
    scale: tuple[float, float] = (0.5, 1.5),
) -> dict:
    """Random scale s ~ U[0.5, 1.5) (⌊h·s⌋ × ⌊w·s⌋; bilinear image, nearest targets), horizontal
    flip (p = 0.5; normals' x negated), centre pad to at least `crop` (image with `pad_value`, seg
    with 255, masks False), uniform random crop [code]."""
    dense = {k: v for k, v in sample.items() if isinstance(v, np.ndarray) and v.ndim >= 2}
    h, w = sample["image"].shape[-2:]
    s = rng.uniform(*scale)
    size = (max(1, int(h * s)), max(1, int(w * s)))
    flip = rng.random() < 0.5
    out = dict(sample)
    for key, value in dense.items():
        value = _resize_image(value, size) if key == "image" else _resize_nearest(value, size)
        if flip:
            value = value[..., ::-1].copy()
            if key == "normal" and flip_normal_x:
                value[0] = -value[0]
        out[key] = value
    if crop is None:
        return out
    ch, cw = crop
    ph, pw = max(ch - size[0], 0), max(cw - size[1], 0)
    top, left = ph // 2, pw // 2
    H, W = size[0] + ph, size[1] + pw
    y0, x0 = int(rng.integers(0, H - ch + 1)), int(rng.integers(0, W - cw + 1))
    for key in dense:
        value = out[key]
        canvas = np.empty((*value.shape[:-2], H, W), dtype=value.dtype)
        canvas[...] = _pad_value(key, value, pad_value)
        canvas[..., top : top + size[0], left : left + size[1]] = value
        out[key] = np.ascontiguousarray(canvas[..., y0 : y0 + ch, x0 : x0 + cw])
    return out


class BatchStream:
    """Endless drop-last batches over a dataset, reshuffled per epoch, resumable exactly.

    The order of epoch e comes from a generator seeded by `derive_seed(seed, stream, e)`, the
    augmentation of batch b of epoch e by `derive_seed(seed, stream, e, b)`. `state()` /
    `load_state()` carry (epoch, position).
    """

    def __init__(self, dataset, batch_size: int, *, seed: int, stream: int, augment_fn=None):
        if len(dataset) < batch_size:
            raise ConfigError(
                f"a split of {len(dataset)} samples cannot fill one batch of {batch_size}"
            )
        self.dataset, self.batch_size = dataset, batch_size
        self.seed, self.stream, self.augment_fn = seed, stream, augment_fn
        self.epoch, self.position = 0, 0

    @property
    def batches_per_epoch(self) -> int:
        return len(self.dataset) // self.batch_size

    def state(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state(self, state: dict) -> None:
        self.epoch, self.position = state["epoch"], state["position"]

    def __next__(self) -> dict[str, torch.Tensor]:
        if self.position >= self.batches_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
        order = np.random.default_rng(derive_seed(self.seed, self.stream, self.epoch)).permutation(
            len(self.dataset)
        )
        b = self.position
        idx = order[b * self.batch_size : (b + 1) * self.batch_size]
        samples = [self.dataset[int(i)] for i in idx]
        if self.augment_fn is not None:
            rng = np.random.default_rng(derive_seed(self.seed, self.stream, self.epoch, b))
            samples = [self.augment_fn(s, rng) for s in samples]
        self.position += 1
        return collate(samples)

    def __iter__(self):
        return self


def batches(dataset, batch_size: int):
    """The dataset in order, as collated batches (the last one may be smaller)."""
    for start in range(0, len(dataset), batch_size):
        yield collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
