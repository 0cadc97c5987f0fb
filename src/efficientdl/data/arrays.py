"""An in-memory dataset of (image, label) tensors with an optional batch augmentation."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

Augment = Callable[[torch.Tensor, torch.Generator | None], torch.Tensor]


class ArrayDataset:
    """Images `[n, ...]` and int64 labels `[n]` held in memory.

    `augment(x, generator)` (if given) is applied by `get_batch` to the indexed batch; `__getitem__`
    always returns the stored, un-augmented sample.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        augment: Augment | None = None,
        name: str = "",
        num_classes: int | None = None,
    ) -> None:
        labels = torch.as_tensor(labels, dtype=torch.int64)
        if images.shape[0] != labels.shape[0]:
            raise ValueError(
                f"dataset {name!r}: {images.shape[0]} images but {labels.shape[0]} labels"
            )
        self.images = images
        self.labels = labels
        self.augment = augment
        self.name = name
        if num_classes is None:
            num_classes = int(labels.max()) + 1 if labels.numel() else 0
        self.num_classes = num_classes

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i], self.labels[i]

    def __repr__(self) -> str:
        shape = tuple(self.images.shape[1:])
        return f"ArrayDataset({self.name!r}, n={len(self)}, shape={shape}, augment={self.augment})"

    def get_batch(
        self,
        indices: torch.Tensor | Sequence[int],
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Images and labels at `indices`, with `augment(x, generator)` applied if set."""
        idx = torch.as_tensor(indices, dtype=torch.int64)
        x, y = self.images[idx], self.labels[idx]
        if self.augment is not None:
            x = self.augment(x, generator)
        return x, y
