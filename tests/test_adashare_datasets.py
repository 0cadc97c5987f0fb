"""Real-dataset loaders on tiny files written here in exactly the
on-disk formats of the datasets, and their splits through the trainer's `build_data`."""

import json
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from efficientdl.adashare.config import AdaShareConfig
from efficientdl.adashare.phases import build_data
from efficientdl.core.config import from_dict
from efficientdl.core.errors import ConfigError
from efficientdl.data import CityScapes, MultiMNIST, NYUv2, Taskonomy
from efficientdl.data.cache import DatasetFormatError, DatasetNotFoundError

pytestmark = pytest.mark.usefixtures("one_thread")

MEAN_BGR = (104.008, 116.669, 122.679)
H, W = 12, 16


def _png(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path)


# ---- NYUv2 ------------------------------------------------------------------------------------
def _write_nyu(root, n=6, with_json=True):
    rng = np.random.default_rng(0)
    (root / "depth").mkdir(parents=True)
    files = []
    for i in range(n):
        rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        seg = rng.integers(0, 40, (H, W), dtype=np.uint8)
        seg[0, 0] = 255
        normal = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
        normal[1, 1] = 255  # fully invalid pixel
        normal[2, 2, 1] = 255  # one channel at 255 also marks invalid [code]
        depth = rng.uniform(0.5, 9.0, (H, W)).astype(np.float32)
        depth[3, 3] = 0
        name = f"{i:04d}"
        _png(root / "img" / f"{name}.png", rgb)
        _png(root / "seg" / f"{name}.png", seg, "L")
        _png(root / "normal_mask" / f"{name}.png", normal)
        np.save(root / "depth" / f"{name}.npy", depth)
        files.append(
            (
                [
                    f"img/{name}.png",
                    f"seg/{name}.png",
                    f"normal_mask/{name}.png",
                    f"depth/{name}.npy",
                ],
                rgb,
                seg,
                normal,
                depth,
            )
        )
    if with_json:
        entries = [f[0] for f in files]
        split = {
            "train": entries[:4],
            "test": entries[4:],
            "train1": entries[:2],
            "train2": entries[2:4],
        }
        (root / "nyu_v2_3task.json").write_text(json.dumps(split))
    return files


def test_nyu_v2_items_in_the_official_format(tmp_path):
    files = _write_nyu(tmp_path)
    train = NYUv2(tmp_path, "train")
    assert len(train) == 4 and len(NYUv2(tmp_path, "test")) == 2
    assert train.official_halves == ([0, 1], [2, 3])
    item = train[1]
    _, rgb, seg, normal, depth = files[1]
    # image: BGR order, mean subtracted, no /255
    assert item["image"].shape == (3, H, W) and item["image"].dtype == np.float32
    for c, source in enumerate((2, 1, 0)):
        np.testing.assert_allclose(item["image"][c], rgb[..., source] - MEAN_BGR[c], atol=1e-4)
    assert item["seg"].dtype == np.int64 and item["seg"][0, 0] == 255
    np.testing.assert_array_equal(item["seg"], seg)
    valid = ~(normal == 255).any(-1)
    assert not valid[1, 1] and not valid[2, 2]
    np.testing.assert_array_equal(item["normal_mask"], valid)
    for i, j in [(0, 5), (4, 7), (10, 2)]:
        n = 2 * normal[i, j].astype(np.float64) / 255 - 1
        np.testing.assert_allclose(item["normal"][:, i, j], n / np.linalg.norm(n), atol=1e-6)
    np.testing.assert_array_equal(item["depth"][0], depth)
    assert not item["depth_mask"][3, 3] and item["depth_mask"].sum() == H * W - 1
    raw = NYUv2(tmp_path, "train", normals_encoding="official_raw")[1]["normal"]
    np.testing.assert_array_equal(raw, normal[..., ::-1].transpose(2, 0, 1).astype(np.float32))
    two = NYUv2(tmp_path, "train", tasks=("seg", "normal"))[0]
    assert set(two) == {"image", "seg", "normal", "normal_mask"}


