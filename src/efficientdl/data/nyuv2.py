"""NYUv2 in the official AdaShare formatted release, from a local root.

`<root>/nyu_v2_3task.json` = {"train": [[img, seg, normal, depth], ...], "test": [...],
optionally "train1"/"train2"}; `img/NNNN.png` RGB 8-bit, `seg/NNNN.png` 8-bit classes 0…39 with
255 = ignore, `normal_mask/NNNN.png` RGB 8-bit ≈ (n + 1)/2·255 with a channel of 255 marking an
invalid pixel, `depth/NNNN.npy` float32 metres with 0 = invalid. Without the json the four
folders are indexed by file id as one split `all`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from efficientdl.core.errors import ConfigError
from efficientdl.data.dense_io import (
    DenseDataset,
    bgr_normalize,
    read_npy,
    read_png,
    read_split_json,
)

JSON = "nyu_v2_3task.json"
FOLDERS = ("img", "seg", "normal_mask", "depth")
ENCODINGS = ("unit", "official_raw")


def decode_normals(rgb: np.ndarray, encoding: str = "unit") -> tuple[np.ndarray, np.ndarray]:
    """(normal [3, H, W] float32, valid [H, W]) from an 8-bit normal PNG [H, W, 3].

    'unit': n = 2v/255 − 1 renormalised, x = R (right), y = G, z = B; 'official_raw': the raw
    0–255 values in BGR order, as the official code trains on them (a quirk of that code). A
    channel equal
    to 255 marks the pixel invalid [code].
    """
    if encoding not in ENCODINGS:
        raise ConfigError(f"unknown normals encoding {encoding!r}; expected one of {ENCODINGS}")
    v = np.asarray(rgb, dtype=np.float32)
    valid = ~(np.asarray(rgb) == 255).any(-1)
    if encoding == "official_raw":
        return np.ascontiguousarray(v[..., ::-1].transpose(2, 0, 1)), valid
    n = 2.0 * v / 255.0 - 1.0
    n /= np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-12)
    n[~valid] = 0.0
    return np.ascontiguousarray(n.transpose(2, 0, 1)), valid


def _folder_index(root: Path) -> dict[str, list[list[str]]]:
    from efficientdl.data.dense_io import need

    ids = sorted(p.stem for p in need(root / "img", "the NYUv2 images img/NNNN.png").glob("*.png"))
    return {
        "all": [
            [f"img/{i}.png", f"seg/{i}.png", f"normal_mask/{i}.png", f"depth/{i}.npy"] for i in ids
        ]
    }


class NYUv2(DenseDataset):
    """Split 'train' or 'test' (or 'all' without the json) of NYUv2; tasks seg (40 classes),
    normal (3) and depth (1). Items: `image` [3, H, W] BGR minus mean, `seg` int64 [H, W],
    `normal` [3, H, W] + `normal_mask`, `depth` [1, H, W] + `depth_mask` (depth > 0)."""

    TASK_CHANNELS = {"seg": 40, "normal": 3, "depth": 1}
    NAME = "NYUv2"
    ENTRY_WIDTH = 4

    def __init__(
        self,
        root,
        split: str = "train",
        *,
        tasks=("seg", "normal", "depth"),
        normals_encoding: str = "unit",
    ) -> None:
        if root is None:
            raise ConfigError("NYUv2 needs data.root: the folder holding nyu_v2_3task.json")
        if normals_encoding not in ENCODINGS:
            raise ConfigError(
                f"unknown normals encoding {normals_encoding!r}; expected one of {ENCODINGS}"
            )
        path = Path(root) / JSON
        splits = read_split_json(path) if path.is_file() else _folder_index(Path(root))
        super().__init__(root, split, tasks, splits)
        self.normals_encoding = normals_encoding

    def load(self, files: list[Path]) -> dict:
        img, seg, normal, depth = files
        out = {"image": bgr_normalize(read_png(img)[..., :3])}
        if "seg" in self.tasks:
            out["seg"] = read_png(seg).astype(np.int64)
        if "normal" in self.tasks:
            out["normal"], out["normal_mask"] = decode_normals(
                read_png(normal)[..., :3], self.normals_encoding
            )
        if "depth" in self.tasks:
            d = read_npy(depth).astype(np.float32)
            d = d.reshape(1, *d.shape[-2:])
            out["depth"], out["depth_mask"] = d, d[0] > 0
        return out
