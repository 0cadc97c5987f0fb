"""Tiny-Taskonomy (AdaShare spec §6.3, layout as far as known), from a local root.

`<root>/taskonomy.json` = {split: [[rgb, segment_semantic, normal, depth_zbuffer, keypoints2d,
edge_texture], ...]} (PNG paths; splits train, train1, train2, test_small, test), plus the
optional `<root>/semseg_prior_factor.npy` (17 class weights). Without the json, files
`<root>/<domain>/point_<i>_view_<j>_domain_<domain>.png` are indexed as one split `all`.
Preprocessing [code]: everything resized to 256² with nearest; seg x → max(x, 1) − 1 (17
classes); normals v/255 → [−1, 1]; depth (16-bit) d → log(1 + d)/log(2^16), valid d < 64,500;
keypoints k/2^16 clipped to [0, 0.005] and edges e/2^16 clipped to [0, 0.08], both → [−1, 1].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from efficientdl.data.dense_io import (
    DenseDataset,
    bgr_normalize,
    need,
    read_npy,
    read_png,
    read_split_json,
)
from efficientdl.data.multitask import nearest_index

JSON = "taskonomy.json"
PRIOR = "semseg_prior_factor.npy"
DOMAINS = ("rgb", "segment_semantic", "normal", "depth_zbuffer", "keypoints2d", "edge_texture")
TASK_DOMAIN = {"seg": 1, "normal": 2, "depth": 3, "keypoint": 4, "edge": 5}
SIZE = 256
DEPTH_VALID = 64_500


def resize_nearest(array: np.ndarray, size: int = SIZE) -> np.ndarray:
    """[H, W(, C)] → [size, size(, C)] with `F.interpolate(mode='nearest')` index mapping."""
    rows, cols = nearest_index(size, array.shape[0]), nearest_index(size, array.shape[1])
    return array[rows][:, cols]


def to_unit_range(raw: np.ndarray, clip: float) -> np.ndarray:
    """raw/2^16 clipped to [0, clip], mapped linearly to [−1, 1] (keypoints, edges)."""
    x = np.clip(raw.astype(np.float32) / 2.0**16, 0.0, clip)
    return (x / clip * 2.0 - 1.0).astype(np.float32)


def _folder_index(root: Path) -> dict[str, list[list[str]]]:
    rgb = need(root / "rgb", "the Taskonomy rgb/ folder")
    stems = sorted(p.name[: -len("_domain_rgb.png")] for p in rgb.glob("point_*_domain_rgb.png"))
    return {"all": [[f"{d}/{s}_domain_{d}.png" for d in DOMAINS] for s in stems]}


class Taskonomy(DenseDataset):
    """A split of Tiny-Taskonomy; tasks seg (17), normal (3), depth, keypoint, edge (1 each),
    every dense target with a `<task>_mask` (depth: d < 64,500; others all valid)."""

    TASK_CHANNELS = {"seg": 17, "normal": 3, "depth": 1, "keypoint": 1, "edge": 1}
    NAME = "Taskonomy"
    ENTRY_WIDTH = len(DOMAINS)

    def __init__(self, root, split: str = "train", *, tasks=tuple(TASK_DOMAIN)) -> None:
        if root is None:
            raise ValueError("Taskonomy needs data.root: the folder holding taskonomy.json")
        path = Path(root) / JSON
        splits = read_split_json(path) if path.is_file() else _folder_index(Path(root))
        super().__init__(root, split, tasks, splits)
        prior = Path(root) / PRIOR
        self.class_weights = {}
        if "seg" in self.tasks and prior.is_file():
            weights = read_npy(prior).astype(np.float32).reshape(-1)
            if weights.shape != (17,):
                raise ValueError(f"{prior}: expected 17 class weights, got {weights.shape}")
            import torch

            self.class_weights["seg"] = torch.from_numpy(weights)

    def load(self, files: list[Path]) -> dict:
        rgb = resize_nearest(read_png(files[0]))[..., :3]
        out = {"image": bgr_normalize(rgb)}
        ones = np.ones((SIZE, SIZE), dtype=bool)
        for task in self.tasks:
            raw = resize_nearest(read_png(files[TASK_DOMAIN[task]]))
            if task == "seg":
                raw = raw[..., 0] if raw.ndim == 3 else raw
                out["seg"] = np.maximum(raw.astype(np.int64), 1) - 1
                continue
            if task == "normal":
                out["normal"] = (raw[..., :3].astype(np.float32) / 255.0 * 2.0 - 1.0).transpose(
                    2, 0, 1
                )
                mask = ones
            elif task == "depth":
                d = raw.astype(np.float64)
                out["depth"] = (np.log1p(d) / np.log(2.0**16)).astype(np.float32)[None]
                mask = d < DEPTH_VALID
            else:
                clip = 0.005 if task == "keypoint" else 0.08
                out[task] = to_unit_range(raw, clip)[None]
                mask = ones
            out[f"{task}_mask"] = mask
        return {k: np.ascontiguousarray(v) for k, v in out.items()}
