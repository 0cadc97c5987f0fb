"""CIFAR-10 from the python pickle batches (`cifar-10-batches-py/`), with the standard
training augmentation (zero-pad 4, random 32×32 crop, horizontal flip) on normalised batches.

Each batch is a pickled dict of bytes keys, numpy arrays and lists; it is read as data only
(`safe_pickle`): a file that asks for anything else is refused and nothing in it runs.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import torch

from efficientdl.core.errors import ConfigError, DataError
from efficientdl.data.arrays import ArrayDataset
from efficientdl.data.cache import (
    DatasetFormatError,
    DatasetNotFoundError,
    not_found,
    root_hint,
    search_dirs,
)
from efficientdl.data.safe_pickle import load_data_pickle

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)
FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCHES = ("test_batch",)
CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


def find_cifar10(root: str | os.PathLike | None = None) -> Path:
    """The `cifar-10-batches-py` folder: `root` itself or `root/cifar-10-batches-py`
    (default root: the data cache, also `data_home()/cifar10/`)."""
    dirs = [p for d in search_dirs(root, ("cifar10",)) for p in (d / FOLDER, d)]
    for folder in dirs:
        if all((folder / name).is_file() for name in TRAIN_BATCHES + TEST_BATCHES):
            return folder
    fix = f"extract cifar-10-python.tar.gz and {root_hint('cifar10', fetchable=False)}"
    raise not_found("CIFAR-10", "data_batch_1..5 + test_batch", dirs, fix)


def read_cifar_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images `[n, 3, 32, 32]` (R, G, B planes) and int64 labels `[n]` of one batch file."""
    path = Path(path)
    if not path.is_file():
        hint = root_hint("cifar10", fetchable=False)
        raise DatasetNotFoundError(f"{path} does not exist; {hint}")
    fix = "replace it with the file from cifar-10-python.tar.gz"
    try:
        batch = load_data_pickle(path.read_bytes(), path, encoding="bytes")
        if not isinstance(batch, dict):
            raise TypeError(f"holds a {type(batch).__name__}, not a dict")
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except DataError as err:  # refused as unsafe
        raise type(err)(f"{err}; {fix}") from err
    except (
        OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError, IndexError,
        AttributeError,
    ) as err:  # fmt: skip
        raise DatasetFormatError(
            f"{path}: not a CIFAR-10 python batch ({type(err).__name__}: {err}); {fix}"
        ) from err
    if data.ndim != 2 or data.shape[1] != 3072 or data.shape[0] != labels.shape[0]:
        raise DatasetFormatError(
            f"{path}: expected data uint8 [n, 3072] and n labels, got {data.shape}, "
            f"{labels.shape}; {fix}"
        )
    return data.reshape(-1, 3, 32, 32), labels


def _stats(device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(CIFAR10_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD, device=device).view(1, 3, 1, 1)
    return mean, std


def normalize_cifar(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 `[n, 3, H, W]` → float32 (x/255 − mean)/std per channel."""
    mean, std = _stats(pixels.device)
    return pixels.to(torch.float32).div_(255.0).sub_(mean).div_(std)


def random_crop_flip(
    x: torch.Tensor,
    generator: torch.Generator | None = None,
    *,
    padding: int = 4,
    fill: torch.Tensor | float = 0.0,
) -> torch.Tensor:
    """Pad `x` `[B, C, H, W]` by `padding` with `fill` (per channel or scalar), crop a random
    H×W window and flip it horizontally with p = 0.5, independently per sample.

    Random draws, in this order, from `generator`: row offsets `randint(0, 2p+1, (B,))`,
    column offsets (same), then `rand(B) < 0.5` for the flips.
    """
    b, c, h, w = x.shape
    device = generator.device if generator is not None else torch.device("cpu")
    span = 2 * padding + 1
    top = torch.randint(0, span, (b,), generator=generator, device=device).to(x.device)
    left = torch.randint(0, span, (b,), generator=generator, device=device).to(x.device)
    flip = (torch.rand(b, generator=generator, device=device) < 0.5).to(x.device)
    fill_t = torch.as_tensor(fill, dtype=x.dtype, device=x.device).reshape(-1, 1, 1)
    padded = fill_t.expand(c, h + 2 * padding, w + 2 * padding).repeat(b, 1, 1, 1)
    padded[:, :, padding : padding + h, padding : padding + w] = x
    cols = torch.arange(w, device=x.device)
    cols = torch.where(flip[:, None], w - 1 - cols, cols) + left[:, None]  # [B, W]
    rows = top[:, None] + torch.arange(h, device=x.device)  # [B, H]
    batch = torch.arange(b, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # [B, H, W, C]
    return out.permute(0, 3, 1, 2).contiguous()


def cifar10_augment(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """The CIFAR-10 training augmentation on a *normalised* batch `[B, 3, 32, 32]`: padding uses
    the normalised value of a 0 pixel, (0 − mean)/std, so it equals padding with 0 before
    normalisation."""
    mean, std = _stats(x.device)
    fill = (-mean / std).reshape(3).to(x.dtype)
    return random_crop_flip(x, generator, padding=4, fill=fill)


def load_cifar10(
    split: str, *, root: str | os.PathLike | None = None, augment: bool = True
) -> ArrayDataset:
    """CIFAR-10 `split` as normalised float32 `[n, 3, 32, 32]`; the training split gets
    `cifar10_augment` in `get_batch` unless `augment=False`."""
    if split not in ("train", "test"):
        raise ConfigError(f"split must be 'train' or 'test', got {split!r}")
    folder = find_cifar10(root)
    names = TRAIN_BATCHES if split == "train" else TEST_BATCHES
    parts = [read_cifar_batch(folder / name) for name in names]
    pixels = torch.from_numpy(np.concatenate([p[0] for p in parts]))
    labels = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    return ArrayDataset(
        normalize_cifar(pixels),
        labels,
        augment=cifar10_augment if split == "train" and augment else None,
        name=f"cifar10-{split}",
        num_classes=10,
    )
