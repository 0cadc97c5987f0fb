"""N-MNIST event files and the official TSSL-BP preprocessing: saccade stabilisation, 3 ms bins,
binary frames `[T, 2, 34, 34]` with axes (polarity, x, y). No psp here (the model encodes).

Every event is 5 bytes, so opening a split checks that each `.bin` file's size is a multiple of
5: a damaged file is reported then, not when a batch first reads it mid-training.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from efficientdl.core.errors import ConfigError
from efficientdl.data.cache import (
    DatasetFormatError,
    DatasetNotFoundError,
    not_found,
    root_hint,
    search_dirs,
)

SIZE = 34
BIN_US = 3000
SACCADE_US = 105000
BINNINGS = ("official", "clean")
_SPLIT_DIRS = {"train": "Train", "test": "Test"}
_SUBDIRS = ("nmnist", "N-MNIST", "NMNIST")


def decode_events(raw: bytes | np.ndarray) -> dict[str, np.ndarray]:
    """Decode 5-byte events: x, y (uint8), polarity (bit 7 of byte 2), 23-bit timestamp in µs."""
    buf = np.frombuffer(raw, dtype=np.uint8) if isinstance(raw, bytes) else np.asarray(raw)
    if buf.size % 5:
        raise DatasetFormatError(f"event data has {buf.size} bytes, not a multiple of 5")
    ev = buf.reshape(-1, 5).astype(np.int64)
    return {
        "x": ev[:, 0],
        "y": ev[:, 1],
        "polarity": ev[:, 2] >> 7,
        "ts": ((ev[:, 2] & 0x7F) << 16) | (ev[:, 3] << 8) | ev[:, 4],
    }


def read_events(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Events of one N-MNIST `.bin` file: int64 arrays 'x', 'y', 'polarity' (1 = ON), 'ts' (µs)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetNotFoundError(f"{path} does not exist; {root_hint('nmnist', fetchable=False)}")
    try:
        return decode_events(path.read_bytes())
    except DatasetFormatError as err:
        raise DatasetFormatError(f"{path}: corrupt N-MNIST event file ({err})") from err


def saccade_shift(ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The official stabilisation offsets (dx, dy) in float64 for timestamps `ts` (µs)."""
    t = np.asarray(ts, dtype=np.float64)
    s = float(SACCADE_US)
    first, second = t <= s, (t > s) & (t <= 2 * s)
    dx_late = np.where(second, 3.5 + 3.5 * (t - s) / s, 7 - 7 * (t - 2 * s) / s)
    dx = np.where(first, 3.5 * t / s, dx_late)
    dy = np.where(first, 7 * t / s, np.where(second, 7 - 7 * (t - s) / s, 0.0))
    return dx, dy


