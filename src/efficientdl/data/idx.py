"""IDX files (the MNIST / Fashion-MNIST format): big-endian header, then raw row-major data.

Header: two zero bytes, a type code (0x08 = uint8, ...), the number of dimensions, then one
big-endian uint32 per dimension. Images are magic 0x00000803 (uint8, 3-D), labels 0x00000801.
Files may be gzip-compressed (detected from the content, not the name).
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from efficientdl.data.cache import DatasetFormatError, DatasetNotFoundError, refetch_hint

IMAGE_MAGIC = 0x00000803
LABEL_MAGIC = 0x00000801

_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_SPLIT_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _read_bytes(path: Path) -> bytes:
    """The file's content, gunzipped when it starts with the gzip magic."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise DatasetFormatError(f"{path}: corrupt gzip data ({err})") from err
    return raw


def read_idx(path: str | os.PathLike, *, magic: int | None = None) -> np.ndarray:
    """Read an IDX file (plain or gzip) into a native-endian numpy array.

    `magic` (e.g. IMAGE_MAGIC) makes any other header a `DatasetFormatError` naming the file.
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise DatasetFormatError(f"{path}: too short for an IDX header ({len(raw)} bytes)")
    found = int.from_bytes(raw[:4], "big")
    if magic is not None and found != magic:
        raise DatasetFormatError(f"{path}: bad IDX magic 0x{found:08X}, expected 0x{magic:08X}")
    type_code, ndim = raw[2], raw[3]
    if raw[:2] != b"\x00\x00" or type_code not in _TYPES:
        raise DatasetFormatError(f"{path}: not an IDX file (magic 0x{found:08X})")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetFormatError(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = _TYPES[type_code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DatasetFormatError(
            f"{path}: IDX header says shape {shape} ({expected} bytes) but the file holds "
            f"{len(raw) - header} data bytes"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write `array` as an IDX file (gzip-compressed when the name ends in `.gz`)."""
    path = Path(path)
    array = np.asarray(array)
    codes = {dt.str.lstrip("<>|="): code for code, dt in _TYPES.items()}
    key = array.dtype.str.lstrip("<>|=")
    if key not in codes:
        raise ValueError(f"write_idx: unsupported dtype {array.dtype}")
    code = codes[key]
    header = bytes([0, 0, code, array.ndim]) + b"".join(
        int(n).to_bytes(4, "big") for n in array.shape
    )
    payload = header + np.ascontiguousarray(array, dtype=_TYPES[code]).tobytes()
    if path.suffix == ".gz":
        payload = gzip.compress(payload, compresslevel=1, mtime=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(payload)
    return path


def find_idx_file(folder: Path, stem: str) -> Path | None:
    """`folder/stem[.gz]`, also accepting the dotted variant `train-images.idx3-ubyte`."""
    for name in (stem, stem.replace("-idx", ".idx")):
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def idx_split_files(folder: Path, split: str) -> tuple[Path, Path] | None:
    """The (images, labels) IDX files of `split` ('train' or 'test') in `folder`, if both exist."""
    images, labels = (find_idx_file(folder, stem) for stem in _SPLIT_STEMS[split])
    if images is None or labels is None:
        return None
    return images, labels


def read_idx_split(
    folder: Path, split: str, *, dataset: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images `[n, rows, cols]` and int64 labels `[n]` of `split` from IDX files.

    `dataset` (a fetchable name such as 'fashion-mnist') adds the `efficientdl data fetch` fix to
    the error raised for a damaged file.
    """
    files = idx_split_files(folder, split)
    if files is None:
        stems = " and ".join(f"{s}[.gz]" for s in _SPLIT_STEMS[split])
        raise DatasetNotFoundError(f"{folder}: missing {stems}")
    try:
        images = read_idx(files[0], magic=IMAGE_MAGIC)
        labels = read_idx(files[1], magic=LABEL_MAGIC)
        if images.shape[0] != labels.shape[0]:
            raise DatasetFormatError(
                f"{files[0]} holds {images.shape[0]} images but {files[1]} "
                f"holds {labels.shape[0]} labels"
            )
    except DatasetFormatError as err:
        if dataset is None:
            raise
        raise DatasetFormatError(f"{err}; {refetch_hint(dataset)}") from err
    return images, labels.astype(np.int64)