def test_nyu_v2_folder_layout_and_errors(tmp_path):
    _write_nyu(tmp_path, n=3, with_json=False)
    ds = NYUv2(tmp_path, "all")
    assert len(ds) == 3 and ds[2]["seg"].shape == (H, W)
    with pytest.raises(ValueError, match="split must be one of \\['all'\\]"):
        NYUv2(tmp_path, "train")
    with pytest.raises(ValueError, match="unknown tasks \\['edge'\\]"):
        NYUv2(tmp_path, "all", tasks=("seg", "edge"))
    (tmp_path / "depth" / "0001.npy").unlink()
    with pytest.raises(DatasetNotFoundError, match="0001.npy"):
        ds[1]
    (tmp_path / "nyu_v2_3task.json").write_text(json.dumps({"train": [["img/0000.png"]]}))
    with pytest.raises(DatasetFormatError, match="should list 4 files"):
        NYUv2(tmp_path, "train")
    with pytest.raises(DatasetNotFoundError, match="img"):
        NYUv2(tmp_path / "nowhere", "all")


def _nyu_config(root, *overrides):
    data = {
        "dataset": "nyu_v2",
        "root": str(root),
        "tasks": ["seg", "normal", "depth"],
        "val_fraction": 0.25,
        "cache": False,
    }
    for k, v in overrides:
        data[k] = v
    return from_dict(AdaShareConfig, {"data": data, "device": "cpu"})


def test_nyu_v2_splits_carve_val_from_train_and_keep_official_halves(tmp_path):
    _write_nyu(tmp_path)
    splits, spec = build_data(_nyu_config(tmp_path))
    assert spec.channels == {"seg": 40, "normal": 3, "depth": 1}
    val = splits["val"].indices.tolist()
    assert len(val) == 1  # ⌈0.25·4⌉
    assert sorted(val + splits["train"].indices.tolist()) == [0, 1, 2, 3]
    assert set(splits["train1"].indices) | set(splits["train2"].indices) == set(
        splits["train"].indices
    )
    assert set(splits["train1"].indices) <= {0, 1} and set(splits["train2"].indices) <= {2, 3}
    assert len(splits["test"]) == 2


# ---- CityScapes -------------------------------------------------------------------------------
def test_cityscapes_items_in_the_official_format(tmp_path):
    rng = np.random.default_rng(1)
    entries = []
    for i in range(3):
        names = [f"c/{i}_{k}.npy" for k in ("img", "depth", "label_2", "label_7", "label_19")]
        (tmp_path / "c").mkdir(exist_ok=True)
        image = rng.uniform(0, 1, (H, W, 3)).astype(np.float32)
        depth = rng.uniform(0, 0.49, (H, W, 1)).astype(np.float32)
        depth[0, 0] = 0
        labels = [rng.integers(-1, c, (H, W)).astype(np.int64) for c in (2, 7, 19)]
        for name, arr in zip(names, [image, depth, *labels]):
            np.save(tmp_path / name, arr)
        entries.append((names, image, depth, labels[2]))
    split = {"train": [e[0] for e in entries[:2]], "test": [entries[2][0]]}
    (tmp_path / "cityscape.json").write_text(json.dumps(split))
    ds = CityScapes(tmp_path, "train")
    assert len(ds) == 2 and ds.task_channels == {"seg": 19, "depth": 1}
    item = ds[1]
    _, image, depth, label = entries[1]
    for c, source in enumerate((2, 1, 0)):
        expect = image[..., source] * 255 - MEAN_BGR[c]
        np.testing.assert_allclose(item["image"][c], expect, atol=1e-3)
    assert (label == -1).any()
    np.testing.assert_array_equal(item["seg"], np.where(label == -1, 255, label))
    np.testing.assert_array_equal(item["depth"][0], depth[..., 0])
    np.testing.assert_array_equal(item["depth_mask"], depth[..., 0] > 0)
    seven = CityScapes(tmp_path, "test", num_classes=7)
    assert seven.task_channels["seg"] == 7 and set(np.unique(seven[0]["seg"])) <= {*range(7), 255}
    with pytest.raises(ValueError, match="num_classes must be one of"):
        CityScapes(tmp_path, "train", num_classes=5)
    with pytest.raises(ValueError, match="needs data.root"):
        CityScapes(None, "train")


# ---- Tiny-Taskonomy ---------------------------------------------------------------------------
TASKONOMY_DOMAINS = [
    "rgb",
    "segment_semantic",
    "normal",
    "depth_zbuffer",
    "keypoints2d",
    "edge_texture",
]


