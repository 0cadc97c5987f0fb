"""Vectorised analytic ray casting of floor, wall, spheres, boxes, cylinders and ellipsoids.

World frame: y up, floor y = 0, camera at `scene.camera` pitched down by `scene.pitch`. Rays are
scaled so that their forward component is 1: the ray parameter t is the camera-z depth.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

EPS = 1e-6
FAR = 40.0
SEG_IDS = {"floor": 0, "wall": 1, "sphere": 2, "box": 3, "cylinder": 4, "ellipsoid": 5}


@dataclass
class Primitive:
    """One object: kind, centre (box/ellipsoid/sphere centre, cylinder base centre), sizes
    (sphere: r; box: half sizes; cylinder: r, height; ellipsoid: radii), yaw, albedo, texture."""

    kind: str
    center: np.ndarray
    size: np.ndarray
    yaw: float = 0.0
    albedo: np.ndarray = field(default_factory=lambda: np.ones(3))
    texture: str = "none"
    texture_freq: float = 4.0


@dataclass
class Scene:
    """Camera (position, pitch, fov), floor, optional back wall at z = −wall, objects, light."""

    camera: np.ndarray
    pitch: float
    fov_deg: float
    wall: float | None
    objects: list[Primitive]
    light: np.ndarray
    floor_albedo: np.ndarray
    wall_albedo: np.ndarray
    background: np.ndarray
    floor_checker: bool = False


def camera_axes(pitch: float) -> np.ndarray:
    """Rows: camera x (right), y (up), z (towards the camera, = −forward) in world coordinates."""
    s, c = np.sin(pitch), np.cos(pitch)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _yaw_matrix(yaw: float) -> np.ndarray:
    s, c = np.sin(yaw), np.cos(yaw)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _sphere(o, d, radii):
    """Unit-sphere style hit of rays (o + t d) in a frame where the surface is Σ (x/r)² = 1."""
    od, dd = o / radii, d / radii
    a = (dd * dd).sum(-1)
    b = (dd * od).sum(-1)
    c = (od * od).sum(-1) - 1.0
    disc = b * b - a * c
    with np.errstate(invalid="ignore"):
        t = (-b - np.sqrt(disc)) / a
    t = np.where((disc >= 0) & (t > EPS), t, np.inf)
    q = o + np.where(np.isfinite(t), t, 0.0)[:, None] * d
    return t, q / radii**2


def intersect(obj: Primitive, origin: np.ndarray, dirs: np.ndarray):
    """(t [N], world normal [N, 3], part id [N]) of the nearest hit of `obj`; t = inf on a miss."""
    rot = _yaw_matrix(obj.yaw)
    o = (origin - obj.center) @ rot  # world → local (rot is orthonormal: x @ rot = Rᵀ x)
    d = dirs @ rot
    part = np.zeros(len(dirs), dtype=np.int64)
    if obj.kind in ("sphere", "ellipsoid"):
        radii = np.full(3, obj.size[0]) if obj.kind == "sphere" else obj.size
        t, n = _sphere(o[None, :], d, radii)
    elif obj.kind == "box":
        h = obj.size
        with np.errstate(divide="ignore", invalid="ignore"):
            t1, t2 = (-h - o) / d, (h - o) / d
        near, far = np.minimum(t1, t2), np.maximum(t1, t2)
        tmin, tmax = near.max(-1), far.min(-1)
        t = np.where((tmax >= tmin) & (tmin > EPS), tmin, np.inf)
        axis = near.argmax(-1)
        sign = -np.sign(np.take_along_axis(d, axis[:, None], 1)[:, 0])
        n = np.zeros_like(d)
        n[np.arange(len(d)), axis] = sign
        part = axis * 2 + (sign < 0)
    elif obj.kind == "cylinder":
        r, height = obj.size
        t, n = _cylinder(o, d, r, height)
        part = np.where(n[:, 1] > 0.5, 1, 0)
    else:
        raise ValueError(f"unknown primitive {obj.kind!r}")
    n = n @ rot.T
    n /= np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-12)
    return t, n, part


def _cylinder(o, d, r, height):
    """Vertical capped cylinder, base centre at the local origin: side and top cap."""
    a = d[:, 0] ** 2 + d[:, 2] ** 2
    b = d[:, 0] * o[0] + d[:, 2] * o[2]
    c = o[0] ** 2 + o[2] ** 2 - r * r
    disc = b * b - a * c
    with np.errstate(invalid="ignore", divide="ignore"):
        ts = (-b - np.sqrt(disc)) / a
        ys = o[1] + ts * d[:, 1]
        side = np.where((disc >= 0) & (ts > EPS) & (ys >= 0) & (ys <= height), ts, np.inf)
        tc = (height - o[1]) / d[:, 1]
    xc, zc = o[0] + tc * d[:, 0], o[2] + tc * d[:, 2]
    cap = np.where((tc > EPS) & (xc**2 + zc**2 <= r * r), tc, np.inf)
    t = np.minimum(side, cap)
    q = o + np.where(np.isfinite(t), t, 0.0)[:, None] * d
    n = np.stack([q[:, 0], np.zeros_like(t), q[:, 2]], -1)
    n = np.where((cap <= side)[:, None], np.array([0.0, 1.0, 0.0]), n)
    return t, n


def _plane(origin, dirs, axis: int, value: float, sign: float):
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (value - origin[axis]) / dirs[:, axis]
    t = np.where((t > EPS) & (sign * dirs[:, axis] < 0) & (t < FAR), t, np.inf)
    n = np.zeros_like(dirs)
    n[:, axis] = sign
    return t, n


def cast(scene: Scene, dirs: np.ndarray):
    """Nearest hit per ray: depth t, world normal, object id (−1 void, 0 floor, 1 wall, 2+ objects),
    part id, hit point."""
    hits = [_plane(scene.camera, dirs, 1, 0.0, 1.0)]
    ids = [0]
    if scene.wall is not None:
        hits.append(_plane(scene.camera, dirs, 2, -scene.wall, 1.0))
        ids.append(1)
    parts = [np.zeros(len(dirs), np.int64)] * len(hits)
    for i, obj in enumerate(scene.objects):
        t, n, part = intersect(obj, scene.camera, dirs)
        hits.append((t, n))
        parts.append(part)
        ids.append(i + 2)
    ts = np.stack([h[0] for h in hits])
    best = ts.argmin(0)
    rows = np.arange(len(dirs))
    t = ts[best, rows]
    normal = np.stack([h[1] for h in hits])[best, rows]
    hit = np.isfinite(t)
    obj_id = np.where(hit, np.asarray(ids)[best], -1)
    part = np.where(hit, np.stack(parts)[best, rows], 0)
    point = scene.camera + np.where(hit, t, 0.0)[:, None] * dirs
    return np.where(hit, t, 0.0), normal, obj_id, part, point


def pixel_rays(scene: Scene, size: int) -> np.ndarray:
    """World ray directions [size², 3] through the pixel centres (forward component 1)."""
    f = np.tan(np.deg2rad(scene.fov_deg) / 2)
    c = (np.arange(size) + 0.5) / size * 2 - 1
    x, y = np.meshgrid(c * f, -c * f)
    cam = np.stack([x.ravel(), y.ravel(), -np.ones(size * size)], -1)
    return cam @ camera_axes(scene.pitch)


def project(scene: Scene, points: np.ndarray, size: int):
    """Pixel coordinates (col, row; centres at +0.5) and camera depth of world points."""
    cam = (points - scene.camera) @ camera_axes(scene.pitch).T
    depth = -cam[:, 2]
    f = np.tan(np.deg2rad(scene.fov_deg) / 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        col = (cam[:, 0] / depth / f + 1) / 2 * size
        row = (1 - cam[:, 1] / depth / f) / 2 * size
    return col, row, depth
