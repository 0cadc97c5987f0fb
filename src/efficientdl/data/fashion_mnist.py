"""Fashion-MNIST from IDX files (Debian package `dataset-fashion-mnist` or any user folder)."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import torch

from efficientdl.core.errors import ConfigError
from efficientdl.data.arrays import ArrayDataset
from efficientdl.data.cache import data_home, not_found, root_hint
from efficientdl.data.idx import idx_split_files, read_idx_split
from efficientdl.data.mnist import MNIST_MEAN, MNIST_STD, to_tensor

SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
_SUBDIRS = ("fashion-mnist", "FashionMNIST/raw")
_NORMALIZE = ("mnist", "fmnist", "none")


def _candidates(root: str | os.PathLike | None) -> list[Path]:
    if root is not None:
        base = Path(root).expanduser()
        return [base, *(base / sub for sub in _SUBDIRS)]
    return [data_home() / "fashion-mnist", SYSTEM_DIR]


def find_fashion_mnist(root: str | os.PathLike | None = None) -> Path:
    """The folder holding the four Fashion-MNIST IDX files.

    With `root`: root itself, `root/fashion-mnist` or `root/FashionMNIST/raw`; without: the data
    cache `data_home()/fashion-mnist`, then `/usr/share/datasets/fashion-mnist`.
    """
    dirs = _candidates(root)
    for folder in dirs:
        if idx_split_files(folder, "train") and idx_split_files(folder, "test"):
            return folder
    raise not_found("Fashion-MNIST", "train/t10k *-idx?-ubyte[.gz] files", dirs,
                    root_hint("fashion-mnist", fetchable=True))  # fmt: skip


@functools.lru_cache(maxsize=4)
def _pixel_stats(folder: Path, _mtime_ns: int) -> tuple[float, float]:
    pixels, _ = read_idx_split(folder, "train", dataset="fashion-mnist")
    counts = np.bincount(pixels.reshape(-1), minlength=256).astype(np.float64)
    values = np.arange(256, dtype=np.float64) / 255.0
    mean = float((counts * values).sum() / counts.sum())
    var = float((counts * (values - mean) ** 2).sum() / counts.sum())
    return mean, var**0.5


def fashion_mnist_stats(root: str | os.PathLike | None = None) -> tuple[float, float]:
    """Mean and std of the training pixels scaled /255 (what `normalize='fmnist'` uses)."""
    folder = find_fashion_mnist(root)
    files = idx_split_files(folder, "train")
    return _pixel_stats(folder, files[0].stat().st_mtime_ns if files else 0)


def load_fashion_mnist(
    split: str, *, root: str | os.PathLike | None = None, normalize: str = "mnist"
) -> ArrayDataset:
    """Fashion-MNIST `split` as float32 `[n, 1, 28, 28]`.

    `normalize`: 'mnist' (the official code's constants 0.1307/0.3081), 'fmnist' (mean/std of
    this training set) or 'none' (x = byte/255).
    """
    if split not in ("train", "test"):
        raise ConfigError(f"split must be 'train' or 'test', got {split!r}")
    if normalize not in _NORMALIZE:
        raise ConfigError(
            f"fashion-mnist: normalize must be one of {_NORMALIZE}, got {normalize!r}"
        )
    folder = find_fashion_mnist(root)
    pixels, labels = read_idx_split(folder, split, dataset="fashion-mnist")
    stats: tuple[float | None, float | None] = (None, None)
    if normalize == "mnist":
        stats = (MNIST_MEAN, MNIST_STD)
    elif normalize == "fmnist":
        stats = fashion_mnist_stats(folder)
    images = to_tensor(pixels, mean=stats[0], std=stats[1])
    return ArrayDataset(images, torch.tensor(labels), name=f"fashion-mnist-{split}", num_classes=10)
