"""Offline procedural multi-task scenes (a stand-in for the AdaShare benchmarks): deterministic
from a seed, any size.

Each sample is ray-cast analytically: a floor, usually a back wall, 2–6 primitives. Targets:
semantic segmentation (0 floor, 1 wall, 2 sphere, 3 box, 4 cylinder, 5 ellipsoid, 255 void),
camera-z depth, unit normals in camera coordinates (x right, y up, z towards the camera),
occlusion/part edges and keypoint heatmaps of visible box corners and cylinder cap centres.
"""

from __future__ import annotations

import numpy as np

from efficientdl.core.errors import ConfigError
from efficientdl.data.raycast import (
    SEG_IDS,
    Primitive,
    Scene,
    camera_axes,
    cast,
    pixel_rays,
    project,
)

SPLITS = {"train": (0, 4000), "val": (1, 500), "test": (2, 1000)}
TASK_CHANNELS = {"seg": 6, "depth": 1, "normal": 3, "edge": 1, "keypoint": 1}
PRESETS = {
    "procedural_3task": ("seg", "normal", "depth"),
    "procedural_5task": ("seg", "normal", "depth", "keypoint", "edge"),
}
IMAGE_MEAN, IMAGE_STD = 0.5, 0.25
KINDS = ("sphere", "box", "cylinder", "ellipsoid")


def sample_scene(rng: np.random.Generator) -> Scene:
    """Draw a random scene (camera, wall with p = 0.8, 2–6 objects on the floor, light)."""
    objects = []
    for _ in range(rng.integers(2, 7)):
        kind = KINDS[rng.integers(len(KINDS))]
        x, z = rng.uniform(-2.2, 2.2), rng.uniform(-6.5, -2.8)
        if kind == "sphere":
            size = rng.uniform(0.3, 0.7, 1)
            center = np.array([x, size[0], z])
        elif kind == "box":
            size = rng.uniform(0.25, 0.6, 3)
            center = np.array([x, size[1], z])
        elif kind == "cylinder":
            size = np.array([rng.uniform(0.2, 0.5), rng.uniform(0.4, 1.4)])
            center = np.array([x, 0.0, z])
        else:
            size = rng.uniform(0.25, 0.7, 3)
            center = np.array([x, size[1], z])
        texture = ("none", "stripes", "checker")[rng.integers(3)]
        objects.append(
            Primitive(
                kind,
                center,
                size,
                yaw=float(rng.uniform(0, np.pi)),
                albedo=rng.uniform(0.2, 1.0, 3),
                texture=texture,
                texture_freq=float(rng.uniform(2.0, 6.0)),
            )
        )
    light = np.array([rng.uniform(-1, 1), rng.uniform(0.5, 1.5), rng.uniform(-0.2, 1.0)])
    wall = float(rng.uniform(7.5, 10.0)) if rng.random() < 0.8 else None
    return Scene(
        camera=np.array([0.0, rng.uniform(1.2, 1.8), 0.0]),
        pitch=float(np.deg2rad(rng.uniform(12, 28))),
        fov_deg=60.0,
        wall=wall,
        objects=objects,
        light=light / np.linalg.norm(light),
        floor_albedo=rng.uniform(0.3, 0.8, 3),
        wall_albedo=rng.uniform(0.3, 0.9, 3),
        background=rng.uniform(0.0, 0.3, 3),
        floor_checker=bool(rng.random() < 0.5),
    )


def _pattern(kind: str, freq: float, point: np.ndarray) -> np.ndarray:
    if kind == "stripes":
        return 0.6 + 0.4 * (np.sin(freq * np.pi * point[:, 1]) > 0)
    if kind == "checker":
        cells = (
            np.floor(freq * point[:, 0])
            + np.floor(freq * point[:, 1])
            + np.floor(freq * point[:, 2])
        )
        return 0.6 + 0.4 * (cells % 2 == 0)
    return np.ones(len(point))


def _albedo(scene: Scene, obj_id: np.ndarray, point: np.ndarray) -> np.ndarray:
    albedo = np.tile(scene.background, (len(obj_id), 1))
    floor = obj_id == 0
    albedo[floor] = scene.floor_albedo * (
        _pattern("checker", 1.0, point[floor])[:, None] if scene.floor_checker else 1.0
    )
    albedo[obj_id == 1] = scene.wall_albedo
    for i, obj in enumerate(scene.objects):
        sel = obj_id == i + 2
        albedo[sel] = obj.albedo * _pattern(obj.texture, obj.texture_freq, point[sel])[:, None]
    return albedo


def _edges(labels: np.ndarray) -> np.ndarray:
    """1 where the 3×3 neighbourhood (replicate-padded) holds another id."""
    padded = np.pad(labels, 1, mode="edge")
    h, w = labels.shape
    edge = np.zeros_like(labels, dtype=bool)
    for di in range(3):
        for dj in range(3):
            edge |= padded[di : di + h, dj : dj + w] != labels
    return edge


