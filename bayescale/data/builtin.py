"""Data sets that need no files from the user.

Generated sets (``synthetic``, ``heteroscedastic-1d``), scikit-learn's bundled sets (``digits``,
``diabetes``; need ``pip install "bayescale[data]"``) and ``mnist-small``, a real MNIST subset
shipped inside the package (``bayescale/data/files/mnist-small/``, read through
:mod:`importlib.resources` so it also works from an installed wheel or zip, MD5-checked on load).
"""

from __future__ import annotations

import hashlib
import math
from importlib import resources
from importlib.resources.abc import Traversable

import numpy as np
import torch

from .datasets import (
    FASHION_MNIST_CLASSES,
    IDX_IMAGES_MAGIC,
    IDX_LABELS_MAGIC,
    MNIST_CLASSES,
    Dataset,
    TensorSplit,
    mnist_arrays_to_dataset,
    parse_idx,
)

__all__ = [
    "MNIST_SMALL_MD5", "load_mnist_small", "FASHION_MNIST_SMALL_MD5", "load_fashion_mnist_small",
    "load_digits_dataset", "load_diabetes_dataset",
    "make_synthetic_classification", "make_heteroscedastic_1d",
]

# MD5 of each shipped file; written by scripts/make_mnist_small.py (also in the folder's README).
MNIST_SMALL_MD5 = {
    "train-images-idx3-ubyte.gz": "ad4493c73c84641fe2fc5192c57ee4cc",
    "train-labels-idx1-ubyte.gz": "734f75e4b96a64b2e5c2b7a7bbf46f2a",
    "t10k-images-idx3-ubyte.gz": "e65562570d98a26914850f52f900e431",
    "t10k-labels-idx1-ubyte.gz": "c22811ab5845e193a5d25a4f9b6d5de0",
}
# The first 2000 Fashion-MNIST test images; written by scripts/make_fashion_mnist_small.py.
FASHION_MNIST_SMALL_MD5 = {
    "t10k-images-idx3-ubyte.gz": "60446bba50d300cf329f13c228582885",
    "t10k-labels-idx1-ubyte.gz": "3a5ecd4e1a5ee7a9568063426d752435",
}
_REINSTALL = ("reinstall bayescale (pip install --force-reinstall --no-deps bayescale; in a "
              "source checkout: git checkout -- bayescale/data/files/mnist-small)")


def _mnist_small_files() -> Traversable:
    """The folder of the shipped subset (a hook the tests point at a temporary copy)."""
    return resources.files("bayescale.data").joinpath("files", "mnist-small")


def _fashion_mnist_small_files() -> Traversable:
    """The folder of the shipped Fashion-MNIST test subset (a hook for the tests)."""
    return resources.files("bayescale.data").joinpath("files", "fashion-mnist-small")


def _read_verified(folder: Traversable, name: str, md5s: dict[str, str] = MNIST_SMALL_MD5,
                   label: str = "mnist-small") -> bytes:
    entry = folder.joinpath(name)
    reinstall = _REINSTALL.replace("mnist-small", label)
    try:
        data = entry.read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as err:
        raise FileNotFoundError(f"{label}: bundled file {entry} is missing; the "
                                f"installation is incomplete: {reinstall}") from err
    got = hashlib.md5(data, usedforsecurity=False).hexdigest()
    if got != md5s[name]:
        raise ValueError(f"{label}: bundled file {entry} is corrupt (md5 {got}, expected "
                         f"{md5s[name]}); {reinstall}")
    return data


