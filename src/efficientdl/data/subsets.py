"""Small-data helpers: fixed, seeded per-class subsets and a random-shift augmentation."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from efficientdl.core.errors import ConfigError
from efficientdl.data.arrays import ArrayDataset


def per_class_indices(labels: torch.Tensor, per_class: int, *, seed: int) -> torch.Tensor:
    """Sorted indices of `per_class` samples of every class, drawn without replacement by a
    generator seeded with `seed` (one permutation per class, in class order)."""
    labels = torch.as_tensor(labels)
    if not isinstance(per_class, int) or per_class < 1:
        raise ConfigError(f"per_class must be a positive int, got {per_class!r}")
    gen = torch.Generator().manual_seed(seed)
    chosen = []
    for c in torch.unique(labels).tolist():
        idx = (labels == c).nonzero().flatten()
        if len(idx) < per_class:
            raise ConfigError(f"class {c} has {len(idx)} samples, fewer than per_class={per_class}")
        chosen.append(idx[torch.randperm(len(idx), generator=gen)[:per_class]])
    return torch.cat(chosen).sort().values


def subset(dataset: ArrayDataset, indices: torch.Tensor, *, name: str | None = None):
    """The samples at `indices` as a new ArrayDataset (same augmentation and class count)."""
    idx = torch.as_tensor(indices, dtype=torch.int64)
    return ArrayDataset(
        dataset.images[idx],
        dataset.labels[idx],
        augment=dataset.augment,
        name=name or f"{dataset.name}[{len(idx)}]",
        num_classes=dataset.num_classes,
    )


def random_shift(
    x: torch.Tensor, generator: torch.Generator | None = None, *, padding: int, fill: float = 0.0
) -> torch.Tensor:
    """Pad `x` `[B, C, H, W]` by `padding` with `fill` and crop a random H×W window per sample
    (offsets from `randint(0, 2·padding+1, (2, B))` of `generator`); no flips."""
    if padding == 0:
        return x
    b, _, h, w = x.shape
    offsets = torch.randint(0, 2 * padding + 1, (2, b), generator=generator).tolist()
    padded = F.pad(x, (padding,) * 4, value=fill)
    return torch.stack(
        [padded[i, :, t : t + h, s : s + w] for i, (t, s) in enumerate(zip(*offsets))]
    )