def _write_views(folder, stems, arrays):
    """`<folder>/<domain>/<stem>_domain_<domain>.png` per stem and domain (uint16: 16-bit PNG)."""
    for stem in stems:
        for d in TASKONOMY_DOMAINS:
            _png(folder / d / f"{stem}_domain_{d}.png", arrays[d])


def test_taskonomy_preprocessing(tmp_path):
    rng = np.random.default_rng(2)
    h = w = 16  # → 256² by nearest: every pixel becomes a 16×16 block
    stem = "point_1_view_2"
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    seg = rng.integers(0, 18, (h, w), dtype=np.uint8)
    normal = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    depth = rng.integers(0, 65535, (h, w), dtype=np.uint16)
    depth[0, 0], depth[0, 1] = 64_499, 64_500
    key = rng.integers(0, 700, (h, w), dtype=np.uint16)
    edge = rng.integers(0, 7000, (h, w), dtype=np.uint16)
    arrays = dict(zip(TASKONOMY_DOMAINS, [rgb, seg, normal, depth, key, edge]))
    _write_views(tmp_path, [stem], arrays)
    np.save(tmp_path / "semseg_prior_factor.npy", np.linspace(0.5, 2, 17).astype(np.float32))
    entry = [f"{d}/{stem}_domain_{d}.png" for d in TASKONOMY_DOMAINS]
    (tmp_path / "taskonomy.json").write_text(json.dumps({"train": [entry], "test": [entry]}))
    ds = Taskonomy(tmp_path, "train")
    assert ds.task_channels == {"seg": 17, "normal": 3, "depth": 1, "keypoint": 1, "edge": 1}
    torch.testing.assert_close(ds.class_weights["seg"], torch.linspace(0.5, 2, 17))
    item = ds[0]
    up = lambda a: np.repeat(np.repeat(a, 16, axis=0), 16, axis=1)  # noqa: E731
    assert item["image"].shape == (3, 256, 256)
    np.testing.assert_allclose(item["image"][0], up(rgb[..., 2]) - MEAN_BGR[0], atol=1e-4)
    np.testing.assert_array_equal(item["seg"], up(np.maximum(seg.astype(np.int64), 1) - 1))
    assert item["seg"].max() <= 16
    np.testing.assert_allclose(item["normal"][1], up(normal[..., 1] / 255 * 2 - 1), atol=1e-6)
    d = up(depth).astype(np.float64)
    np.testing.assert_allclose(item["depth"][0], np.log(1 + d) / np.log(65536), rtol=1e-6)
    assert item["depth_mask"][0, 16] == 0 and item["depth_mask"][0, 0] == 1  # 64,500 invalid
    k = np.clip(up(key) / 65536, 0, 0.005) / 0.005 * 2 - 1
    np.testing.assert_allclose(item["keypoint"][0], k, atol=1e-6)
    e = np.clip(up(edge) / 65536, 0, 0.08) / 0.08 * 2 - 1
    np.testing.assert_allclose(item["edge"][0], e, atol=1e-6)
    assert item["keypoint"].min() >= -1 and item["keypoint"].max() <= 1
    (tmp_path / "taskonomy.json").unlink()
    folder = Taskonomy(tmp_path, "all", tasks=("depth",))
    assert len(folder) == 1 and set(folder[0]) == {"image", "depth", "depth_mask"}


# 2×2 raw values (→ 128² blocks at 256²) and their decoded values, by hand from the format
HAND_RAW = {
    "rgb": np.array([[[10, 20, 30], [0, 0, 0]], [[255, 255, 255], [1, 2, 3]]], dtype=np.uint8),
    "segment_semantic": np.array([[0, 1], [2, 17]], dtype=np.uint8),
    "normal": np.array([[[0, 255, 51]] * 2] * 2, dtype=np.uint8),
    "depth_zbuffer": np.array([[0, 15], [255, 64_500]], dtype=np.uint16),
    "keypoints2d": np.array([[0, 128], [328, 65_535]], dtype=np.uint16),
    "edge_texture": np.array([[0, 2048], [5243, 6000]], dtype=np.uint16),
}
HAND_DECODED = {
    "image": [[[30, 0], [255, 3]], [[20, 0], [255, 2]], [[10, 0], [255, 1]]],  # BGR, mean below
    "seg": [[0, 0], [1, 16]],  # max(x, 1) − 1
    "normal": [[[-1.0] * 2] * 2, [[1.0] * 2] * 2, [[-0.6] * 2] * 2],  # v/255·2 − 1
    "depth": [[[0.0, 0.25], [0.5, np.log(64_501) / np.log(65_536)]]],  # log(1+d)/log 2^16
    "depth_mask": [[True, True], [True, False]],  # d < 64,500
    "keypoint": [[[-1.0, -0.21875], [1.0, 1.0]]],  # 128/2^16 = 1/512 = 0.390625·0.005
    "edge": [[[-1.0, -0.21875], [1.0, 1.0]]],  # 2048/2^16 = 1/32 = 0.390625·0.08
}
BUILDINGS = {"allensville": "1,0,0", "beechwood": "1,0,0", "corozal": "0,1,0", "ihlen": "0,0,1"}


