"""CIFAR-10 batches and augmentation, N-MNIST events and the official frame pipeline."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from efficientdl.data import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    NMNIST,
    DatasetFormatError,
    DatasetNotFoundError,
    cifar10_augment,
    decode_events,
    events_to_frames,
    get_dataset,
    load_cifar10,
    random_crop_flip,
    read_events,
)
from efficientdl.data.nmnist import frame_index, saccade_shift, stabilize
from py2pickle import py2_pickle

MEAN = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)


# --- CIFAR-10 -------------------------------------------------------------------------------


def cifar_rows(n, start):
    """Image i: R plane 10+i, G plane 100+i, B plane 200+i; R pixel (row 0, col 1) = 255."""
    data = np.zeros((n, 3072), np.uint8)
    for i in range(n):
        data[i, :1024], data[i, 1024:2048], data[i, 2048:] = 10 + start + i, 100 + start + i, 200
        data[i, 1] = 255
    return data


@pytest.fixture
def cifar_root(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for b, name in enumerate(names):
        batch = {
            b"batch_label": b"batch %d" % b,
            b"labels": [(2 * b + j) % 10 for j in range(2)],
            b"data": cifar_rows(2, 2 * b),
            b"filenames": [b"a.png", b"b.png"],
        }
        (folder / name).write_bytes(py2_pickle(batch))
    return tmp_path


def test_cifar_channel_order_and_labels(cifar_root):
    for root in (cifar_root, cifar_root / "cifar-10-batches-py"):
        train = load_cifar10("train", root=root)
        assert train.images.shape == (10, 3, 32, 32) and train.num_classes == 10
        assert train.labels.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
        raw = train.images * STD + MEAN
        for i in range(10):
            assert torch.allclose(raw[i, 0, 5, 7], torch.tensor((10 + i) / 255), atol=1e-6)
            assert torch.allclose(raw[i, 1], torch.tensor((100 + i) / 255), atol=1e-6)
            assert torch.allclose(raw[i, 2], torch.tensor(200 / 255), atol=1e-6)
        assert torch.allclose(raw[:, 0, 0, 1], torch.tensor(1.0), atol=1e-6)  # row-major plane
    test = get_dataset("cifar10", "test", root=cifar_root)
    assert test.labels.tolist() == [0, 1] and test.augment is None
    assert train.augment is cifar10_augment
    assert load_cifar10("train", root=cifar_root, augment=False).augment is None


def test_cifar_missing_and_corrupt(cifar_root, tmp_path_factory):
    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(DatasetNotFoundError, match="data_root=") as err:
        load_cifar10("train", root=empty)
    assert str(empty) in str(err.value)
    bad = cifar_root / "cifar-10-batches-py" / "data_batch_3"
    bad.write_bytes(b"garbage")
    with pytest.raises(DatasetFormatError, match="data_batch_3"):
        load_cifar10("train", root=cifar_root)


def reference_augment(raw, top, left, flip):
    """Slow per-sample reference on un-normalised images: zero-pad 4, crop, flip, normalise."""
    out = []
    for i in range(raw.shape[0]):
        padded = F.pad(raw[i], (4, 4, 4, 4), value=0.0)
        crop = padded[:, top[i] : top[i] + 32, left[i] : left[i] + 32]
        out.append(torch.flip(crop, dims=[2]) if flip[i] else crop)
    return (torch.stack(out) - MEAN) / STD


def test_augment_matches_per_sample_reference():
    raw = torch.rand(64, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    out = cifar10_augment((raw - MEAN) / STD, torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)  # the documented draw order: rows, columns, flips
    top, left = torch.randint(0, 9, (64,), generator=g), torch.randint(0, 9, (64,), generator=g)
    flip = torch.rand(64, generator=g) < 0.5
    assert out.shape == (64, 3, 32, 32) and out.dtype == torch.float32
    torch.testing.assert_close(out, reference_augment(raw, top, left, flip), rtol=0, atol=1e-5)


def test_augment_each_sample_is_some_crop_and_flip():
    """Independent of the draw order: every output is one of the 9·9·2 candidate transforms."""
    raw = torch.rand(24, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    out = cifar10_augment((raw - MEAN) / STD, torch.Generator().manual_seed(3))
    seen = set()
    for i in range(24):
        hits = [
            (t, l, f)
            for t in range(9)
            for l in range(9)
            for f in (False, True)
            if torch.allclose(
                out[i], reference_augment(raw[i : i + 1], [t], [l], [f])[0], atol=1e-5
            )
        ]
        assert len(hits) == 1
        seen.add(hits[0])
    assert len(seen) > 12


def test_augment_statistics_and_determinism(cifar_root):
    x = torch.zeros(2000, 3, 8, 8) + 1.0  # a constant image: padding shows where it moved
    out = random_crop_flip(x, torch.Generator().manual_seed(0), padding=2, fill=0.0)
    assert out.shape == x.shape
    rows, cols = out[:, 0].amax(dim=2).sum(dim=1), out[:, 0].amax(dim=1).sum(dim=1)
    assert set(rows.tolist()) == set(cols.tolist()) == {6.0, 7.0, 8.0}  # shifts 0, ±1, ±2
    assert 0.94 < (out.sum(dim=(1, 2, 3)) < 3 * 64).float().mean() < 0.98  # 24/25 shifted
    marker = torch.zeros(2000, 1, 4, 4)
    marker[:, :, :, 0] = 1.0  # left column marked; flips move it to the right
    flipped = random_crop_flip(marker, torch.Generator().manual_seed(1), padding=0)
    frac = flipped[:, 0, 0, 3].mean()
    assert 0.45 < frac < 0.55 and torch.equal(
        flipped[:, 0, 0, 0] + flipped[:, 0, 0, 3], torch.ones(2000)
    )
    train = load_cifar10("train", root=cifar_root)
    a = train.get_batch(torch.arange(10), torch.Generator().manual_seed(5))[0]
    b = train.get_batch(torch.arange(10), torch.Generator().manual_seed(5))[0]
    assert torch.equal(a, b) and not torch.equal(a, train.images)


# --- N-MNIST --------------------------------------------------------------------------------


def encode(x, y, p, ts):
    """The 40-bit event: x, y, polarity in bit 7 of byte 2, 23-bit timestamp."""
    return bytes([x, y, (p << 7) | ((ts >> 16) & 0x7F), (ts >> 8) & 0xFF, ts & 0xFF])


def events(*rows):
    cols = list(zip(*rows))
    return {k: np.array(v, dtype=np.int64) for k, v in zip(("x", "y", "polarity", "ts"), cols)}


def test_decode_hand_made_bytes(tmp_path):
    raw = bytes([5, 7, 0x80 | 0x12, 0x34, 0x56]) + bytes([33, 0, 0x7F, 0xFF, 0xFF])
    ev = decode_events(raw)
    assert ev["x"].tolist() == [5, 33] and ev["y"].tolist() == [7, 0]
    assert ev["polarity"].tolist() == [1, 0]
    assert ev["ts"].tolist() == [0x123456, 0x7FFFFF]
    path = tmp_path / "00001.bin"
    path.write_bytes(raw + encode(1, 2, 1, 0))
    assert read_events(path)["ts"].tolist() == [0x123456, 0x7FFFFF, 0]
    path.write_bytes(raw[:-1])
    with pytest.raises(DatasetFormatError, match="00001.bin"):
        read_events(path)


def test_saccade_shift_breakpoints():
    dx, dy = saccade_shift(np.array([0, 105000, 157500, 210000, 315000]))
    np.testing.assert_allclose(dx, [0, 3.5, 5.25, 7, 0], atol=1e-12)
    np.testing.assert_allclose(dy, [0, 7, 3.5, 0, 0], atol=1e-12)


def test_stabilisation_rounds_halves_up_and_drops_outside():
    ev = events(
        (9, 20, 1, 15000),  # dx = 0.5, dy = 1: x − dx = 8.5 → 9 (numpy's round gives 8)
        (3, 5, 0, 7500),  # dx = 0.25, dy = 0.5: y − dy = 4.5 → 5 (numpy: 4)
        (0, 10, 1, 105000),  # dx = 3.5 → x' = −3, dropped
        (0, 0, 1, 15000),  # y' = −1, dropped
        (0, 33, 1, 15000),  # x − dx = −0.5 → 0, kept
        (33, 33, 0, 0),
    )
    out = stabilize(ev)
    assert out["x"].tolist() == [9, 3, 0, 33] and out["y"].tolist() == [19, 5, 32, 33]
    assert out["polarity"].tolist() == [1, 0, 1, 0]
    assert out["ts"].tolist() == [15000, 7500, 15000, 0]
    assert np.round(8.5) == 8  # the rounding we must not use


def test_official_and_clean_binning():
    ts = np.array([0, 1, 3000, 3001, 12000, 12001, 15000, 15001])
    assert frame_index(ts, 5).tolist() == [4, 0, 0, 1, 3, -1, -1, -1]
    assert frame_index(ts, 5, binning="clean").tolist() == [0, 0, 0, 1, 3, 4, 4, -1]
    with pytest.raises(ValueError, match="binning"):
        frame_index(ts, 5, binning="nearest")


def test_frames_axes_polarity_and_binary():
    ev = events((2, 30, 1, 1000), (2, 30, 1, 2000), (4, 6, 0, 0), (4, 6, 1, 60000))
    frames = events_to_frames(ev, 5)
    assert frames.shape == (5, 2, 34, 34) and frames.dtype == torch.float32
    assert frames[0, 1, 2, 30] == 1 and frames[0, 1, 30, 2] == 0  # (polarity, x, y)
    assert frames[4, 0, 4, 6] == 1  # ts = 0 → last frame, OFF → channel 0
    assert frames.sum() == 2  # duplicate cell counted once; ts = 60000 (bin 20 ≥ T) dropped
    clean = events_to_frames(ev, 30, binning="clean")
    assert clean[0, 0, 4, 6] == 1 and clean[19, 1].sum() == 1


def reference_frames(ev, T, binning):
    """Per-event transcription of the official pipeline with MATLAB-style rounding."""
    frames = torch.zeros(T, 2, 34, 34)
    for x, y, p, ts in zip(ev["x"], ev["y"], ev["polarity"], ev["ts"]):
        ts = int(ts)
        if ts <= 105000:
            dx, dy = 3.5 * ts / 105000, 7 * ts / 105000
        elif ts <= 210000:
            dx, dy = 3.5 + 3.5 * (ts - 105000) / 105000, 7 - 7 * (ts - 105000) / 105000
        else:
            dx, dy = 7 - 7 * (ts - 210000) / 105000, 0.0
        xs, ys = math.floor(x - dx + 0.5), math.floor(y - dy + 0.5)
        if not (0 <= xs < 34 and 0 <= ys < 34):
            continue
        b = math.ceil(ts / 3000)
        if binning == "official":
            k = T - 1 if b == 0 else (b - 1 if b < T else None)
        else:
            k = max(b, 1) - 1 if max(b, 1) - 1 < T else None
        if k is not None:
            frames[k, int(p), xs, ys] = 1.0
    return frames


@pytest.mark.parametrize("T, binning", [(30, "official"), (7, "official"), (30, "clean")])
def test_frames_match_per_event_reference(T, binning):
    rng = np.random.default_rng(0)
    n = 600
    ts = np.sort(rng.integers(0, 320000, n))
    ts[:5] = 0
    ts[5:40] = rng.choice([3000, 6000, 7500, 15000, 105000, 210000], 35)
    ev = {
        "x": rng.integers(0, 34, n),
        "y": rng.integers(0, 34, n),
        "polarity": rng.integers(0, 2, n),
        "ts": ts,
    }
    torch.testing.assert_close(events_to_frames(ev, T, binning), reference_frames(ev, T, binning))


@pytest.fixture
def nmnist_root(tmp_path):
    rng = np.random.default_rng(0)
    for split, digits in (("Train", (0, 3, 3)), ("Test", (1,))):
        for j, d in enumerate(digits):
            folder = tmp_path / split / str(d)
            folder.mkdir(parents=True, exist_ok=True)
            rows = [
                encode(
                    int(rng.integers(0, 34)),
                    int(rng.integers(0, 34)),
                    int(rng.integers(0, 2)),
                    int(t),
                )
                for t in np.sort(rng.integers(0, 300000, 50))
            ]
            (folder / f"{j:05d}.bin").write_bytes(b"".join(rows))
    return tmp_path


def test_nmnist_dataset_batches_are_time_first(nmnist_root):
    train = NMNIST(nmnist_root, "train", T=6)
    assert len(train) == 3 and train.num_classes == 10 and train.labels.tolist() == [0, 3, 3]
    x, y = train.get_batch(torch.tensor([2, 0]))
    assert x.shape == (6, 2, 2, 34, 34) and y.tolist() == [3, 0]
    frames, label = train[2]
    assert torch.equal(x[:, 0], frames) and int(label) == 3
    want = events_to_frames(read_events(nmnist_root / "Train" / "3" / "00002.bin"), 6)
    assert torch.equal(frames, want)
    test = get_dataset("nmnist", "test", root=nmnist_root, T=4, binning="clean")
    assert len(test) == 1 and test.get_batch([0])[0].shape == (4, 1, 2, 34, 34)


def test_nmnist_missing_root(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="Train/ and Test/") as err:
        NMNIST(tmp_path / "none", "train")
    assert str(tmp_path / "none") in str(err.value)
