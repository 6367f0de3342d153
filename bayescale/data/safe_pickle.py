"""A restricted unpickler for data files that should hold nothing but numpy arrays.

CIFAR's python-version batches are pickles. Loading an arbitrary pickle can run arbitrary code,
so :func:`load_array_pickle` resolves only the handful of globals needed to rebuild numpy
arrays (and the ``_codecs.encode`` that numpy uses for byte strings) and refuses the rest.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

__all__ = ["UnsafePickleError", "load_array_pickle"]


class UnsafePickleError(ValueError):
    """A pickle referenced a global that is not needed to rebuild a numpy array."""


_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


def _resolve_numpy_global(module: str, name: str) -> object:
    if module == "_codecs":
        import _codecs

        return _codecs.encode
    if module == "numpy":
        return getattr(np, name)
    try:  # numpy >= 2 moved numpy.core to numpy._core
        from numpy._core import multiarray, numeric
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray, numeric
    return getattr(multiarray if module.endswith("multiarray") else numeric, name)


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickler that only resolves the globals needed to rebuild numpy arrays."""

    def __init__(self, file, path: Path) -> None:
        super().__init__(file, encoding="bytes")
        self._path = path

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _NUMPY_GLOBALS:
            raise UnsafePickleError(
                f"{self._path}: refused to load global '{module}.{name}'; a CIFAR pickle only "
                "holds numpy arrays and lists. The file is not a genuine CIFAR batch; use the "
                "binary version or download the data again"
            )
        return _resolve_numpy_global(module, name)


def load_array_pickle(path: Path) -> dict:
    """Unpickle ``path`` (expected: a dict of arrays/lists) with only numpy globals allowed."""
    try:
        with open(path, "rb") as fh:
            obj = _ArrayOnlyUnpickler(fh, path).load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            LookupError, OverflowError, MemoryError) as err:
        raise ValueError(f"{path}: corrupt or truncated pickle ({err}); download it again") from err
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict, got {type(obj).__name__}")
    return obj
