"""Checkpoints: atomic writes, checksums, rotation with fallback, safe loads, RNG state capture.

A checkpoint is a dict of tensors and plain Python values, written with ``torch.save`` to a
temporary file in the target directory, flushed to disk and renamed over the old file, so a crash
mid-write never leaves a truncated checkpoint. Each carries a SHA-256 of its content, checked on
load. With ``keep > 1`` the previous checkpoints are kept as ``checkpoint.1.pt``, ``.2.pt``, ...
and :func:`load_latest` falls back to the newest intact one (with a warning) when the newest is
corrupt. Loading uses ``torch.load(weights_only=True)``: no pickled code is ever executed.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "load_latest",
           "checkpoint_files", "state_digest", "rng_state", "set_rng_state", "FORMAT_VERSION"]

FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable or does not match the run."""


def _feed(h: Any, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous().reshape(-1)
        h.update(f"T{t.dtype}{tuple(obj.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(obj, dict):
        h.update(b"D%d" % len(obj))
        for k in sorted(obj, key=repr):
            h.update(repr(k).encode())
            _feed(h, obj[k])
    elif isinstance(obj, (list, tuple)):
        h.update(b"L%d" % len(obj))
        for v in obj:
            _feed(h, v)
    else:
        h.update(repr(obj).encode())


def state_digest(state: dict[str, Any]) -> str:
    """SHA-256 over every tensor's bytes, dtype and shape and every other value's repr."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in state.items() if k != "sha256"})
    return h.hexdigest()


def checkpoint_files(path: str | Path) -> list[Path]:
    """``path`` and its rotated predecessors (``name.1.pt``, ``name.2.pt``, ...), newest first."""
    path = Path(path)
    pat = re.compile(rf"{re.escape(path.stem)}\.(\d+){re.escape(path.suffix)}")
    older = [(int(m.group(1)), p) for p in path.parent.glob(f"{path.stem}.*{path.suffix}")
             if (m := pat.fullmatch(p.name))]
    return [path, *(p for _, p in sorted(older))]


def save_checkpoint(path: str | Path, state: dict[str, Any], keep: int = 1) -> Path:
    """Write ``state`` to ``path`` atomically (temp file in the same directory + rename).

    ``keep`` > 1 keeps that many checkpoints in all: the previous ``path`` becomes
    ``<stem>.1<suffix>``, that one ``.2``, ...; the oldest beyond ``keep`` is deleted. Each rename
    is atomic, so a crash at any point leaves at least one intact checkpoint.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1 checkpoint, got {keep}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    full = {"format_version": FORMAT_VERSION, **state}
    full["sha256"] = state_digest(full)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(full, fh)
            fh.flush()
            os.fsync(fh.fileno())
        if keep > 1 and path.exists():
            rotated = [path.with_name(f"{path.stem}.{i}{path.suffix}") for i in range(keep)]
            rotated[-1].unlink(missing_ok=True)
            for i in range(keep - 2, 0, -1):
                if rotated[i].exists():
                    os.replace(rotated[i], rotated[i + 1])
            os.replace(path, rotated[1])
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
    if "sha256" in state and state_digest(state) != state["sha256"]:
        raise CheckpointError(f"checkpoint {str(path)!r} fails its SHA-256 check: its content "
                              "was altered or damaged after it was written; use an earlier "
                              "copy (checkpoint.1.pt, ...) or start a new run")
    return state


def load_latest(path: str | Path, map_location: str | torch.device = "cpu"
                ) -> tuple[Path, dict[str, Any]]:
    """The newest intact checkpoint among ``path`` (a file, or a run directory's
    ``checkpoint.pt``) and its rotated predecessors; warns about each one skipped.

    Raises:
        CheckpointError: none of them is intact (every reason is listed).
    """
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    errors = []
    for cand in checkpoint_files(path):
        if not cand.exists():
            continue
        try:
            state = load_checkpoint(cand, map_location)
        except CheckpointError as err:
            errors.append(str(err))
            continue
        for e in errors:
            warnings.warn(f"skipped a damaged checkpoint, using {cand.name}: {e}", stacklevel=2)
        return cand, state
    if not errors:
        raise CheckpointError(f"no checkpoint at {str(path)!r}; pass the run directory that "
                              "holds checkpoint.pt (or the .pt file itself)")
    raise CheckpointError("no intact checkpoint: " + " | ".join(errors))


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