def load_mnist_small() -> TensorSplit:
    """A real MNIST subset shipped with the package: the first 10000 training and 2000 test digits.

    Same layout as :func:`bayescale.data.load_mnist`: x ``[N, 1, 28, 28]`` float32 in [0, 1],
    int64 labels, 10 classes. No download or data folder; every file is MD5-checked.

    Raises:
        FileNotFoundError: A shipped file is missing (the message says to reinstall).
        ValueError: A shipped file fails its MD5 check (likewise).
    """
    folder = _mnist_small_files()
    splits = []
    for prefix, split in (("train", "train"), ("t10k", "test")):
        images, labels = (f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz")
        x = parse_idx(_read_verified(folder, images), folder.joinpath(images), IDX_IMAGES_MAGIC)
        y = parse_idx(_read_verified(folder, labels), folder.joinpath(labels), IDX_LABELS_MAGIC)
        splits.append(mnist_arrays_to_dataset(x, y, f"mnist-small/{split}", images, labels))
    return TensorSplit(*splits, "mnist-small", num_classes=10, classes=MNIST_CLASSES)


def load_fashion_mnist_small() -> TensorSplit:
    """A real Fashion-MNIST test subset shipped with the package: the first 2000 test images.

    The out-of-distribution set for MNIST models (``bayescale evaluate --ood``, the quickstart).
    The test split is ``[2000, 1, 28, 28]`` float32 in [0, 1] with int64 labels (10 clothing
    classes); the training split is empty (only test images are shipped). MD5-checked.

    Raises:
        FileNotFoundError: A shipped file is missing (the message says to reinstall).
        ValueError: A shipped file fails its MD5 check (likewise).
    """
    folder, name = _fashion_mnist_small_files(), "fashion-mnist-small"
    images, labels = "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"
    x = parse_idx(_read_verified(folder, images, FASHION_MNIST_SMALL_MD5, name),
                  folder.joinpath(images), IDX_IMAGES_MAGIC)
    y = parse_idx(_read_verified(folder, labels, FASHION_MNIST_SMALL_MD5, name),
                  folder.joinpath(labels), IDX_LABELS_MAGIC)
    test = mnist_arrays_to_dataset(x, y, f"{name}/test", images, labels)
    train = Dataset(test.x[:0], test.y[:0], f"{name}/train (empty: only test images ship)", 10)
    return TensorSplit(train, test, name, num_classes=10, classes=FASHION_MNIST_CLASSES)


def _split(n: int, test_fraction: float, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    n_test = round(n * test_fraction)
    if not 0 < n_test < n:
        raise ValueError(f"test_fraction={test_fraction} leaves an empty split of n={n}")
    perm = torch.randperm(n, generator=gen)
    return perm[n_test:], perm[:n_test]


def make_synthetic_classification(n: int = 1000, num_classes: int = 10,
                                  shape: tuple[int, ...] = (1, 8, 8), seed: int = 0,
                                  noise: float = 1.0, test_fraction: float = 0.2) -> TensorSplit:
    """Gaussian class clusters: ``x = center[y] + noise * N(0, I)``, centers ``N(0, I)``.

    Balanced classes; with the default noise the classes are almost separable (learnable).
    """
    gen = torch.Generator().manual_seed(seed)
    dim = math.prod(shape)
    centers = torch.randn(num_classes, dim, generator=gen)
    y = (torch.arange(n) % num_classes)[torch.randperm(n, generator=gen)]
    x = (centers[y] + noise * torch.randn(n, dim, generator=gen)).view(n, *shape)
    tr, te = _split(n, test_fraction, gen)
    name = "synthetic"
    return TensorSplit(Dataset(x[tr], y[tr], f"{name}/train", num_classes),
                       Dataset(x[te], y[te], f"{name}/test", num_classes), name, num_classes)


def make_heteroscedastic_1d(n: int = 1000, seed: int = 0,
                            test_fraction: float = 0.2) -> TensorSplit:
    """1-D regression with input-dependent noise for aleatoric-uncertainty checks.

    ``x ~ U(-4, 4)``, ``y = x sin(x) + sd(x) * N(0, 1)`` with ``sd(x) = 0.05 + 0.1 |x|``.
    x is ``[N, 1]``, y ``[N]``; each split's ``noise_sd`` holds the true ``sd(x)``.
    """
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, generator=gen) * 8.0 - 4.0
    sd = 0.05 + 0.1 * x[:, 0].abs()
    y = x[:, 0] * torch.sin(x[:, 0]) + sd * torch.randn(n, generator=gen)
    tr, te = _split(n, test_fraction, gen)
    name = "heteroscedastic-1d"
    return TensorSplit(Dataset(x[tr], y[tr], f"{name}/train", noise_sd=sd[tr]),
                       Dataset(x[te], y[te], f"{name}/test", noise_sd=sd[te]), name)


def _sklearn():
    try:
        from sklearn import datasets, model_selection
    except ImportError as err:
        msg = 'this data set needs scikit-learn: pip install "bayescale[data]"'
        raise ImportError(msg) from err
    return datasets, model_selection


def load_digits_dataset(test_size: int = 360, seed: int = 0) -> TensorSplit:
    """scikit-learn's 1797 8x8 digits as ``[N, 1, 8, 8]`` in [0, 1]; stratified 1437/360 split."""
    datasets, model_selection = _sklearn()
    bunch = datasets.load_digits()
    x = torch.from_numpy((bunch.data / 16.0).astype(np.float32)).view(-1, 1, 8, 8)
    y = torch.from_numpy(bunch.target.astype(np.int64))
    tr, te = model_selection.train_test_split(
        np.arange(len(y)), test_size=test_size, random_state=seed, stratify=bunch.target)
    tr, te = torch.from_numpy(tr), torch.from_numpy(te)
    return TensorSplit(Dataset(x[tr], y[tr], "digits/train", 10),
                       Dataset(x[te], y[te], "digits/test", 10), "digits", 10, MNIST_CLASSES)


def load_diabetes_dataset(test_size: float = 0.2, seed: int = 0,
                          standardize_target: bool = True) -> TensorSplit:
    """scikit-learn's diabetes regression (442 x 10), standardised with train statistics.

    ``stats`` holds ``x_mean``, ``x_std``, ``y_mean``, ``y_std`` (target stats are 0/1 when
    ``standardize_target`` is False). Targets ``y`` are float32 ``[N]``.
    """
    datasets, model_selection = _sklearn()
    x_all, y_all = datasets.load_diabetes(return_X_y=True, scaled=False)
    xtr, xte, ytr, yte = model_selection.train_test_split(
        x_all, y_all, test_size=test_size, random_state=seed)
    x_mean, x_std = xtr.mean(0), xtr.std(0) + 1e-12
    y_mean, y_std = (ytr.mean(), ytr.std()) if standardize_target else (0.0, 1.0)

    def tensors(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = (x - x_mean) / x_std, (y - y_mean) / y_std
        return torch.from_numpy(xs.astype(np.float32)), torch.from_numpy(ys.astype(np.float32))

    stats = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in
             {"x_mean": x_mean, "x_std": x_std, "y_mean": y_mean, "y_std": y_std}.items()}
    return TensorSplit(Dataset(*tensors(xtr, ytr), "diabetes/train"),
                       Dataset(*tensors(xte, yte), "diabetes/test"), "diabetes", stats=stats)
