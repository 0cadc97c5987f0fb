"""Tiny-Taskonomy (the AdaShare benchmark; layout as far as known), from a local root.

The root holds one of three layouts, tried in this order:

1. `taskonomy.json` = {split: [[rgb, segment_semantic, normal, depth_zbuffer, keypoints2d,
   edge_texture], ...]} (PNG paths relative to the root; splits train, train1, train2,
   test_small, test), the official AdaShare file.
2. `splits.csv` and the re-released per-building folders
   `<building>/<domain>/point_<i>_view_<j>_domain_<domain>.png` (domain: one of `DOMAINS`).
   `splits.csv` has one row `building,train,val,test` per building with 0/1 flags, the format
   of Taskonomy's `train_val_test_{tiny,medium,full}.csv` (copy it to `<root>/splits.csv`); a
   first row whose flags are not 0/1 (a header such as `id,train,val,test`) is skipped. Splits
   train, val, test = the views of their buildings, buildings in file order, views sorted by
   file name. A listed building without its folder, or without the folder of a needed domain,
   raises DatasetNotFoundError naming the path; a missing view file does when it is read.
3. Otherwise the folders `<domain>/point_<i>_view_<j>_domain_<domain>.png`, one split `all`.

With the seg task, `semseg_prior_factor.npy` (the 17 class weights of the official code) must be
in the root,
unless `class_weights=False` asks for unweighted cross-entropy on purpose.
Preprocessing [code]: everything resized to 256² with nearest; seg x → max(x, 1) − 1 (17
classes); normals v/255 → [−1, 1]; depth (16-bit) d → log(1 + d)/log(2^16), valid d < 64,500;
keypoints k/2^16 clipped to [0, 0.005] and edges e/2^16 clipped to [0, 0.08], both → [−1, 1].
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from efficientdl.core.errors import ConfigError
from efficientdl.data.cache import DatasetFormatError
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
SPLITS_CSV = "splits.csv"
BUILDING_SPLITS = ("train", "val", "test")
RGB_SUFFIX = "_domain_rgb.png"
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


def read_building_splits(path: Path) -> dict[str, list[str]]:
    """{train, val, test: [building, ...]} from a `building,train,val,test` 0/1 CSV (see above)."""
    splits = {s: [] for s in BUILDING_SPLITS}
    with open(need(path, "the building split file"), newline="") as handle:
        for line, row in enumerate(csv.reader(handle), 1):
            row = [cell.strip() for cell in row]
            flags_ok = len(row) == 4 and set(row[1:]) <= {"0", "1"}
            if (line == 1 and not flags_ok) or not any(row):
                continue
            if not flags_ok:
                raise DatasetFormatError(
                    f"{path}, line {line}: expected building,train,val,test with 0/1 flags, "
                    f"got {row}"
                )
            for split, flag in zip(BUILDING_SPLITS, row[1:]):
                if flag == "1":
                    splits[split].append(row[0])
    return splits


def _views(folder: Path, prefix: str, what: str) -> list[list[str]]:
    """One entry `[<prefix><domain>/<view>_domain_<domain>.png, ...]` per rgb view in `folder`."""
    rgb = need(folder / "rgb", what)
    stems = sorted(p.name[: -len(RGB_SUFFIX)] for p in rgb.glob(f"point_*{RGB_SUFFIX}"))
    if not stems:
        raise DatasetFormatError(f"{rgb}: no point_<i>_view_<j>{RGB_SUFFIX} files")
    return [[f"{prefix}{d}/{s}_domain_{d}.png" for d in DOMAINS] for s in stems]


def _building_index(root: Path, domains) -> dict[str, list[list[str]]]:
    """{train, val, test: entries} of the per-building layout, split by `<root>/splits.csv`."""
    buildings = read_building_splits(root / SPLITS_CSV)
    views = {}
    for b in dict.fromkeys(b for names in buildings.values() for b in names):
        need(root / b, f"the folder of building {b!r}, listed in {SPLITS_CSV}")
        for domain in domains:
            need(root / b / domain, f"the {domain} images of building {b!r}")
        views[b] = _views(root / b, f"{b}/", f"the rgb images of building {b!r}")
    return {split: [e for b in names for e in views[b]] for split, names in buildings.items()}


def index_splits(root: Path, tasks) -> dict[str, list[list[str]]]:
    """{split: entries} of the first layout found in `root` (json, splits.csv, flat folders)."""
    if (root / JSON).is_file():
        return read_split_json(root / JSON)
    if (root / SPLITS_CSV).is_file():
        return _building_index(root, [DOMAINS[TASK_DOMAIN[t]] for t in tasks if t in TASK_DOMAIN])
    return {"all": _views(root, "", f"the rgb/ folder; {root} has no {JSON} or {SPLITS_CSV}")}


def load_class_weights(root: Path) -> torch.Tensor:
    """The 17 seg class weights of `<root>/semseg_prior_factor.npy`, float32."""
    path = need(
        root / PRIOR,
        "the 17 Taskonomy seg class weights; class_weights=False trains seg unweighted on purpose",
    )
    weights = read_npy(path).astype(np.float32).reshape(-1)
    if weights.shape != (17,):
        raise DatasetFormatError(f"{path}: expected 17 class weights, got {weights.shape}")
    return torch.from_numpy(weights)


class Taskonomy(DenseDataset):
    """A split of Tiny-Taskonomy; tasks seg (17), normal (3), depth, keypoint, edge (1 each),
    every dense target with a `<task>_mask` (depth: d < 64,500; others all valid)."""

    TASK_CHANNELS = {"seg": 17, "normal": 3, "depth": 1, "keypoint": 1, "edge": 1}
    NAME = "Taskonomy"
    ENTRY_WIDTH = len(DOMAINS)

    def __init__(
        self, root, split: str = "train", *, tasks=tuple(TASK_DOMAIN), class_weights: bool = True
    ) -> None:
        """`class_weights=False`: seg unweighted on purpose, no `semseg_prior_factor.npy` read."""
        if root is None:
            raise ConfigError(
                "Taskonomy needs data.root: the folder of taskonomy.json, splits.csv or <domain>/"
            )
        super().__init__(root, split, tasks, index_splits(Path(root), tasks))
        weighted = class_weights and "seg" in self.tasks
        self.class_weights = {"seg": load_class_weights(self.root)} if weighted else {}

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
