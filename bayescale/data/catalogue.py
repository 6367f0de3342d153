"""Data set catalogue: verified downloads, the name registry and small built-in data sets.

``load_dataset(name)`` returns a :class:`~bayescale.data.datasets.TensorSplit`. File-based sets
(MNIST, Fashion-MNIST, CIFAR-10/100) are looked up in ``root/<name>/`` (or ``root`` itself);
``root`` defaults to ``$BAYESCALE_DATA`` or ``~/.cache/bayescale``; for MNIST it may also be a
Keras-format ``mnist.npz`` file. Generated, scikit-learn and the shipped ``mnist-small`` sets need
no files (they live in :mod:`bayescale.data.builtin` and are re-exported here).
"""

from __future__ import annotations

import difflib
import hashlib
import http.client
import os
import shutil
import tarfile
import tempfile
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .builtin import (
    load_diabetes_dataset,
    load_digits_dataset,
    load_fashion_mnist_small,
    load_mnist_small,
    make_heteroscedastic_1d,
    make_synthetic_classification,
)
from .datasets import (
    FASHION_MNIST_CLASSES,
    MNIST_CLASSES,
    TensorSplit,
    read_cifar_dir,
    read_mnist_dir,
    read_mnist_npz,
)

__all__ = [
    "DATASETS", "default_root", "download", "list_datasets", "load_dataset",
    "load_mnist", "load_fashion_mnist", "load_cifar10", "load_cifar100", "load_mnist_small",
    "load_fashion_mnist_small",
    "read_mnist_npz", "load_digits_dataset", "load_diabetes_dataset",
    "make_synthetic_classification", "make_heteroscedastic_1d",
]


@dataclass(frozen=True)
class _Source:
    """One on-disk layout of a data set and where its files come from."""

    folder: str  # sub-folder of the data set directory holding the files ("" = the directory)
    files: tuple[str, ...]  # files that must be present (IDX files: raw or .gz)
    downloads: tuple[tuple[str, str], ...]  # (file name, md5) fetched from the mirrors
    mirrors: tuple[str, ...]
    archive: bool = False  # downloads are .tar.gz archives extracted into the directory
    gzip_ok: bool = False  # each file may also be present as ``<name>.gz``


_IDX = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_MNIST_MD5 = ("f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
              "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c")
_FASHION_MD5 = ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
                "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310")
_KRIZ = ("https://www.cs.toronto.edu/~kriz/",)
_CIFAR10_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)

