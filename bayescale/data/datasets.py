"""Readers for the canonical image data set files, returning in-memory tensors.

Formats: MNIST / Fashion-MNIST IDX files (gzipped or raw), the Keras ``mnist.npz``, and
CIFAR-10 / CIFAR-100 in both the binary and the python-pickle versions (read through the
restricted unpickler of :mod:`bayescale.data.safe_pickle`). Images come back as float32
``[N, C, H, W]`` in ``[0, 1]``; CIFAR can additionally have the per-pixel training mean subtracted.
"""

from __future__ import annotations

import gzip
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .safe_pickle import UnsafePickleError, load_array_pickle

__all__ = [
    "Dataset",
    "TensorSplit",
    "UnsafePickleError",
    "all_finite",
    "parse_idx",
    "read_idx",
    "mnist_arrays_to_dataset",
    "read_mnist_dir",
    "read_mnist_npz",
    "read_cifar_binary",
    "read_cifar_pickle",
    "read_cifar_dir",
    "MNIST_CLASSES",
    "FASHION_MNIST_CLASSES",
    "CIFAR10_CLASSES",
]

MNIST_CLASSES = tuple(str(d) for d in range(10))
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)

IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension
_CIFAR_PIXELS = 3 * 32 * 32


@dataclass(frozen=True)
class Dataset:
    """One split held in memory.

    Attributes:
        x: Inputs, float32, first dimension N.
        y: Targets ``[N]``: int64 class labels, or float32 for regression.
        name: Data set name, e.g. ``"mnist/train"``.
        num_classes: Number of classes, or None for regression.
        noise_sd: Optional true per-point noise standard deviation ``[N]`` (synthetic sets).
    """

    x: Tensor
    y: Tensor
    name: str
    num_classes: int | None = None
    noise_sd: Tensor | None = None

    def __post_init__(self) -> None:
        if self.x.shape[0] != self.y.shape[0]:
            raise ValueError(
                f"{self.name}: x has {self.x.shape[0]} rows but y has {self.y.shape[0]}"
            )
        if not self.x.is_floating_point():
            raise ValueError(f"{self.name}: x must be floating point, got {self.x.dtype}")
        for label, t in (("x", self.x), ("y", self.y)):
            if not all_finite(t):
                raise ValueError(f"{self.name}: {label} contains NaN/Inf; clean the data first")
        if self.num_classes is not None:
            _check_labels(self.y, self.num_classes, self.name)

    def __len__(self) -> int:
        return int(self.x.shape[0])


@dataclass(frozen=True)
class TensorSplit:
    """A train/test pair plus metadata.

    Attributes:
        train: Training split.
        test: Test split.
        name: Data set name.
        num_classes: Number of classes, or None for regression.
        classes: Class names (may be empty).
        stats: Preprocessing statistics computed on the training split, e.g. ``pixel_mean``.
    """

    train: Dataset
    test: Dataset
    name: str
    num_classes: int | None = None
    classes: tuple[str, ...] = ()
    stats: Mapping[str, Tensor] = field(default_factory=dict)


def all_finite(t: Tensor) -> bool:
    """True if ``t`` holds no NaN/Inf (a fast sum test, confirmed element-wise if it fails)."""
    if not t.is_floating_point() or bool(torch.isfinite(t.sum())):
        return True
    return bool(torch.isfinite(t).all())  # the sum may merely have overflowed


def _check_labels(y: Tensor, num_classes: int, where: str) -> None:
    if y.dtype != torch.int64:
        raise ValueError(f"{where}: class labels must be int64, got {y.dtype}")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(
            f"{where}: labels must lie in [0, {num_classes - 1}], found range "
            f"[{int(y.min())}, {int(y.max())}]; the file is corrupt or of another data set"
        )


def _gunzip(data: bytes, where: object) -> bytes:
    """Return ``data``, gunzipped when it starts with the gzip magic."""
    if data[:2] != b"\x1f\x8b":
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as err:
        raise ValueError(
            f"{where}: corrupt or truncated gzip file ({err}); delete it and download it again"
        ) from err


