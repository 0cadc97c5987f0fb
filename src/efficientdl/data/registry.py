"""Dataset names → loaders, and what is available locally."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from typing import Any

from efficientdl.core.errors import ConfigError
from efficientdl.data.cache import DatasetFormatError, DatasetNotFoundError
from efficientdl.data.cifar10 import find_cifar10, load_cifar10
from efficientdl.data.digits import find_digits, load_digits
from efficientdl.data.fashion_mnist import find_fashion_mnist, load_fashion_mnist
from efficientdl.data.mnist import find_mnist, load_mnist
from efficientdl.data.nmnist import NMNIST, find_nmnist


def _nmnist(split: str, *, root: str | os.PathLike | None = None, T: int = 30,
            binning: str = "official") -> NMNIST:
    return NMNIST(root, split, T=T, binning=binning)


_LOADERS: dict[str, Callable[..., Any]] = {
    "mnist": load_mnist,
    "fashion-mnist": load_fashion_mnist,
    "cifar10": load_cifar10,
    "nmnist": _nmnist,
    "digits": load_digits,
}
_FINDERS: dict[str, Callable[..., Any]] = {
    "mnist": find_mnist,
    "fashion-mnist": find_fashion_mnist,
    "cifar10": find_cifar10,
    "nmnist": find_nmnist,
    "digits": find_digits,
}
_MISSING = {
    "mnist": "missing (run `efficientdl data fetch mnist`)",
    "fashion-mnist": "missing (run `efficientdl data fetch fashion-mnist`)",
    "cifar10": "missing (extract cifar-10-python.tar.gz, pass --set data_root=DIR)",
    "nmnist": "missing (extract N-MNIST Train/ and Test/, pass --set data_root=DIR)",
    "digits": "missing (run `efficientdl data fetch digits`)",
}


def known() -> list[str]:
    """The dataset names `get_dataset` accepts."""
    return sorted(_LOADERS)


def _check_name(name: str) -> str:
    if name not in _LOADERS:
        raise ConfigError(f"unknown dataset {name!r}; known: {', '.join(known())}")
    return name


def get_dataset(
    name: str, split: str, *, root: str | os.PathLike | None = None, **options: Any
) -> Any:
    """Load dataset `name` ('mnist', 'fashion-mnist', 'cifar10', 'nmnist', 'digits'), split
    'train'/'test'.

    `options` go to the loader (mnist: normalize; fashion-mnist: normalize; cifar10: augment;
    nmnist: T, binning; digits: normalize). Every dataset has `__len__`,
    `get_batch(indices, generator)` and `num_classes`.
    """
    loader = _LOADERS[_check_name(name)]
    if split not in ("train", "test"):
        raise ConfigError(f"{name}: split must be 'train' or 'test', got {split!r}")
    allowed = [p for p in inspect.signature(loader).parameters if p not in ("split", "root")]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(
            f"{name}: unknown option(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}"
        )
    return loader(split, root=root, **options)


def available(root: str | os.PathLike | None = None) -> list[tuple[str, str]]:
    """(name, where it was found or why it is missing) for every known dataset."""
    rows = []
    for name in known():
        try:
            rows.append((name, str(_FINDERS[name](root))))
        except (DatasetNotFoundError, DatasetFormatError):
            rows.append((name, _MISSING[name]))
    return rows
