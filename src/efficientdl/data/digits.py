"""The scikit-learn 8×8 digits (1,797 images, 10 classes) from `digits.csv.gz`, which ships in
the scikit-learn wheel as `sklearn/datasets/data/digits.csv.gz` (scikit-learn itself is not
needed). Each CSV row holds 64 pixel values 0..16 and the label.

There is no official split: a stratified, seed-0 split puts ⌊n_c/3⌉ images of each class into
'test' and the rest (the 2/3 pool) into 'train'.
"""

from __future__ import annotations

import functools
import gzip
import os
import zlib
from pathlib import Path

import numpy as np
import torch

from efficientdl.core.errors import ConfigError
from efficientdl.data.arrays import ArrayDataset
from efficientdl.data.cache import (
    DatasetFormatError,
    DatasetNotFoundError,
    not_found,
    refetch_hint,
    root_hint,
    search_dirs,
)

CSV_NAME = "digits.csv.gz"
SPLIT_SEED = 0


def find_digits(root: str | os.PathLike | None = None) -> Path:
    """`digits.csv.gz` in `root` or `root/digits` (default root: the data cache); `root` may be
    the file itself."""
    if root is not None and Path(root).expanduser().is_file():
        return Path(root).expanduser()
    dirs = search_dirs(root, ("digits",))
    for folder in dirs:
        if (folder / CSV_NAME).is_file():
            return folder / CSV_NAME
    raise not_found("digits", CSV_NAME, dirs, root_hint("digits", fetchable=True))


def parse_digits(payload: bytes, path: Path, *, fix: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of the gzip CSV `payload` (the content of `path`), checked whole; `fix`
    ends the message of the DatasetFormatError raised for a damaged file."""
    hint = f"; {fix}" if fix else ""
    try:
        text = gzip.decompress(payload).decode("ascii")
        table = np.array(
            [[int(v) for v in line.split(",")] for line in text.splitlines() if line.strip()],
            dtype=np.int64,
        )
    except (OSError, EOFError, zlib.error, UnicodeDecodeError, ValueError) as err:
        raise DatasetFormatError(f"{path}: not a gzip CSV of integers ({err}){hint}") from err
    if table.ndim != 2 or table.shape[1] != 65 or len(table) == 0:
        raise DatasetFormatError(
            f"{path}: expected rows of 64 pixels + label, got {table.shape}{hint}"
        )
    pixels, labels = table[:, :64], table[:, 64]
    if pixels.min() < 0 or pixels.max() > 16 or labels.min() < 0 or labels.max() > 9:
        raise DatasetFormatError(f"{path}: pixels must be 0..16 and labels 0..9{hint}")
    return pixels.reshape(-1, 8, 8).astype(np.uint8), labels


@functools.lru_cache(maxsize=2)
def _read(path_str: str, _mtime_ns: int) -> tuple[np.ndarray, np.ndarray]:
    path = Path(path_str)
    return parse_digits(path.read_bytes(), path, fix=refetch_hint("digits"))


def read_digits(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """All images uint8 `[n, 8, 8]` (values 0..16) and int64 labels `[n]` of a digits CSV."""
    path = Path(path)
    if not path.is_file():
        raise DatasetNotFoundError(f"{path} does not exist; {root_hint('digits', fetchable=True)}")
    return _read(str(path.resolve()), path.stat().st_mtime_ns)


def stratified_split(labels: np.ndarray, *, seed: int = SPLIT_SEED) -> dict[str, np.ndarray]:
    """{'train', 'test'} sorted indices: per class, a seeded permutation's first round(n_c/3)
    go to test."""
    gen = torch.Generator().manual_seed(seed)
    test = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        perm = torch.randperm(len(idx), generator=gen).numpy()
        test.append(idx[perm[: int(round(len(idx) / 3))]])
    test_idx = np.sort(np.concatenate(test))
    train_idx = np.setdiff1d(np.arange(len(labels)), test_idx)
    return {"train": train_idx, "test": test_idx}


def load_digits(
    split: str, *, root: str | os.PathLike | None = None, normalize: str = "standard"
) -> ArrayDataset:
    """Digits `split` ('train' = the 2/3 pool, 'test' = the held-out third) as float32
    `[n, 1, 8, 8]`. `normalize='standard'`: (x/16 − 0.5)/0.5 in [−1, 1]; 'none': x/16."""
    if split not in ("train", "test"):
        raise ConfigError(f"split must be 'train' or 'test', got {split!r}")
    if normalize not in ("standard", "none"):
        raise ConfigError(f"digits: normalize must be 'standard' or 'none', got {normalize!r}")
    pixels, labels = read_digits(find_digits(root))
    idx = stratified_split(labels)[split]
    x = torch.from_numpy(pixels[idx].astype(np.float32) / 16.0).unsqueeze(1)
    if normalize == "standard":
        x = (x - 0.5) / 0.5
    return ArrayDataset(x, torch.from_numpy(labels[idx]), name=f"digits-{split}", num_classes=10)
