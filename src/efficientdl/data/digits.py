"""The scikit-learn 8×8 digits (1,797 images, 10 classes) from `digits.csv.gz`, which ships in
the scikit-learn wheel as `sklearn/datasets/data/digits.csv.gz` (scikit-learn itself is not
needed). Each CSV row holds 64 pixel values 0..16 and the label.

There is no official split: a stratified, seed-0 split puts ⌊n_c/3⌉ images of each class into
'test' and the rest (the 2/3 pool) into 'train'.
"""

from __future__ import annotations

import functools
import gzip
import os
import sys
import tempfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from efficientdl.core.errors import ConfigError
from efficientdl.core.log import get_logger
from efficientdl.data.arrays import ArrayDataset
from efficientdl.data.cache import (
    DatasetFormatError,
    DatasetNotFoundError,
    FetchError,
    refetch_hint,
    root_hint,
    search_dirs,
)

FILE_NAME = "digits.csv.gz"
WHEEL_MEMBER = "sklearn/datasets/data/digits.csv.gz"
PACKAGE = "scikit-learn"
SPLIT_SEED = 0


def find_digits(root: str | os.PathLike | None = None) -> Path:
    """`digits.csv.gz` in `root` or `root/digits` (default root: the data cache); `root` may be
    the file itself."""
    if root is not None and Path(root).expanduser().is_file():
        return Path(root).expanduser()
    dirs = search_dirs(root, ("digits",))
    for folder in dirs:
        if (folder / FILE_NAME).is_file():
            return folder / FILE_NAME
    looked = ", ".join(str(d) for d in dirs)
    raise DatasetNotFoundError(
        f"digits not found: no {FILE_NAME} in {looked}; {root_hint('digits', fetchable=True)}"
    )


def parse_digits(payload: bytes, path: Path, *, fix: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of the gzip CSV `payload` (the content of `path`), checked whole; `fix`
    ends the message of the DatasetFormatError raised for a damaged file."""
    hint = f"; {fix}" if fix else ""
    try:
        text = gzip.decompress(payload).decode("ascii")
        table = np.array(
            [[int(v) for v in line.split(",")] for line in text.splitlines() if line.strip()],
            dtype=np.int64,
        )
    except (OSError, EOFError, zlib.error, UnicodeDecodeError, ValueError) as err:
        raise DatasetFormatError(f"{path}: not a gzip CSV of integers ({err}){hint}") from err
    if table.ndim != 2 or table.shape[1] != 65 or len(table) == 0:
        raise DatasetFormatError(
            f"{path}: expected rows of 64 pixels + label, got {table.shape}{hint}"
        )
    pixels, labels = table[:, :64], table[:, 64]
    if pixels.min() < 0 or pixels.max() > 16 or labels.min() < 0 or labels.max() > 9:
        raise DatasetFormatError(f"{path}: pixels must be 0..16 and labels 0..9{hint}")
    return pixels.reshape(-1, 8, 8).astype(np.uint8), labels


@functools.lru_cache(maxsize=2)
def _read(path_str: str, _mtime_ns: int) -> tuple[np.ndarray, np.ndarray]:
    path = Path(path_str)
    return parse_digits(path.read_bytes(), path, fix=refetch_hint("digits"))


def read_digits(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """All images uint8 `[n, 8, 8]` (values 0..16) and int64 labels `[n]` of a digits CSV."""
    path = Path(path)
    if not path.is_file():
        raise DatasetNotFoundError(f"{path} does not exist; {root_hint('digits', fetchable=True)}")
    return _read(str(path.resolve()), path.stat().st_mtime_ns)


def stratified_split(labels: np.ndarray, *, seed: int = SPLIT_SEED) -> dict[str, np.ndarray]:
    """{'train', 'test'} sorted indices: per class, a seeded permutation's first round(n_c/3)
    go to test."""
    gen = torch.Generator().manual_seed(seed)
    test = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        perm = torch.randperm(len(idx), generator=gen).numpy()
        test.append(idx[perm[: int(round(len(idx) / 3))]])
    test_idx = np.sort(np.concatenate(test))
    train_idx = np.setdiff1d(np.arange(len(labels)), test_idx)
    return {"train": train_idx, "test": test_idx}


def load_digits(
    split: str, *, root: str | os.PathLike | None = None, normalize: str = "standard"
) -> ArrayDataset:
    """Digits `split` ('train' = the 2/3 pool, 'test' = the held-out third) as float32
    `[n, 1, 8, 8]`. `normalize='standard'`: (x/16 − 0.5)/0.5 in [−1, 1]; 'none': x/16."""
    if split not in ("train", "test"):
        raise ConfigError(f"split must be 'train' or 'test', got {split!r}")
    if normalize not in ("standard", "none"):
        raise ConfigError(f"digits: normalize must be 'standard' or 'none', got {normalize!r}")
    pixels, labels = read_digits(find_digits(root))
    idx = stratified_split(labels)[split]
    x = torch.from_numpy(pixels[idx].astype(np.float32) / 16.0).unsqueeze(1)
    if normalize == "standard":
        x = (x - 0.5) / 0.5
    return ArrayDataset(x, torch.from_numpy(labels[idx]), name=f"digits-{split}", num_classes=10)


def fetch_digits(dest: Path) -> Path:
    """`pip download --no-deps --only-binary=:all: scikit-learn` into a temporary folder and
    extract `digits.csv.gz` into `dest/digits`. A cached file is reused if it reads whole (a
    gzip CSV of 64 pixels 0..16 + a label 0..9 per row); a damaged one is logged, deleted and
    fetched again."""
    from efficientdl.data.fetch import _run, write_atomic

    log = get_logger("data")
    folder = dest / "digits"
    target = folder / FILE_NAME
    if target.is_file():
        try:
            parse_digits(target.read_bytes(), target)
            log.info("%s: read whole, verified", target)
            return folder
        except DatasetFormatError as err:
            log.warning("%s; deleting it and fetching it again", err)
            target.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    hint = f"check the network/pip, or put {FILE_NAME} from a scikit-learn wheel into {folder}"
    with tempfile.TemporaryDirectory(prefix="efficientdl-digits-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               PACKAGE, "-d", tmp]  # fmt: skip
        _run(cmd, cwd=Path(tmp), hint=hint)
        wheels = sorted(Path(tmp).glob("scikit_learn-*.whl"))
        if not wheels:
            raise FetchError(f"pip download left no scikit_learn-*.whl; {hint}")
        try:
            with zipfile.ZipFile(wheels[-1]) as wheel:
                payload = wheel.read(WHEEL_MEMBER)
        except (KeyError, zipfile.BadZipFile) as err:
            raise FetchError(f"{wheels[-1].name}: no {WHEEL_MEMBER} ({err})") from err
        try:
            parse_digits(payload, Path(wheels[-1].name) / WHEEL_MEMBER, fix="nothing was kept")
        except DatasetFormatError as err:
            raise FetchError(str(err)) from err
    write_atomic(target, payload)
    return folder