def stabilize(events: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Undo the saccades: x' = floor(x − dx + 0.5) (MATLAB round, halves up), same for y;
    events leaving the 34×34 sensor are dropped."""
    dx, dy = saccade_shift(events["ts"])
    x = np.floor(events["x"] - dx + 0.5).astype(np.int64)
    y = np.floor(events["y"] - dy + 0.5).astype(np.int64)
    keep = (x >= 0) & (x < SIZE) & (y >= 0) & (y < SIZE)
    return {
        "x": x[keep],
        "y": y[keep],
        "polarity": np.asarray(events["polarity"])[keep],
        "ts": np.asarray(events["ts"])[keep],
    }


def frame_index(ts: np.ndarray, T: int, *, binning: str = "official") -> np.ndarray:
    """Frame of each event (−1 = dropped). b = ceil(ts/3000); 'official': k = b − 1 for
    1 ≤ b ≤ T − 1, b = 0 → T − 1, b ≥ T dropped; 'clean': k = max(b, 1) − 1 kept if k < T."""
    if binning not in BINNINGS:
        raise ConfigError(f"binning must be one of {BINNINGS}, got {binning!r}")
    b = -(-np.asarray(ts, dtype=np.int64) // BIN_US)
    if binning == "clean":
        k = np.maximum(b, 1) - 1
        return np.where(k < T, k, -1)
    return np.where(b == 0, T - 1, np.where(b < T, b - 1, -1))


def events_to_frames(
    events: dict[str, np.ndarray], T: int, binning: str = "official", *, stabilise: bool = True
) -> torch.Tensor:
    """Binary frames float32 `[T, 2, 34, 34]`, axes (polarity OFF=0/ON=1, x, y), from raw events
    (stabilised here unless `stabilise=False`)."""
    if T < 1:
        raise ConfigError(f"T must be >= 1, got {T}")
    ev = stabilize(events) if stabilise else events
    k = frame_index(ev["ts"], T, binning=binning)
    keep = k >= 0
    frames = np.zeros((T, 2, SIZE, SIZE), dtype=np.float32)
    frames[k[keep], ev["polarity"][keep], ev["x"][keep], ev["y"][keep]] = 1.0
    return torch.from_numpy(frames)


def find_nmnist(root: str | os.PathLike | None = None) -> Path:
    """The N-MNIST folder holding `Train/` and `Test/` (root itself, or root/nmnist, N-MNIST,
    NMNIST; default root: the data cache)."""
    dirs = search_dirs(root, _SUBDIRS)
    for folder in dirs:
        if all((folder / d).is_dir() for d in _SPLIT_DIRS.values()):
            return folder
    raise not_found("N-MNIST", "Train/ and Test/ folders", dirs,
                    root_hint("nmnist", fetchable=False))  # fmt: skip


def _list_samples(folder: Path) -> tuple[list[Path], list[int]]:
    files: list[Path] = []
    labels: list[int] = []
    for digit in range(10):
        sub = folder / str(digit)
        if not sub.is_dir():
            continue
        names = sorted(p for p in sub.iterdir() if p.suffix == ".bin")
        files += names
        labels += [digit] * len(names)
    if not files:
        raise DatasetNotFoundError(
            f"{folder}: no <digit>/*.bin event files; {root_hint('nmnist', fetchable=False)}"
        )
    _check_sizes(folder, files)
    return files, labels


def _check_sizes(folder: Path, files: list[Path], *, show: int = 3) -> None:
    """DatasetFormatError listing the first `show` files whose size is not a multiple of 5."""
    bad = []
    for path in files:
        size = path.stat().st_size
        if size % 5:
            bad.append(f"{path.relative_to(folder)} ({size} bytes)")
    if bad:
        more = f" and {len(bad) - show} more" if len(bad) > show else ""
        raise DatasetFormatError(
            f"{folder}: {len(bad)} N-MNIST event file(s) whose size is not a multiple of 5 bytes "
            f"(truncated or not N-MNIST): {', '.join(bad[:show])}{more}; replace them with the "
            "files of the N-MNIST Train.zip/Test.zip"
        )


class NMNIST:
    """N-MNIST `split` ('train' / 'test'), read lazily: each access decodes one `.bin` file.

    `__getitem__(i)` → (frames `[T, 2, 34, 34]`, label);
    `get_batch` → time-first frames `[T, B, 2, 34, 34]` and labels `[B]`.
    """

    num_classes = 10

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        split: str = "train",
        T: int = 30,
        binning: str = "official",
    ) -> None:
        if split not in _SPLIT_DIRS:
            raise ConfigError(f"split must be 'train' or 'test', got {split!r}")
        if binning not in BINNINGS:
            raise ConfigError(f"binning must be one of {BINNINGS}, got {binning!r}")
        if not isinstance(T, (int, np.integer)) or isinstance(T, bool) or T < 1:
            raise ConfigError(f"N-MNIST: T must be an int >= 1, got {T!r}")
        self.root = find_nmnist(root)
        self.split, self.T, self.binning = split, int(T), binning
        self.name = f"nmnist-{split}"
        self.files, labels = _list_samples(self.root / _SPLIT_DIRS[split])
        self.labels = torch.tensor(labels, dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.files)

    def __repr__(self) -> str:
        return f"NMNIST({str(self.root)!r}, {self.split!r}, T={self.T}, binning={self.binning!r})"

    def frames(self, i: int) -> torch.Tensor:
        """Frames `[T, 2, 34, 34]` of sample `i`."""
        return events_to_frames(read_events(self.files[i]), self.T, self.binning)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.frames(int(i)), self.labels[int(i)]

    def get_batch(
        self,
        indices: torch.Tensor | Sequence[int],
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Frames `[T, B, 2, 34, 34]` (time first) and labels `[B]`; `generator` is unused."""
        idx = torch.as_tensor(indices, dtype=torch.int64).reshape(-1)
        if idx.numel() == 0:
            return torch.zeros(self.T, 0, 2, SIZE, SIZE), self.labels[idx]
        x = torch.stack([self.frames(int(i)) for i in idx], dim=1)
        return x, self.labels[idx]


def load_nmnist(
    split: str, *, root: str | os.PathLike | None = None, T: int = 30, binning: str = "official"
) -> NMNIST:
    """N-MNIST `split`, each recording binned into `T` frames by `binning` (see `frame_index`)."""
    return NMNIST(root, split, T=T, binning=binning)