def _write_buildings(root):
    """Per-building folders, 2 views each, and splits.csv with a header and an unused building."""
    for b in BUILDINGS:
        _write_views(root / b, ["point_0_view_0", "point_3_view_1"], HAND_RAW)
    rows = ["id,train,val,test", *(f"{b},{f}" for b, f in BUILDINGS.items()), "", "noxapater,0,0,0"]
    (root / "splits.csv").write_text("\n".join(rows) + "\n")
    np.save(root / "semseg_prior_factor.npy", np.arange(1, 18, dtype=np.float64))


def test_taskonomy_building_layout_splits_and_decoding(tmp_path):
    _write_buildings(tmp_path)
    assert (
        Image.open(tmp_path / "ihlen/depth_zbuffer/point_0_view_0_domain_depth_zbuffer.png").mode
        == "I;16"
    )
    views = lambda ds: [e[0] for e in ds.entries]  # noqa: E731
    train = Taskonomy(tmp_path, "train")
    assert train.split_names == ("train", "val", "test")
    assert views(train) == [
        f"{b}/rgb/point_{v}_domain_rgb.png"
        for b in ("allensville", "beechwood")
        for v in ("0_view_0", "3_view_1")
    ]
    assert views(Taskonomy(tmp_path, "val")) == [
        "corozal/rgb/point_0_view_0_domain_rgb.png",
        "corozal/rgb/point_3_view_1_domain_rgb.png",
    ]
    test = Taskonomy(tmp_path, "test")
    assert test.entries[1] == [
        f"ihlen/{d}/point_3_view_1_domain_{d}.png" for d in TASKONOMY_DOMAINS
    ]
    torch.testing.assert_close(train.class_weights["seg"], torch.arange(1.0, 18.0))
    item = test[1]
    corners = lambda a: a[..., ::128, ::128]  # noqa: E731  # one pixel per 128² block
    assert set(item) == set(HAND_DECODED) | {"normal_mask", "keypoint_mask", "edge_mask"}
    want = HAND_DECODED | {
        "image": np.array(HAND_DECODED["image"]) - np.reshape(MEAN_BGR, (3, 1, 1))
    }
    for key, value in want.items():
        np.testing.assert_allclose(corners(item[key]), value, atol=1e-4, err_msg=key)
    assert item["seg"].dtype == np.int64 and item["depth"].shape == (1, 256, 256)


def test_taskonomy_building_layout_errors_name_the_path(tmp_path):
    _write_buildings(tmp_path)
    missing = tmp_path / "allensville/depth_zbuffer/point_3_view_1_domain_depth_zbuffer.png"
    missing.unlink()
    train = Taskonomy(tmp_path, "train")
    assert train[0]["depth_mask"].shape == (256, 256)
    with pytest.raises(DatasetNotFoundError, match=re.escape(str(missing))):
        train[1]
    shutil.rmtree(tmp_path / "beechwood/edge_texture")
    Taskonomy(tmp_path, "train", tasks=("depth",))  # the edge images are not needed
    with pytest.raises(
        DatasetNotFoundError, match=re.escape(str(tmp_path / "beechwood/edge_texture"))
    ):
        Taskonomy(tmp_path, "test", tasks=("edge",))
    shutil.rmtree(tmp_path / "ihlen")
    with pytest.raises(DatasetNotFoundError, match=re.escape(str(tmp_path / "ihlen"))):
        Taskonomy(tmp_path, "train", tasks=("depth",))
    (tmp_path / "splits.csv").write_text("id,train,val,test\nallensville,1,0\n")
    with pytest.raises(DatasetFormatError, match="splits.csv, line 2: expected building,train"):
        Taskonomy(tmp_path, "train", tasks=("depth",))


