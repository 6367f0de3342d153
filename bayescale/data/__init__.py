"""Data: the data set catalogue and verified downloads, file readers, the built-in sets shipped
with the package, the in-memory loader and the restricted unpickler for CIFAR batches.
"""

from __future__ import annotations

from .catalogue import (
    DATASETS,
    default_root,
    download,
    list_datasets,
    load_cifar10,
    load_cifar100,
    load_dataset,
    load_diabetes_dataset,
    load_digits_dataset,
    load_fashion_mnist,
    load_fashion_mnist_small,
    load_mnist,
    load_mnist_small,
    make_heteroscedastic_1d,
    make_synthetic_classification,
    read_mnist_npz,
)
from .datasets import (
    CIFAR10_CLASSES,
    FASHION_MNIST_CLASSES,
    MNIST_CLASSES,
    Dataset,
    TensorSplit,
    UnsafePickleError,
    read_cifar_dir,
    read_idx,
    read_mnist_dir,
)
from .loader import (
    CropFlip,
    TensorLoader,
)

__all__ = [
    "DATASETS",
    "default_root",
    "download",
    "list_datasets",
    "load_dataset",
    "load_mnist",
    "load_fashion_mnist",
    "load_cifar10",
    "load_cifar100",
    "load_mnist_small",
    "load_fashion_mnist_small",
    "read_mnist_npz",
    "load_digits_dataset",
    "load_diabetes_dataset",
    "make_synthetic_classification",
    "make_heteroscedastic_1d",
    "Dataset",
    "TensorSplit",
    "UnsafePickleError",
    "read_idx",
    "read_mnist_dir",
    "read_cifar_dir",
    "MNIST_CLASSES",
    "FASHION_MNIST_CLASSES",
    "CIFAR10_CLASSES",
    "TensorLoader",
    "CropFlip",
]
