"""Shared reading code of the real multi-task dense datasets of AdaShare (NYUv2, CityScapes,
Tiny-Taskonomy): split json files, PNG/NPY readers with clear errors (`.npy` files are read
without pickles, so they hold data only), the Deeplab image normalisation (BGR order, mean
subtraction, no /255) and the common dataset skeleton."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from efficientdl.core.errors import ConfigError
from efficientdl.data.cache import DatasetFormatError, DatasetNotFoundError

BGR_MEAN = np.array([104.008, 116.669, 122.679], dtype=np.float32)


def need(path: Path, what: str) -> Path:
    """`path` if it exists, else DatasetNotFoundError naming it and what it should hold."""
    if not path.exists():
        raise DatasetNotFoundError(
            f"{path} does not exist ({what}); datasets are never downloaded: pass "
            "--set data.root=DIR pointing at the formatted release"
        )
    return path


def read_png(path: Path) -> np.ndarray:
    """A PNG as a numpy array (uint8 or uint16; [H, W] or [H, W, 3]) via Pillow."""
    from PIL import Image

    need(path, "a PNG of the dataset")
    try:
        with Image.open(path) as image:
            if image.mode == "I;16":
                return np.array(image, dtype=np.uint16)
            if image.mode == "I":
                return np.array(image).astype(np.int64)
            return np.array(image.convert("RGB") if image.mode in ("P", "RGBA") else image)
    except (OSError, ValueError, SyntaxError) as err:  # Pillow raises all three
        raise DatasetFormatError(f"{path}: not a readable PNG ({err})") from err


def read_npy(path: Path) -> np.ndarray:
    """A .npy array (no pickles)."""
    need(path, "a .npy array of the dataset")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:  # ValueError also for a pickled object array
        raise DatasetFormatError(f"{path}: not a readable .npy array ({err})") from err


def read_split_json(path: Path) -> dict[str, list[list[str]]]:
    """{split: [[file, ...], ...]} from an official split json."""
    need(path, "the split file of the formatted release")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DatasetFormatError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise DatasetFormatError(f"{path}: expected {{split: [[paths...], ...]}}")
    return data


def bgr_normalize(rgb: np.ndarray) -> np.ndarray:
    """[H, W, 3] RGB in 0–255 units → [3, H, W] float32 BGR minus the Deeplab mean [code]."""
    bgr = np.asarray(rgb, dtype=np.float32)[..., ::-1]
    return np.ascontiguousarray((bgr - BGR_MEAN).transpose(2, 0, 1))


class DenseDataset:
    """Skeleton: `entries` (one list of files per sample), task checks, the split halves.

    Subclasses set `TASK_CHANNELS`, `NAME`, `ENTRY_WIDTH` (files per sample) and implement
    `load(files) -> dict`. `split_names`: every split the on-disk layout defines.
    """

    TASK_CHANNELS: dict[str, int] = {}
    NAME = "dataset"
    ENTRY_WIDTH = 1
    pad_value = -BGR_MEAN  # the image value of a raw-zero pixel (augmentation padding)

    def __init__(self, root, split: str, tasks, splits: dict[str, list]) -> None:
        unknown = [t for t in tasks if t not in self.TASK_CHANNELS]
        if unknown or not tasks:
            raise ConfigError(
                f"{self.NAME}: unknown tasks {unknown}; expected some of {list(self.TASK_CHANNELS)}"
            )
        if split not in splits:
            raise ConfigError(f"{self.NAME}: split must be one of {sorted(splits)}, got {split!r}")
        self.root = Path(os.fspath(root))
        self.split, self.tasks, self.split_names = split, tuple(tasks), tuple(splits)
        self.task_channels = {t: self.TASK_CHANNELS[t] for t in self.tasks}
        self.entries = splits[split]
        for entry in self.entries:
            if not isinstance(entry, list) or len(entry) != self.ENTRY_WIDTH:
                raise DatasetFormatError(
                    f"{self.NAME}: split {split!r} entry {entry!r} should list "
                    f"{self.ENTRY_WIDTH} files"
                )
        self.official_halves = None
        if split == "train" and "train1" in splits and "train2" in splits:
            position = {tuple(e): i for i, e in enumerate(self.entries)}
            try:
                self.official_halves = tuple(
                    [position[tuple(e)] for e in splits[h]] for h in ("train1", "train2")
                )
            except KeyError as err:
                raise DatasetFormatError(
                    f"{self.NAME}: a train1/train2 entry is not in 'train': {list(err.args[0])}"
                ) from err

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self.entries):
            raise IndexError(f"index {index} out of range for {len(self.entries)} samples")
        out = self.load([self.root / p for p in self.entries[index]])
        keep = {"image", *self.tasks, *(f"{t}_mask" for t in self.tasks)}
        return {k: v for k, v in out.items() if k in keep}

    def load(self, files: list[Path]) -> dict:
        raise NotImplementedError