def test_taskonomy_class_weights_are_required_unless_opted_out(tmp_path):
    _write_buildings(tmp_path)
    prior = tmp_path / "semseg_prior_factor.npy"
    np.save(prior, np.ones(16))
    with pytest.raises(DatasetFormatError, match="expected 17 class weights"):
        Taskonomy(tmp_path, "train")
    prior.unlink()
    with pytest.raises(DatasetNotFoundError, match=re.escape(str(prior)) + ".*class_weights=False"):
        Taskonomy(tmp_path, "train")
    assert Taskonomy(tmp_path, "train", class_weights=False).class_weights == {}
    assert Taskonomy(tmp_path, "train", tasks=("depth", "edge")).class_weights == {}


def test_taskonomy_building_splits_through_build_data(tmp_path):
    """The trainer's splits: val is the building list's val split (not carved from train), and
    depth is scored on its explicit mask (a valid raw depth of 0 counts)."""
    from efficientdl.adashare.objectives.tasks import make_meter

    _write_buildings(tmp_path)
    data = {"dataset": "taskonomy", "root": str(tmp_path), "tasks": ["depth"], "cache": False}
    splits, spec = build_data(from_dict(AdaShareConfig, {"data": data, "device": "cpu"}))
    assert len(splits["train"]) == 4 and len(splits["val"]) == 2 and len(splits["test"]) == 2
    assert [e[0] for e in splits["val"].entries] == [
        "corozal/rgb/point_0_view_0_domain_rgb.png",
        "corozal/rgb/point_3_view_1_domain_rgb.png",
    ]
    meter = make_meter(spec.kinds["depth"], 1, preset=spec.preset)
    assert spec.preset == "taskonomy" and meter.explicit_mask
    assert not make_meter("depth", 1, preset="nyu").explicit_mask
    (tmp_path / "semseg_prior_factor.npy").unlink()
    data |= {"tasks": ["seg"], "class_weights": False}
    _, spec = build_data(from_dict(AdaShareConfig, {"data": data, "device": "cpu"}))
    assert spec.class_weights == {"seg": None}


# ---- Multi-MNIST ------------------------------------------------------------------------------
def _triangle_weights(n_in, n_out):
    """Antialiased bilinear downsampling as a matrix (PIL's triangle filter, support = scale)."""
    scale = n_in / n_out
    weights = np.zeros((n_out, n_in))
    for i in range(n_out):
        centre = scale * (i + 0.5)
        for j in range(n_in):
            weights[i, j] = max(0.0, 1 - abs((j + 0.5 - centre) / scale))
        weights[i] /= weights[i].sum()
    return weights


@pytest.fixture(scope="module")
def sources():
    """MNIST and Fashion-MNIST in the data cache (fetched once if missing)."""
    from efficientdl.data import fetch

    fetch("mnist")
    fetch("fashion-mnist")


def test_multi_mnist_overlay_labels_and_splits(sources):
    from efficientdl.data.fashion_mnist import find_fashion_mnist
    from efficientdl.data.idx import read_idx_split
    from efficientdl.data.mnist import load_mnist_bytes

    variant = "mixed"  # a digit on the left, a garment on the right: both sources checked
    ds = MultiMNIST(None, "val", variant=variant, seed=3)
    assert len(ds) == 10_000 and len(MultiMNIST(None, "test", variant=variant)) == 10_000
    mnist_x, mnist_y = load_mnist_bytes("train")
    fashion_x, fashion_y = read_idx_split(find_fashion_mnist(), "train")
    for i in (0, 17):
        item = ds[i]
        j = int(ds.partner[i])
        assert item["image"].shape == (1, 28, 28)
        assert item["left"] == ds.left_y[i] and item["right"] == ds.right_y[j]
        # provenance of the sources: MNIST val = the last 10k of train, Fashion by seeded choice
        if variant != "fashion":
            np.testing.assert_array_equal(ds.left_x[i], mnist_x[50_000 + i])
            assert ds.left_y[i] == mnist_y[50_000 + i]
        right_src = (fashion_x, fashion_y) if variant != "mnist" else (mnist_x, mnist_y)
        hits = (right_src[0] == ds.right_x[j]).all((1, 2))
        assert hits.any() and right_src[1][hits.argmax()] == ds.right_y[j]
        # the canvas: left item in rows/cols 0–27, right in 8–35, max-combined, then 36 → 28
        canvas = np.zeros((36, 36))
        canvas[:28, :28] = ds.left_x[i] / 255
        canvas[8:, 8:] = np.maximum(canvas[8:, 8:], ds.right_x[j] / 255)
        resize = _triangle_weights(36, 28)
        np.testing.assert_allclose(
            item["image"][0] * 0.5 + 0.5, resize @ canvas @ resize.T, atol=1e-5
        )
    assert ds.partner.tolist() == MultiMNIST(None, "val", variant=variant, seed=3).partner.tolist()
    with pytest.raises(ValueError, match="variant must be one of"):
        MultiMNIST(None, "val", variant="cifar")