def parse_idx(data: bytes, where: object = "<bytes>", expected_magic: int | None = None
              ) -> np.ndarray:
    """:func:`read_idx` on the bytes of a file; ``where`` names the source in errors."""
    raw = _gunzip(data, where)
    if len(raw) < 4:
        raise ValueError(f"{where}: too short to be an IDX file ({len(raw)} bytes)")
    magic = int.from_bytes(raw[:4], "big")
    if expected_magic is not None and magic != expected_magic:
        raise ValueError(
            f"{where}: wrong IDX magic number {magic} (expected {expected_magic}); "
            "is this the right file (images vs labels) of an MNIST-format data set?"
        )
    if raw[0:2] != b"\x00\x00" or raw[2] != 0x08:
        raise ValueError(f"{where}: unsupported IDX header {raw[:4].hex()} (need unsigned bytes)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(raw) != expected:
        state = "truncated" if len(raw) < expected else "longer than its header says"
        raise ValueError(
            f"{where}: file is {state}: header {dims} needs {expected} bytes, found {len(raw)}; "
            "delete it and download it again"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def read_idx(path: str | Path, expected_magic: int | None = None) -> np.ndarray:
    """Read an unsigned-byte IDX file (gzipped or raw) into a numpy array.

    Args:
        path: File path.
        expected_magic: If given, the required magic number (2051 images, 2049 labels).

    Returns:
        uint8 array with the dimensions from the header.

    Raises:
        ValueError: Wrong magic number or data type, or file length not matching the header.
    """
    return parse_idx(Path(path).read_bytes(), Path(path), expected_magic)


def mnist_arrays_to_dataset(images: np.ndarray, labels: np.ndarray, name: str,
                            img_src: object = "images", lbl_src: object = "labels") -> Dataset:
    """uint8 images ``[N, 28, 28]`` + integer labels ``[N]`` (0..9) -> a checked :class:`Dataset`.

    x is ``[N, 1, 28, 28]`` float32 in [0, 1]; ``img_src``/``lbl_src`` name the sources in errors.
    """
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(f"{img_src}: images must be uint8 [N, 28, 28], "
                         f"got {images.dtype} {list(images.shape)}")
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise ValueError(f"{lbl_src}: labels must be integers [N], "
                         f"got {labels.dtype} {list(labels.shape)}")
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{img_src} has {images.shape[0]} images but {lbl_src} has {labels.shape[0]} "
            "labels; the files come from different downloads or one is damaged"
        )
    y = torch.from_numpy(labels.astype(np.int64))
    _check_labels(y, 10, str(lbl_src))
    images = images if images.flags.writeable else images.copy()  # torch warns on read-only
    return Dataset(torch.from_numpy(images).unsqueeze(1).float().div_(255.0), y, name, 10)


def _find_idx(directory: Path, stem: str) -> Path:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{directory}: missing {stem}.gz (or the uncompressed {stem})")


def _read_mnist_pair(directory: Path, prefix: str, name: str) -> Dataset:
    img_path = _find_idx(directory, f"{prefix}-images-idx3-ubyte")
    lbl_path = _find_idx(directory, f"{prefix}-labels-idx1-ubyte")
    images = read_idx(img_path, IDX_IMAGES_MAGIC)
    labels = read_idx(lbl_path, IDX_LABELS_MAGIC)
    return mnist_arrays_to_dataset(images, labels, name, img_path, lbl_path)


def read_mnist_dir(
    directory: str | Path, name: str = "mnist", classes: tuple[str, ...] = MNIST_CLASSES
) -> TensorSplit:
    """Read the 4 MNIST-format IDX files of ``directory`` (MNIST or Fashion-MNIST).

    Returns:
        Train/test split with x ``[N, 1, 28, 28]`` float32 in [0, 1] and int64 labels.
    """
    directory = Path(directory)
    train = _read_mnist_pair(directory, "train", f"{name}/train")
    test = _read_mnist_pair(directory, "t10k", f"{name}/test")
    return TensorSplit(train, test, name, num_classes=10, classes=classes)


_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def read_mnist_npz(
    path: str | Path, name: str = "mnist", classes: tuple[str, ...] = MNIST_CLASSES
) -> TensorSplit:
    """Read a Keras-format ``mnist.npz``: uint8 ``x_train``/``x_test`` ``[N, 28, 28]``, labels.

    Loaded with ``allow_pickle=False``. Returns the same layout as :func:`read_mnist_dir`.

    Raises:
        FileNotFoundError: No such file.
        ValueError: Not a readable .npz, missing keys, wrong shapes/dtypes, labels outside 0..9.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (expected a Keras-format mnist.npz with "
                                f"arrays {', '.join(_NPZ_KEYS)})")
    try:
        npz = np.load(path, allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise ValueError("a single .npy array, not an .npz archive")
        with npz:
            keys = list(npz.files)
            arrays = {k: npz[k] for k in _NPZ_KEYS if k in keys}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise ValueError(f"{path}: corrupt or not a NumPy .npz file ({err}); "
                         "download mnist.npz again") from err
    missing = [k for k in _NPZ_KEYS if k not in arrays]
    if missing:
        raise ValueError(f"{path}: missing arrays {missing} (found {keys}); a Keras-format "
                         f"mnist.npz holds {', '.join(_NPZ_KEYS)}")
    train, test = (mnist_arrays_to_dataset(arrays[f"x_{s}"], arrays[f"y_{s}"], f"{name}/{s}",
                                           f"{path}[x_{s}]", f"{path}[y_{s}]")
                   for s in ("train", "test"))
    return TensorSplit(train, test, name, num_classes=10, classes=classes)


def _to_images(pixels: np.ndarray) -> Tensor:
    """uint8 ``[N, 3072]`` (R, G, B planes) -> float32 ``[N, 3, 32, 32]`` in [0, 1]."""
    pixels = pixels.reshape(-1, 3, 32, 32)
    if not pixels.flags.writeable:  # torch warns on read-only buffers
        pixels = pixels.copy()
    return torch.from_numpy(pixels).float().div_(255.0)


def _cifar_binary_arrays(path: Path, label_bytes: int, label_index: int) -> tuple[np.ndarray, ...]:
    raw = path.read_bytes()
    record = label_bytes + _CIFAR_PIXELS
    if len(raw) == 0 or len(raw) % record:
        raise ValueError(
            f"{path}: size {len(raw)} is not a positive multiple of the {record}-byte record; "
            "the file is truncated or not a CIFAR binary file, download it again"
        )
    table = np.frombuffer(raw, dtype=np.uint8).reshape(-1, record)
    return table[:, label_bytes:], table[:, label_index].astype(np.int64)


def read_cifar_binary(
    path: str | Path, label_bytes: int = 1, label_index: int = 0
) -> tuple[Tensor, Tensor]:
    """Read one CIFAR binary file: records of ``label_bytes`` label bytes + 3072 pixels.

    Args:
        path: File path.
        label_bytes: 1 for CIFAR-10, 2 for CIFAR-100 (coarse, fine).
        label_index: Which label byte to return (CIFAR-100: 0 coarse, 1 fine).

    Returns:
        Images ``[N, 3, 32, 32]`` float32 in [0, 1] and raw int64 labels ``[N]``.
    """
    pixels, labels = _cifar_binary_arrays(Path(path), label_bytes, label_index)
    return _to_images(pixels), torch.from_numpy(labels)


def _cifar_pickle_arrays(path: Path, label_key: bytes) -> tuple[np.ndarray, ...]:
    batch = load_array_pickle(path)
    if b"data" not in batch or label_key not in batch:
        raise ValueError(f"{path}: missing key b'data' or {label_key!r}; keys: {list(batch)}")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[label_key]).reshape(-1)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _CIFAR_PIXELS:
        raise ValueError(f"{path}: b'data' must be uint8 [N, 3072], got {data.dtype} {data.shape}")
    if labels.dtype.kind not in "iu":
        raise ValueError(f"{path}: {label_key!r} must hold integers, got {labels.dtype}")
    if data.shape[0] != labels.shape[0]:
        raise ValueError(f"{path}: {data.shape[0]} images but {labels.shape[0]} labels")
    return data, labels.astype(np.int64)


def read_cifar_pickle(path: str | Path, label_key: bytes = b"labels") -> tuple[Tensor, Tensor]:
    """Read one CIFAR python-version batch (``b'data'`` uint8 ``[N, 3072]`` + labels).

    Args:
        path: File path.
        label_key: ``b'labels'`` (CIFAR-10), ``b'fine_labels'`` or ``b'coarse_labels'``.

    Returns:
        Images ``[N, 3, 32, 32]`` float32 in [0, 1] and raw int64 labels ``[N]``.
    """
    pixels, labels = _cifar_pickle_arrays(Path(path), label_key)
    return _to_images(pixels), torch.from_numpy(labels)


_CIFAR_FILES = {
    ("binary", 10): ([f"data_batch_{i}.bin" for i in range(1, 6)], ["test_batch.bin"]),
    ("python", 10): ([f"data_batch_{i}" for i in range(1, 6)], ["test_batch"]),
    ("binary", 100): (["train.bin"], ["test.bin"]),
    ("python", 100): (["train"], ["test"]),
}


def _read_cifar_files(
    directory: Path, files: list[str], fmt: str, num_classes: int, coarse: bool
) -> tuple[np.ndarray, Tensor]:
    """Read and concatenate batch files; labels are range-checked per file."""
    pixels, labels = [], []
    for fname in files:
        path = directory / fname
        if fmt == "binary" and num_classes == 10:
            px, lb = _cifar_binary_arrays(path, 1, 0)
        elif fmt == "binary":
            px, lb = _cifar_binary_arrays(path, 2, 0 if coarse else 1)
        else:
            fine = b"coarse_labels" if coarse else b"fine_labels"
            px, lb = _cifar_pickle_arrays(path, b"labels" if num_classes == 10 else fine)
        _check_labels(torch.from_numpy(lb), 20 if coarse else num_classes, str(path))
        pixels.append(px)
        labels.append(lb)
    return np.concatenate(pixels), torch.from_numpy(np.concatenate(labels))


def read_cifar_dir(
    directory: str | Path,
    fmt: str,
    num_classes: int = 10,
    label_mode: str = "fine",
    subtract_pixel_mean: bool = True,
) -> TensorSplit:
    """Read an extracted CIFAR folder (e.g. ``cifar-10-batches-bin``).

    Args:
        directory: The folder holding the batch files.
        fmt: ``"binary"`` or ``"python"``.
        num_classes: 10 (CIFAR-10) or 100 (CIFAR-100).
        label_mode: CIFAR-100 only: ``"fine"`` (100 classes) or ``"coarse"`` (20 superclasses).
        subtract_pixel_mean: Subtract the per-pixel training mean from both splits.

    Returns:
        Train/test split with x ``[N, 3, 32, 32]`` float32 (in [0, 1] before the mean is
        subtracted); ``stats["pixel_mean"]`` ``[3, 32, 32]`` when subtracted.
    """
    if (fmt, num_classes) not in _CIFAR_FILES:
        raise ValueError(f"unsupported CIFAR variant fmt={fmt!r}, num_classes={num_classes}")
    if label_mode not in ("fine", "coarse"):
        raise ValueError(f"label_mode must be 'fine' or 'coarse', got {label_mode!r}")
    directory = Path(directory)
    coarse = num_classes == 100 and label_mode == "coarse"
    train_files, test_files = _CIFAR_FILES[(fmt, num_classes)]
    ptr, ytr = _read_cifar_files(directory, train_files, fmt, num_classes, coarse)
    pte, yte = _read_cifar_files(directory, test_files, fmt, num_classes, coarse)
    xtr, xte = _to_images(ptr), _to_images(pte)
    stats: dict[str, Tensor] = {}
    if subtract_pixel_mean:  # exact integer sum of the raw bytes, then scale
        total = ptr.sum(axis=0, dtype=np.int64).reshape(3, 32, 32)
        mean = torch.from_numpy(total / (255.0 * len(ptr))).float()
        xtr.sub_(mean)
        xte.sub_(mean)
        stats["pixel_mean"] = mean
    n_cls = 20 if coarse else num_classes
    name = "cifar10" if num_classes == 10 else "cifar100"
    classes = CIFAR10_CLASSES if num_classes == 10 else ()
    return TensorSplit(
        Dataset(xtr, ytr, f"{name}/train", n_cls),
        Dataset(xte, yte, f"{name}/test", n_cls),
        name, n_cls, classes, stats,
    )
