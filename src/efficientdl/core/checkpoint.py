"""Atomic checkpoints and RNG state capture, so a killed run resumes exactly.

Checkpoints are data, never code: they hold tensors and plain Python values only (the RNG
states too), and `load_checkpoint` reads them with `torch.load(weights_only=True)`, so a crafted
file in a shared run folder cannot run anything. Checkpoints of older versions, whose numpy RNG
state is a pickled numpy array, load the same way: numpy's array reconstruction is the one extra
thing allowed."""

from __future__ import annotations

import os
import pickle
import random
import re
import struct
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from efficientdl.core.errors import DataError, RunFolderError, UnsafeFileError


def rng_state() -> dict[str, Any]:
    """Snapshot of every random generator a run uses (python, numpy, torch CPU and CUDA)."""
    version, words, gauss = random.getstate()
    kind, key, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"version": version, "state": torch.tensor(words), "gauss": gauss},
        "numpy": {
            "kind": kind,
            "key": torch.from_numpy(key.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore generators captured by `rng_state` (or by older versions, as raw tuples)."""
    py, npy = state["python"], state["numpy"]
    if isinstance(py, dict):
        py = (py["version"], tuple(py["state"].tolist()), py["gauss"])
    if isinstance(npy, dict):
        key = npy["key"].numpy().astype(np.uint32)
        npy = (npy["kind"], key, npy["pos"], npy["has_gauss"], npy["cached"])
    random.setstate(py)
    np.random.set_state(npy)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write `state` atomically: temp file in the same folder, fsync, rename, fsync the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            try:
                torch.save(state, handle)
            except RuntimeError as err:  # torch's zip writer hides a Ctrl-C during the write
                if isinstance(err.__context__, KeyboardInterrupt):
                    raise err.__context__ from None
                raise
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def _numpy_array_globals() -> list:
    try:
        from numpy._core import multiarray  # numpy >= 2
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray
    rebuild = multiarray._reconstruct
    # checkpoints written under numpy 1.x name `numpy.core.multiarray`, under 2.x `numpy._core`
    names = [(rebuild, f"{root}.multiarray._reconstruct") for root in ("numpy.core", "numpy._core")]
    return [*names, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def load_checkpoint(path: str | Path, *, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint` as data only (`weights_only=True`).

    A file that asks for any other object is refused with UnsafeFileError (nothing in it runs);
    a missing file is a RunFolderError, a truncated or damaged one a DataError."""
    path = Path(path)
    if not path.is_file():
        raise RunFolderError(f"checkpoint {path} does not exist")
    try:
        with torch.serialization.safe_globals(_numpy_array_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if "Unsupported operand" in str(err):  # bytes that are no pickle: damaged, not unsafe
            raise DataError(
                f"checkpoint {path} is damaged or truncated (not a pickle); delete it"
            ) from None
        found = re.search(r"GLOBAL (\S+)", str(err))
        what = f"it asks for {found.group(1)}" if found else "it asks for objects"
        raise UnsafeFileError(
            f"checkpoint {path} was not loaded: {what}, and checkpoints may hold only tensors "
            "and plain data (nothing in it ran)"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        first = str(err).split(". ")[0]
        raise DataError(f"checkpoint {path} is damaged or truncated ({first}); delete it") from None
    except (KeyError, IndexError, AssertionError, struct.error) as err:
        # what the weights-only unpickler raises on cut or garbled pickle bytes
        raise DataError(
            f"checkpoint {path} is damaged or truncated (unreadable pickle data: "
            f"{type(err).__name__}); delete it"
        ) from None
