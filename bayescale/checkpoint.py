"""Checkpoints: atomic writes, safe loads, RNG state capture.

A checkpoint is a dict of tensors and plain Python values, written with ``torch.save`` to a
temporary file in the target directory, flushed to disk and renamed over the old file, so a crash
mid-write never leaves a truncated checkpoint. Loading uses ``torch.load(weights_only=True)``:
no pickled code is ever executed.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "rng_state",
           "set_rng_state", "FORMAT_VERSION"]

FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable or does not match the run."""


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically (temp file in the same directory + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save({"format_version": FORMAT_VERSION, **state}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``).

    Raises:
        CheckpointError: the file is missing, truncated/corrupt, or of another format.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {str(path)!r}; pass the run directory that "
                              "holds checkpoint.pt (or the .pt file itself)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for truncated/corrupt files
        raise CheckpointError(f"checkpoint {str(path)!r} is unreadable ({type(err).__name__}: "
                              f"{err}); it is corrupt or not a bayescale checkpoint - use an "
                              "earlier copy or start a new run") from err
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{str(path)!r} is not a bayescale checkpoint of format "
                              f"{FORMAT_VERSION}")
    return state


def rng_state(device: torch.device | None = None) -> dict[str, torch.Tensor]:
    """This process's RNG states (CPU and, on GPU, the current CUDA device)."""
    state = {"cpu": torch.get_rng_state()}
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, torch.Tensor], device: torch.device | None = None) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["cpu"].cpu())
    if "cuda" in state and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)
