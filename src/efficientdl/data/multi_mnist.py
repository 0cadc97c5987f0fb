"""Multi-MNIST / Multi-Fashion (the AdaShare multi-task benchmark): two items overlaid on a 36×36
canvas.

Item i of a split puts source image i at the top-left (rows/cols 0–27) and its partner (from a
seeded permutation) at the bottom-right (rows/cols 8–35), combines them by pixel-wise max and
resizes to 28×28 (bilinear, antialias). Tasks `left` and `right` (10 classes each); `mixed` pairs
a digit (left) with a garment (right). Sources: the fetched MNIST (train = its first 50k, val =
its last 10k, the pickle's own split) and Fashion-MNIST (val = 10k of train by seed).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from efficientdl.core.errors import ConfigError
from efficientdl.data.fashion_mnist import find_fashion_mnist
from efficientdl.data.idx import read_idx_split
from efficientdl.data.mnist import load_mnist_bytes

VARIANTS = ("mnist", "fashion", "mixed")
SPLITS = ("train", "val", "test")
CANVAS, OFFSET, VAL_SIZE = 36, 8, 10_000


def _source(kind: str, split: str, root, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images [n, 28, 28] and labels of MNIST or Fashion-MNIST for train/val/test."""
    part = "test" if split == "test" else "train"
    if kind == "mnist":
        x, y = load_mnist_bytes(part, root=root)
        if split == "test":
            return x, y
        keep = slice(None, -VAL_SIZE) if split == "train" else slice(-VAL_SIZE, None)
        return x[keep], y[keep]
    x, y = read_idx_split(find_fashion_mnist(root), part, dataset="fashion-mnist")
    if split == "test":
        return x, y
    perm = np.random.default_rng([seed, 7]).permutation(len(x))
    idx = np.sort(perm[VAL_SIZE:] if split == "train" else perm[:VAL_SIZE])
    return x[idx], y[idx]


def overlay(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """The 28×28 float32 image in [0, 1] of two uint8 28×28 items (top-left, bottom-right)."""
    canvas = np.zeros((2, CANVAS, CANVAS), dtype=np.float32)
    canvas[0, :28, :28] = left / 255.0
    canvas[1, OFFSET:, OFFSET:] = right / 255.0
    both = torch.from_numpy(canvas.max(0))[None, None]
    small = F.interpolate(both, size=(28, 28), mode="bilinear", align_corners=False, antialias=True)
    return small[0].numpy()


class MultiMNIST:
    """Split 'train', 'val' or 'test' of Multi-MNIST (`variant` mnist, fashion or mixed).

    Items: `image` float32 [1, 28, 28] normalised (x − 0.5)/0.5, `left`, `right` int64 labels.
    """

    task_channels = {"left": 10, "right": 10}
    tasks = ("left", "right")
    pad_value = np.array([-1.0], dtype=np.float32)

    def __init__(self, root=None, split: str = "train", *, variant: str = "mnist", seed: int = 0):
        if variant not in VARIANTS:
            raise ConfigError(f"Multi-MNIST variant must be one of {VARIANTS}, got {variant!r}")
        if split not in SPLITS:
            raise ConfigError(f"Multi-MNIST split must be one of {SPLITS}, got {split!r}")
        kinds = {"mnist": ("mnist", "mnist"), "fashion": ("fashion", "fashion")}.get(
            variant, ("mnist", "fashion")
        )
        self.left_x, self.left_y = _source(kinds[0], split, root, seed)
        self.right_x, self.right_y = _source(kinds[1], split, root, seed)
        n = min(len(self.left_x), len(self.right_x))
        self.left_x, self.left_y = self.left_x[:n], self.left_y[:n]
        self.partner = np.random.default_rng([seed, SPLITS.index(split)]).permutation(
            len(self.right_x)
        )[:n]
        self.split, self.variant = split, variant

    def __len__(self) -> int:
        return len(self.left_x)

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        j = int(self.partner[index])
        image = overlay(self.left_x[index], self.right_x[j])
        return {
            "image": (image - 0.5) / 0.5,
            "left": np.int64(self.left_y[index]),
            "right": np.int64(self.right_y[j]),
        }
