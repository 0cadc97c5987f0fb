"""The image-classification datasets read from local files (MNIST, Fashion-MNIST, the 8×8
digits, CIFAR-10, N-MNIST) as `dataset` entries of `efficientdl.core.registry`, and the
look-ups by name: `get_dataset`, `known`, `available`.

Each entry builds a `LocalDataset` (its loader, its finder and what to do when its files are
missing), so the registry lists what the loaders accept and where each dataset comes from.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from efficientdl.core.errors import ConfigError
from efficientdl.core.registry import entries, register
from efficientdl.data.cache import DatasetFormatError, DatasetNotFoundError
from efficientdl.data.cifar10 import find_cifar10, load_cifar10
from efficientdl.data.digits import find_digits, load_digits
from efficientdl.data.fashion_mnist import find_fashion_mnist, load_fashion_mnist
from efficientdl.data.mnist import find_mnist, load_mnist
from efficientdl.data.nmnist import find_nmnist, load_nmnist


@dataclass(frozen=True)
class LocalDataset:
    """A dataset read from local files: `load(split, root=..., **options)` builds a split,
    `find(root)` is the path its files were found at (DatasetNotFoundError or
    DatasetFormatError otherwise), `missing` says how to get them."""

    load: Callable[..., Any]
    find: Callable[..., Path]
    missing: str


def _local(name: str, *, doc: str, input_shape: tuple[int, ...], **source: Any) -> None:
    register("dataset", name, input_shape=input_shape, doc=doc, **source)(LocalDataset)


_local("mnist", doc="MNIST handwritten digits: 60,000 / 10,000 grey 28×28 images, 10 classes",
       input_shape=(1, 28, 28), load=load_mnist, find=find_mnist,
       missing="run `efficientdl data fetch mnist`")  # fmt: skip
_local("fashion-mnist", doc="Fashion-MNIST clothes: 60,000 / 10,000 grey 28×28 images, 10 classes",
       input_shape=(1, 28, 28), load=load_fashion_mnist, find=find_fashion_mnist,
       missing="run `efficientdl data fetch fashion-mnist`")  # fmt: skip
_local("cifar10", doc="CIFAR-10: 50,000 / 10,000 colour 32×32 images, 10 classes",
       input_shape=(3, 32, 32), load=load_cifar10, find=find_cifar10,
       missing="extract cifar-10-python.tar.gz, pass --set data_root=DIR")  # fmt: skip
_local("nmnist", doc="N-MNIST: 60,000 / 10,000 event recordings of MNIST digits, binned into "
       "T frames of 2×34×34 (default T = 30), 10 classes",
       input_shape=(2, 34, 34), load=load_nmnist, find=find_nmnist,
       missing="extract N-MNIST Train/ and Test/, pass --set data_root=DIR")  # fmt: skip
_local("digits", doc="scikit-learn 8×8 digits: 1,797 images (2/3 train, 1/3 test), 10 classes",
       input_shape=(1, 8, 8), load=load_digits, find=find_digits,
       missing="run `efficientdl data fetch digits`")  # fmt: skip


def _sources() -> dict[str, LocalDataset]:
    return {e.name: e.create() for e in entries("dataset") if e.build is LocalDataset}


def known() -> list[str]:
    """The dataset names `get_dataset` accepts."""
    return sorted(_sources())


def _source(name: str) -> LocalDataset:
    sources = _sources()
    if name not in sources:
        raise ConfigError(f"unknown dataset {name!r}; known: {', '.join(sorted(sources))}")
    return sources[name]


def get_dataset(
    name: str, split: str, *, root: str | os.PathLike | None = None, **options: Any
) -> Any:
    """Load dataset `name` ('mnist', 'fashion-mnist', 'cifar10', 'nmnist', 'digits'), split
    'train'/'test'.

    `options` go to the loader (mnist: normalize; fashion-mnist: normalize; cifar10: augment;
    nmnist: T, binning; digits: normalize). Every dataset has `__len__`,
    `get_batch(indices, generator)` and `num_classes`.
    """
    loader = _source(name).load
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
    for name, source in sorted(_sources().items()):
        try:
            rows.append((name, str(source.find(root))))
        except (DatasetNotFoundError, DatasetFormatError):
            rows.append((name, f"missing ({source.missing})"))
    return rows