def _keypoints(scene: Scene, size: int) -> np.ndarray:
    points = []
    for obj in scene.objects:
        if obj.kind == "box":
            c, s = np.cos(obj.yaw), np.sin(obj.yaw)
            rot = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
            signs = np.array([[i, j, k] for i in (-1, 1) for j in (-1, 1) for k in (-1, 1)])
            points.append(obj.center + (signs * obj.size) @ rot.T)
        elif obj.kind == "cylinder":
            points.append(obj.center + np.array([[0, 0, 0], [0, obj.size[1], 0]]))
    heat = np.zeros((size, size))
    if not points:
        return heat
    pts = np.concatenate(points)
    col, row, depth = project(scene, pts, size)
    rays = (pts - scene.camera) / depth[:, None]
    hit_depth, *_ = cast(scene, rays)
    hit_depth = np.where(hit_depth > 0, hit_depth, np.inf)
    visible = (depth > 0) & (hit_depth >= depth - 1e-3)
    visible &= (col >= 0) & (col < size) & (row >= 0) & (row < size)
    sigma = size / 64
    centres = np.arange(size) + 0.5
    for u, v in zip(col[visible], row[visible]):
        g = np.exp(-((centres[None, :] - u) ** 2 + (centres[:, None] - v) ** 2) / (2 * sigma**2))
        heat = np.maximum(heat, g)
    return heat


def render(scene: Scene, size: int, rng: np.random.Generator | None = None) -> dict:
    """All targets of `scene` at size × size; `rng` adds the image noise (σ = 0.02)."""
    dirs = pixel_rays(scene, size)
    depth, normal_w, obj_id, part, point = cast(scene, dirs)
    valid = obj_id >= 0
    normal_c = normal_w @ camera_axes(scene.pitch).T * valid[:, None]
    shade = 0.3 + 0.7 * np.maximum(0.0, normal_w @ scene.light)
    image = _albedo(scene, obj_id, point) * np.where(valid, shade, 1.0)[:, None]
    if rng is not None:
        image = image + rng.normal(0.0, 0.02, image.shape)
    image = np.clip(image, 0.0, 1.0)
    kinds = np.array([SEG_IDS["floor"], SEG_IDS["wall"], *(SEG_IDS[o.kind] for o in scene.objects)])
    seg = np.where(valid, kinds[np.maximum(obj_id, 0)], 255)
    shape = (size, size)
    ids = (obj_id * 8 + part).reshape(shape)
    return {
        "image": ((image.T.reshape(3, *shape) - IMAGE_MEAN) / IMAGE_STD).astype(np.float32),
        "seg": seg.reshape(shape).astype(np.int64),
        "depth": depth.reshape(1, *shape).astype(np.float32),
        "depth_mask": valid.reshape(shape),
        "normal": normal_c.T.reshape(3, *shape).astype(np.float32),
        "normal_mask": valid.reshape(shape),
        "edge": _edges(ids).astype(np.float32)[None],
        "edge_mask": np.ones(shape, dtype=bool),
        "keypoint": _keypoints(scene, size).astype(np.float32)[None],
        "keypoint_mask": np.ones(shape, dtype=bool),
    }


class ProceduralScenes:
    """Split 'train' (4,000), 'val' (500) or 'test' (1,000) of procedural scenes at `size`².

    Sample i comes from `Generator(PCG64(SeedSequence([seed, split_id, i])))`, so it is the same in
    any order, run and worker. Items are dicts of numpy arrays: `image` [3, S, S] normalised
    (x − 0.5)/0.25, `seg` [S, S], `depth`/`edge`/`keypoint` [1, S, S], `normal` [3, S, S], and a
    bool `<task>_mask` [S, S] for each dense regression task.
    """

    task_channels = TASK_CHANNELS

    def __init__(
        self,
        split: str,
        *,
        size: int = 64,
        num: int | None = None,
        seed: int = 0,
        tasks=PRESETS["procedural_5task"],
    ) -> None:
        if split not in SPLITS:
            raise ConfigError(
                f"procedural scenes: split must be one of {list(SPLITS)}, got {split!r}"
            )
        if not isinstance(size, int) or size < 8:
            raise ConfigError(f"procedural scenes: size must be an int ≥ 8, got {size!r}")
        unknown = [t for t in tasks if t not in TASK_CHANNELS]
        if unknown or not tasks:
            raise ConfigError(
                f"procedural scenes: unknown tasks {unknown}; known {list(TASK_CHANNELS)}"
            )
        self.split, self.size, self.seed = split, size, seed
        self.split_id, default = SPLITS[split]
        self.num = default if num is None else num
        if self.num < 1:
            raise ConfigError(f"procedural scenes: num must be ≥ 1, got {num!r}")
        self.tasks = tuple(tasks)
        self.pad_value = np.full(3, (0.0 - IMAGE_MEAN) / IMAGE_STD, dtype=np.float32)

    def __len__(self) -> int:
        return self.num

    def rng(self, index: int) -> np.random.Generator:
        """The generator of sample `index`."""
        return np.random.Generator(
            np.random.PCG64(np.random.SeedSequence([self.seed, self.split_id, index]))
        )

    def scene(self, index: int) -> Scene:
        """The scene description of sample `index`."""
        return sample_scene(self.rng(index))

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.num:
            raise IndexError(f"index {index} out of range for {self.num} scenes")
        rng = self.rng(index)
        out = render(sample_scene(rng), self.size, rng)
        keep = {"image", *self.tasks, *(f"{t}_mask" for t in self.tasks)}
        return {k: v for k, v in out.items() if k in keep}
