"""Seeding, device selection and run folders."""

from __future__ import annotations

import hashlib
import random
import time
from pathlib import Path

import numpy as np
import torch

from efficientdl.core.errors import ConfigError


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA) from one integer."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def select_device(preference: str = "auto") -> torch.device:
    """'auto' → CUDA when available, else CPU; otherwise the named device (validated)."""
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(preference)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(
            f"config key 'device': {preference!r} is no device; expected auto, cpu, cuda or cuda:N"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"config key 'device': {preference!r} requested but CUDA is not available here"
        )
    return device


def default_run_dir(out_dir: str | Path, name: str) -> Path:
    """`<out_dir>/<name>-<YYYYmmdd-HHMMSS>`: where a run goes without `--run-dir` (not created;
    under torchrun rank 0's choice is broadcast, see `core.distributed.broadcast_object`)."""
    return Path(out_dir) / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def derive_seed(seed: int, *parts) -> int:
    """A 63-bit seed for one random stream of a run: SHA-256 of `"seed:part1:part2..."`.

    Streams (an epoch's order, a generation's re-initialisation, a rank's augmentation) get
    independent, reproducible seeds from the one user seed without arithmetic collisions."""
    digest = hashlib.sha256(":".join(map(str, (seed, *parts))).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1
