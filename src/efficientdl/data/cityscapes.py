"""CityScapes 2-task in the official AdaShare formatted release, from a local root.

`<root>/cityscape.json` = {split: [[img.npy, depth.npy, label_2.npy, label_7.npy,
label_19.npy], ...]}; image float RGB in [0, 1] [H, W, 3] (converted to BGR·255 minus the
Deeplab mean [code]), depth float [H, W, 1] with 0 = invalid, labels int [H, W] with −1 = ignore
(remapped to 255).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from efficientdl.core.errors import ConfigError
from efficientdl.data.cache import DatasetFormatError
from efficientdl.data.dense_io import (
    DenseDataset,
    bgr_normalize,
    read_npy,
    read_split_json,
)

JSON = "cityscape.json"
LABEL_SETS = {2: 2, 7: 3, 19: 4}  # number of classes → position of its label file in an entry


class CityScapes(DenseDataset):
    """Split 'train' or 'test' of CityScapes; tasks seg (`num_classes` = 19, 7 or 2) and depth."""

    NAME = "CityScapes"
    ENTRY_WIDTH = 5

    def __init__(
        self, root, split: str = "train", *, tasks=("seg", "depth"), num_classes: int = 19
    ) -> None:
        if root is None:
            raise ConfigError("CityScapes needs data.root: the folder holding cityscape.json")
        if num_classes not in LABEL_SETS:
            raise ConfigError(f"num_classes must be one of {sorted(LABEL_SETS)}, got {num_classes}")
        self.TASK_CHANNELS = {"seg": num_classes, "depth": 1}
        self.num_classes = num_classes
        super().__init__(root, split, tasks, read_split_json(Path(root) / JSON))

    def load(self, files: list[Path]) -> dict:
        image = read_npy(files[0]).astype(np.float32)
        if image.ndim != 3 or image.shape[-1] != 3:
            raise DatasetFormatError(f"{files[0]}: expected an [H, W, 3] image, got {image.shape}")
        out = {"image": bgr_normalize(image * 255.0)}
        if "seg" in self.tasks:
            label = read_npy(files[LABEL_SETS[self.num_classes]]).astype(np.int64)
            out["seg"] = np.where(label < 0, 255, label).reshape(image.shape[:2])
        if "depth" in self.tasks:
            d = read_npy(files[1]).astype(np.float32).reshape(1, *image.shape[:2])
            out["depth"], out["depth_mask"] = d, d[0] > 0
        return out
