"""Procedural multi-task scenes: analytic geometry, determinism across runs and workers."""

import multiprocessing as mp

import numpy as np
import pytest

from efficientdl.data.raycast import Primitive, Scene
from efficientdl.data.scenes import ProceduralScenes, render


def _sphere_scene(wall=None):
    return Scene(
        camera=np.array([0.0, 1.0, 0.0]),
        pitch=0.0,
        fov_deg=60.0,
        wall=wall,
        objects=[Primitive("sphere", np.array([0.3, 1.0, -5.0]), np.array([1.0]))],
        light=np.array([0.0, 1.0, 0.0]),
        floor_albedo=np.ones(3) * 0.5,
        wall_albedo=np.ones(3) * 0.5,
        background=np.zeros(3),
    )


def test_hand_placed_sphere_depth_and_normals_are_analytic():
    size = 32
    out = render(_sphere_scene(), size)
    f = np.tan(np.radians(30))
    centre = np.array([0.3, 0.0, -5.0])  # in camera coordinates (pitch 0, camera at y = 1)
    hits = 0
    for i in range(size):
        for j in range(size):
            d = np.array([((j + 0.5) / size * 2 - 1) * f, -((i + 0.5) / size * 2 - 1) * f, -1.0])
            a, b, c = d @ d, d @ centre, centre @ centre - 1.0
            disc = b * b - a * c
            if disc < 0 or out["seg"][i, j] != 2:
                continue
            t = (b - np.sqrt(disc)) / a  # nearest root; depth = −z = t because d_z = −1
            assert out["depth"][0, i, j] == pytest.approx(t, rel=1e-5)
            normal = t * d - centre
            np.testing.assert_allclose(out["normal"][:, i, j], normal, atol=1e-5)
            hits += 1
    assert hits > 50
    assert out["seg"][size // 2, size // 2] == 2  # the sphere is straight ahead
    assert set(np.unique(out["seg"])) <= {0, 2, 255}  # floor, sphere, void (no wall)
    void = out["seg"] == 255
    assert void.any() and not out["depth_mask"][void].any() and not out["normal_mask"][void].any()
    assert (out["depth"][0][void] == 0).all()


def test_sample_fields_normals_edges_and_keypoints():
    ds = ProceduralScenes("val", size=48)
    assert len(ds) == 500
    for i in range(6):
        s = ds[i]
        assert s["image"].shape == (3, 48, 48) and s["image"].dtype == np.float32
        assert s["seg"].dtype == np.int64 and set(np.unique(s["seg"])) <= {0, 1, 2, 3, 4, 5, 255}
        n, m = s["normal"], s["normal_mask"]
        np.testing.assert_allclose(np.linalg.norm(n, axis=0)[m], 1.0, atol=1e-5)
        c = ((np.arange(48) + 0.5) / 48 * 2 - 1) * np.tan(np.radians(30))
        to_camera = np.stack(
            [-c[None, :].repeat(48, 0), c[:, None].repeat(48, 1), np.ones((48, 48))]
        )  # −(view ray), camera coordinates
        assert ((n * to_camera).sum(0)[m] > -1e-5).all()  # visible surfaces face the camera
        assert set(np.unique(s["edge"])) <= {0.0, 1.0} and s["edge"].mean() > 0
        assert 0 <= s["keypoint"].min() and s["keypoint"].max() <= 1
        assert (s["depth"][0][s["depth_mask"]] > 0).all()


def test_tasks_option_and_errors():
    s = ProceduralScenes("test", size=16, tasks=("seg", "depth"))[0]
    assert set(s) == {"image", "seg", "depth", "depth_mask"}
    with pytest.raises(ValueError, match="split must be one of"):
        ProceduralScenes("dev")
    with pytest.raises(ValueError, match="unknown tasks \\['albedo'\\]"):
        ProceduralScenes("train", tasks=("seg", "albedo"))
    with pytest.raises(ValueError, match="size must be an int ≥ 8, got 4"):
        ProceduralScenes("train", size=4)
    with pytest.raises(IndexError):
        ProceduralScenes("train", num=3)[3]


def _bytes(args):
    split, indices = args
    ds = ProceduralScenes(split, size=24, seed=3)
    return [b"".join(v.tobytes() for v in ds[i].values()) for i in indices]


def test_byte_identical_across_runs_orders_and_workers():
    indices = list(range(8))
    serial = _bytes(("train", indices))
    assert serial == _bytes(("train", indices))
    assert _bytes(("train", indices[::-1])) == serial[::-1]
    with mp.get_context("fork").Pool(2) as pool:
        parallel = sum(pool.map(_bytes, [("train", indices[:4]), ("train", indices[4:])]), [])
    assert parallel == serial
    assert _bytes(("test", indices)) != serial  # splits differ
    other_seed = ProceduralScenes("train", size=24, seed=4)[0]
    assert (
        other_seed["image"].tobytes()
        != ProceduralScenes("train", size=24, seed=3)[0]["image"].tobytes()
    )
