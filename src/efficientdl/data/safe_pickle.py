"""Read pickled datasets (the MNIST `mnist.pkl.gz`, the CIFAR-10 python batches) as data only.

A pickle can name any importable callable and have the unpickler call it, so a crafted file in
the data cache could run code. `load_data_pickle` resolves only the names that numpy array
reconstruction needs; a file that asks for anything else is refused with `UnsafeFileError`
before that name is imported or called, so nothing in the file runs.

Allowed names (module, name), and why:
- `numpy.core.multiarray._reconstruct` (Python 2 / numpy 1 files such as the genuine MNIST and
  CIFAR-10 pickles) and `numpy._core.multiarray._reconstruct` (files written by numpy 2):
  creates the empty array that `ndarray.__setstate__` then fills;
- `numpy.ndarray`, `numpy.dtype`: the array class and its element type;
- `_codecs.encode`, only to Latin-1: how Python 3's pickle protocols 0–2 store `bytes` (the raw
  array data of a file written with `pickle.dump(obj, protocol=2)`).
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from efficientdl.core.errors import DataError, UnsafeFileError

_LATIN1 = {"latin1", "latin-1", "latin_1", "iso-8859-1", "iso8859-1", "l1"}


def _reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class DataUnpickler(pickle.Unpickler):
    """An unpickler that builds numpy arrays, tuples, lists, dicts, strings and numbers only.

    Any other global, and any persistent id, is an `UnsafeFileError` naming `path` and what the
    file asked for.
    """

    def __init__(self, file, *, path: Path, encoding: str = "ASCII") -> None:
        super().__init__(file, encoding=encoding)
        self.path = path
        rebuild = _reconstruct()
        self._allowed = {
            ("numpy.core.multiarray", "_reconstruct"): rebuild,
            ("numpy._core.multiarray", "_reconstruct"): rebuild,
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): np.dtype,
            ("_codecs", "encode"): self._latin1_encode,
        }

    def _refuse(self, what: str) -> UnsafeFileError:
        return UnsafeFileError(
            f"{self.path}: refused to load: the file asks for {what}, which is not array data "
            "(nothing in it was run)"
        )

    def find_class(self, module: str, name: str) -> Any:
        found = self._allowed.get((module, name))
        if found is None:
            raise self._refuse(f"the global `{module}.{name}`")
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise self._refuse(f"the persistent object {str(pid)[:60]!r}")

    def _latin1_encode(self, obj: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        if not isinstance(obj, str) or str(encoding).lower() not in _LATIN1:
            raise self._refuse(f"`_codecs.encode` with encoding {str(encoding)[:40]!r}")
        return obj.encode("latin-1")


def _check_plain(obj: Any, path: Path) -> None:
    """Object arrays are refused too: only numeric/string arrays count as data."""
    seen: set[int] = set()
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, np.ndarray):
            if item.dtype.hasobject:
                raise DataError(f"{path}: holds an array of Python objects, not plain data")
        elif isinstance(item, (tuple, list, dict)) and id(item) not in seen:
            seen.add(id(item))
            stack.extend(item.values() if isinstance(item, dict) else item)
            if isinstance(item, dict):
                stack.extend(item.keys())


def load_data_pickle(raw: bytes, path: str | Path, *, encoding: str = "ASCII") -> Any:
    """Unpickle `raw` (the content of the file at `path`) allowing numpy arrays and plain Python
    containers only. `encoding` decodes Python 2 `str` ('latin1' → str, 'bytes' → bytes)."""
    path = Path(path)
    result = DataUnpickler(io.BytesIO(raw), path=path, encoding=encoding).load()
    _check_plain(result, path)
    return result