# ---- through the trainer ----------------------------------------------------------------------
TINY = {
    "device": "cpu",
    "progress": False,
    "baselines": [],
    "model": {"backbone": "resnet18", "width": 4},
    "train": {
        "batch_size": 2,
        "eval_batch_size": 4,
        "total_iters": 8,
        "warmup_iters": 2,
        "weight_iters": 1,
        "policy_iters": 1,
        "curriculum": False,
    },
    "sample": {"num": 1},
    "retrain": {"iters": 2, "val_freq": 2},
}


def _tiny(data, **model):
    from efficientdl.core.config import apply_overrides

    cfg = apply_overrides(TINY, [])
    cfg["data"], cfg["model"] = data, cfg["model"] | model
    return from_dict(AdaShareConfig, cfg)


def test_trainer_on_nyu_files_with_augmentation(tmp_path):
    _write_nyu(tmp_path / "nyu")
    data = {
        "dataset": "nyu_v2",
        "root": str(tmp_path / "nyu"),
        "tasks": ["seg", "normal", "depth"],
        "val_fraction": 0.25,
        "augment": True,
        "crop": [16, 16],
    }
    from efficientdl.adashare.phases import AdaShareRun

    cfg = _tiny(data, head="light")
    cfg.train.batch_size = 1  # a half of the 3 remaining training images may hold only one
    tr = AdaShareRun(cfg, run_dir=tmp_path / "run")
    batch = next(tr.stream("train", seed=0, stream=0))
    assert batch["image"].shape == (1, 3, 16, 16) and batch["seg"].shape == (1, 16, 16)
    assert tr.search()["iters"] == 8
    result = tr.retrain(tr.sample()[0])
    assert set(result["val"]) == {"seg", "normal", "depth"}
    assert {"miou", "pixel_acc"} <= set(result["val"]["seg"])


def test_trainer_on_multi_mnist_classification(tmp_path, sources):
    from efficientdl.adashare.phases import AdaShareRun
    from efficientdl.data.multitask import Subset

    cfg = _tiny({"dataset": "multi_mnist", "tasks": ["left", "right"]}, head="linear", stem="cifar")
    splits, spec = build_data(cfg)
    small = {k: Subset(v, range(8)) for k, v in splits.items()}
    tr = AdaShareRun(cfg, run_dir=tmp_path, datasets=(small, spec))
    assert spec.kinds == {"left": "cls", "right": "cls"}
    assert tr.build_model().stem[0].in_channels == 1
    done = tr.run_baseline("multi_task")
    assert set(done["test"]) == {"left", "right"} and 0 <= done["test"]["left"]["acc"] <= 100


def test_multi_mnist_num_fields_take_the_first_pairs(sources):
    from efficientdl.data.dense_tasks import dense_splits

    data = {"dataset": "multi_mnist", "tasks": ["left", "right"]}
    cfg = _tiny(data | {"num_train": 40, "num_val": 12, "num_test": 7}, head="linear", stem="cifar")
    splits = dense_splits(cfg)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [40, 12, 7]
    assert len(splits["train1"]) + len(splits["train2"]) == 40
    full = MultiMNIST(None, "test", variant="mnist", seed=cfg.data.split_seed)
    for i in (0, 6):
        np.testing.assert_array_equal(splits["test"][i]["image"], full[i]["image"])
    cfg = _tiny(data | {"num_test": 10_001}, head="linear", stem="cifar")
    with pytest.raises(ConfigError, match=r"'data.num_test': 10001 not in 1..10000"):
        dense_splits(cfg)