_SOURCES: dict[str, dict[str, _Source]] = {
    "mnist": {"idx": _Source(
        "", _IDX, tuple((f"{f}.gz", m) for f, m in zip(_IDX, _MNIST_MD5, strict=True)),
        ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
        gzip_ok=True,
    )},
    "fashion-mnist": {"idx": _Source(
        "", _IDX, tuple((f"{f}.gz", m) for f, m in zip(_IDX, _FASHION_MD5, strict=True)),
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",), gzip_ok=True,
    )},
    "cifar10": {
        "binary": _Source("cifar-10-batches-bin", tuple(f"{b}.bin" for b in _CIFAR10_BATCHES),
                          (("cifar-10-binary.tar.gz", "c32a1d4ab5d03f1284b67883e8d87530"),),
                          _KRIZ, archive=True),
        "python": _Source("cifar-10-batches-py", _CIFAR10_BATCHES,
                          (("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),),
                          _KRIZ, archive=True),
    },
    "cifar100": {
        "binary": _Source("cifar-100-binary", ("train.bin", "test.bin"),
                          (("cifar-100-binary.tar.gz", "03b5dce01913d631647c71ecec9e9cb8"),),
                          _KRIZ, archive=True),
        "python": _Source("cifar-100-python", ("train", "test"),
                          (("cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85"),),
                          _KRIZ, archive=True),
    },
}

_ALIASES = {"fashion": "fashion-mnist", "fmnist": "fashion-mnist", "cifar-10": "cifar10",
            "cifar-100": "cifar100", "heteroscedastic": "heteroscedastic-1d",
            "small-mnist": "mnist-small", "mnistsmall": "mnist-small",
            "fashion-small": "fashion-mnist-small", "fmnist-small": "fashion-mnist-small",
            "small-fashion-mnist": "fashion-mnist-small"}


def default_root() -> Path:
    """The data cache directory: ``$BAYESCALE_DATA`` or ``~/.cache/bayescale``."""
    env = os.environ.get("BAYESCALE_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "bayescale"


def _missing(directory: Path, source: _Source) -> list[str]:
    def present(f: str) -> bool:
        gz_ok = source.gzip_ok and (directory / f"{f}.gz").is_file()
        return (directory / f).is_file() or gz_ok

    return [f for f in source.files if not present(f)]


def _formats(key: str, fmt: str) -> list[str]:
    if fmt == "auto":
        return list(_SOURCES[key])
    if fmt not in _SOURCES[key]:
        raise ValueError(f"{key}: format must be 'auto' or one of {list(_SOURCES[key])}")
    return [fmt]


def _locate(key: str, root: Path, fmt: str) -> tuple[Path, str] | None:
    for base in (root / key, root):
        for f in _formats(key, fmt):
            directory = base / _SOURCES[key][f].folder
            if not _missing(directory, _SOURCES[key][f]):
                return directory, f
    return None


def _missing_message(key: str, root: Path, fmt: str) -> str:
    lines = [f"data set '{key}' not found under {root}. Either:"]
    for f in _formats(key, fmt):
        src = _SOURCES[key][f]
        directory = root / key / src.folder
        gz = " (each raw or .gz)" if src.gzip_ok else ""
        files = ", ".join(_missing(directory, src))
        lines.append(f"  - put these files{gz} in {directory}: {files}")
        fetched = ", ".join(src.mirrors[0] + name for name, _ in src.downloads)
        how = f"extract into {root / key}" if src.archive else "save them there"
        lines.append(f"    (download {fetched} and {how})")
    lines.append(f"  - or call load_dataset('{key}', download=True) to fetch and verify them.")
    return "\n".join(lines)


def _fetch_url(url: str, dst: Path) -> None:
    """Stream ``url`` into ``dst`` (the only function that touches the network)."""
    request = urllib.request.Request(url, headers={"User-Agent": "bayescale"})
    with urllib.request.urlopen(request, timeout=60) as resp, open(dst, "wb") as out:
        shutil.copyfileobj(resp, out, 1 << 20)


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch_verified(filename: str, md5: str, mirrors: tuple[str, ...], dest: Path) -> Path:
    """Download ``filename`` from the first working mirror; write atomically after the md5 check."""
    errors, mismatch = [], None
    for base in mirrors:
        fd, tmp_name = tempfile.mkstemp(dir=dest, prefix=f".{filename}.", suffix=".part")
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            _fetch_url(base + filename, tmp)
            got = _md5(tmp)
            if got == md5:
                os.replace(tmp, dest / filename)
                return dest / filename
            mismatch = f"{base + filename}: md5 {got}, expected {md5}"
        except (OSError, http.client.HTTPException) as err:
            errors.append(f"{base + filename}: {err}")
        finally:
            tmp.unlink(missing_ok=True)
    if mismatch:
        raise ValueError(f"checksum mismatch for {filename} ({mismatch}); nothing was saved. "
                         "Retry later, or place a verified copy in the directory yourself")
    raise ConnectionError("; ".join(errors))


def _safe_extract(archive: Path, dest: Path) -> None:
    """Extract regular files and folders of a .tar.gz, refusing unsafe member paths."""
    root = dest.resolve()
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = tar.getmembers()
            for m in members:  # validate everything before writing anything
                parts = PurePosixPath(m.name).parts
                unsafe = m.name.startswith(("/", "\\")) or ".." in parts or ":" in m.name
                if unsafe or not (m.isfile() or m.isdir()):
                    raise ValueError(f"{archive}: refusing archive member {m.name!r} "
                                     "(absolute path, '..', drive, link or special file)")
                if not (root / m.name).resolve().is_relative_to(root):
                    raise ValueError(f"{archive}: member {m.name!r} escapes {dest}")
            for m in members:
                target = root / m.name
                if m.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_name(f".{target.name}.part")
                try:
                    with tar.extractfile(m) as src, open(tmp, "wb") as out:
                        shutil.copyfileobj(src, out, 1 << 20)
                    os.replace(tmp, target)
                finally:
                    tmp.unlink(missing_ok=True)
    except tarfile.TarError as err:
        raise ValueError(f"{archive}: corrupt archive ({err}); delete it and retry") from err


def _download_files(key: str, root: Path, fmt: str) -> Path:
    source = _SOURCES[key][fmt]
    dest = root / key
    dest.mkdir(parents=True, exist_ok=True)
    for filename, md5 in source.downloads:
        path = dest / filename
        if source.archive:  # reuse a verified archive left behind by an interrupted extraction
            have = path.is_file() and _md5(path) == md5
        else:
            have = path.is_file() or (dest / filename.removesuffix(".gz")).is_file()
        if not have:
            try:
                path = _fetch_verified(filename, md5, source.mirrors, dest)
            except ConnectionError as err:
                raise FileNotFoundError(f"could not download {filename} ({err}).\n"
                                        + _missing_message(key, root, fmt)) from err
        if source.archive:
            _safe_extract(path, dest)
            path.unlink()
    still = _missing(dest / source.folder, source)
    if still:
        raise ValueError(f"{key}: download finished but {still} are missing in {dest}")
    return dest / source.folder


def _canonical(name: str) -> str:
    key = name.strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        close = difflib.get_close_matches(key, list(DATASETS), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ValueError(f"unknown data set {name!r}.{hint} Valid names: {', '.join(DATASETS)}")
    return key


def download(name: str, root: str | Path | None = None, fmt: str | None = None) -> Path:
    """Download a data set into ``root/<name>/``, verifying MD5 checksums.

    Args:
        name: A file-based data set: mnist, fashion-mnist, cifar10, cifar100.
        root: Cache directory (default :func:`default_root`).
        fmt: CIFAR layout ``"binary"`` (default) or ``"python"``.

    Returns:
        The directory holding the data files.

    Raises:
        FileNotFoundError: No mirror reachable; the message says where to put the files.
        ValueError: Checksum mismatch (no partial file is left) or unsafe archive.
    """
    key = _canonical(name)
    if key not in _SOURCES:
        raise ValueError(f"'{key}' is generated or bundled; there is nothing to download")
    fmt = fmt or next(iter(_SOURCES[key]))
    root = Path(root) if root is not None else default_root()
    found = _locate(key, root, fmt)
    return found[0] if found else _download_files(key, root, _formats(key, fmt)[0])


def _ensure(key: str, root: str | Path | None, download: bool, fmt: str) -> tuple[Path, str]:
    root = Path(root) if root is not None else default_root()
    found = _locate(key, root, fmt)
    if found is None and download:
        fetch_fmt = _formats(key, fmt)[0]
        _download_files(key, root, fetch_fmt)
        found = _locate(key, root, fetch_fmt)
    if found is None:
        raise FileNotFoundError(_missing_message(key, root, fmt))
    return found


def _is_npz(root: str | Path | None) -> bool:
    return root is not None and str(root).lower().endswith(".npz")


def load_mnist(root: str | Path | None = None, download: bool = False) -> TensorSplit:
    """MNIST: 60000/10000 images ``[N, 1, 28, 28]`` in [0, 1].

    ``root`` is a cache directory (IDX files), or a Keras-format ``mnist.npz`` file (read with
    :func:`~bayescale.data.datasets.read_mnist_npz`; ``download`` does not apply to it).
    """
    if _is_npz(root):
        return read_mnist_npz(root, "mnist", MNIST_CLASSES)
    directory, _ = _ensure("mnist", root, download, "idx")
    return read_mnist_dir(directory, "mnist", MNIST_CLASSES)


def load_fashion_mnist(root: str | Path | None = None, download: bool = False) -> TensorSplit:
    """Fashion-MNIST: 60000/10000 images ``[N, 1, 28, 28]`` in [0, 1] (``root`` as in MNIST)."""
    if _is_npz(root):
        return read_mnist_npz(root, "fashion-mnist", FASHION_MNIST_CLASSES)
    directory, _ = _ensure("fashion-mnist", root, download, "idx")
    return read_mnist_dir(directory, "fashion-mnist", FASHION_MNIST_CLASSES)


def load_cifar10(root: str | Path | None = None, download: bool = False,
                 subtract_pixel_mean: bool = True, fmt: str = "auto") -> TensorSplit:
    """CIFAR-10 ``[N, 3, 32, 32]`` in [0, 1] minus the per-pixel training mean (by default).

    ``fmt`` is ``"binary"``, ``"python"`` or ``"auto"`` (binary preferred).
    """
    directory, found = _ensure("cifar10", root, download, fmt)
    return read_cifar_dir(directory, found, 10, subtract_pixel_mean=subtract_pixel_mean)


def load_cifar100(root: str | Path | None = None, download: bool = False,
                  subtract_pixel_mean: bool = True, label_mode: str = "fine",
                  fmt: str = "auto") -> TensorSplit:
    """CIFAR-100 like :func:`load_cifar10`; ``label_mode`` ``"fine"`` (100) or ``"coarse"`` (20)."""
    directory, found = _ensure("cifar100", root, download, fmt)
    return read_cifar_dir(directory, found, 100, label_mode, subtract_pixel_mean)


DATASETS: dict[str, Callable[..., TensorSplit]] = {
    "mnist": load_mnist,
    "fashion-mnist": load_fashion_mnist,
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "mnist-small": load_mnist_small,
    "fashion-mnist-small": load_fashion_mnist_small,
    "digits": load_digits_dataset,
    "diabetes": load_diabetes_dataset,
    "synthetic": make_synthetic_classification,
    "heteroscedastic-1d": make_heteroscedastic_1d,
}


def list_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset`."""
    return sorted(DATASETS)


def load_dataset(name: str, root: str | Path | None = None, download: bool = False,
                 **kwargs) -> TensorSplit:
    """Load a data set by name (see :func:`list_datasets`).

    Args:
        name: Data set name (case-insensitive; ``_`` and ``-`` are interchangeable).
        root: Cache directory for file-based sets (default :func:`default_root`); for MNIST
            also a Keras-format ``mnist.npz`` file.
        download: Fetch missing files (checksum-verified) instead of raising.
        **kwargs: Passed to the data set's loader, e.g. ``subtract_pixel_mean`` or ``seed``.

    Raises:
        ValueError: Unknown name (the message lists the valid names).
        FileNotFoundError: Files missing; the message says which files go where.
    """
    key = _canonical(name)
    if key in _SOURCES:
        return DATASETS[key](root=root, download=download, **kwargs)
    return DATASETS[key](**kwargs)
