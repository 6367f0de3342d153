"""Sparsity over time of a Ke & Fan run: the ``RUN/sparsity.csv`` log and its plot.

``sparsity.csv`` has one row per epoch end (and the initial state): ``epoch``, ``step``,
``sparsity`` (zero fraction of all parameters, Ke & Fan's measure), ``spike`` (fraction of the
groupable weights currently under the spike prior) and ``sparsity.<layer>`` per layer with
parameters. Only rank 0 writes; a resumed run first drops the rows past its checkpoint.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["SparsityLog", "read_sparsity", "plot_sparsity"]


@torch.no_grad()
def _spike_fraction(opt: Any) -> float:
    under = total = 0
    for g in opt.param_groups:
        for p in g["params"]:
            st = opt.state.get(p, {})
            if "slab" in st:
                total += p.numel()
                mask = opt.spike_mask(p)
                under += int(mask.sum()) if mask is not None else 0
    return under / total if total else 0.0


class SparsityLog:
    """Appends sparsity rows to ``path`` (a no-op when ``enabled`` is False)."""

    def __init__(self, path: str | Path, enabled: bool = True,
                 resume_step: int | None = None) -> None:
        self.path, self.enabled = Path(path), enabled
        if enabled and resume_step is not None and self.path.is_file():
            rows = read_sparsity(self.path)
            keep = [r for r in rows if r["step"] <= resume_step]
            self.path.unlink()
            for r in keep:
                self._append(r)

    def _append(self, row: dict[str, Any]) -> None:
        new = not self.path.is_file()
        with self.path.open("a", newline="") as fh:
            w = csv.DictWriter(fh, list(row))
            if new:
                w.writeheader()
            w.writerow(row)

    def write(self, epoch: float, step: int, model: nn.Module, opt: Any) -> None:
        """Log the sparsity of ``model`` (and the spike fraction of ``opt``) now."""
        if not self.enabled:
            return
        from .kefan import layer_sparsity, sparsity

        row = {"epoch": round(float(epoch), 4), "step": step, "sparsity": sparsity(model),
               "spike": _spike_fraction(opt)}
        row.update({f"sparsity.{k}": v for k, v in layer_sparsity(model).items()})
        self._append(row)

    def close(self) -> None:
        """Nothing is buffered; kept for symmetry with the run log."""


def read_sparsity(path: str | Path) -> list[dict[str, float]]:
    """Rows of a ``sparsity.csv`` (a run directory or the file) as dicts of numbers."""
    path = Path(path)
    if path.is_dir():
        path = path / "sparsity.csv"
    with path.open() as fh:
        rows = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(fh)]
    for r in rows:
        r["step"] = int(r["step"])
    return rows


def plot_sparsity(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Sparsity (overall, per layer) and spike fraction against epochs; PNG path returned
    (default ``RUN/sparsity.png``). Needs matplotlib (``pip install bayescale[plot]``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:  # pragma: no cover - optional dependency
        raise ImportError("plot_sparsity needs matplotlib: pip install 'bayescale[plot]'") from err
    rows = read_sparsity(run_dir)
    if not rows:
        raise ValueError(f"{run_dir}: sparsity.csv has no rows yet")
    epochs = [r["epoch"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(epochs, [r["sparsity"] for r in rows], "k-", lw=2, label="all parameters")
    for key in rows[0]:
        if key.startswith("sparsity."):
            ax.plot(epochs, [r[key] for r in rows], lw=1, label=key.split(".", 1)[1])
    ax.plot(epochs, [r["spike"] for r in rows], "k:", lw=1, label="under the spike")
    ax.set(xlabel="epoch", ylabel="fraction of weights", ylim=(-0.02, 1.02),
           title="Ke & Fan spike-and-slab: sparsity over training")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    base = Path(run_dir).parent if Path(run_dir).is_file() else Path(run_dir)
    path = Path(out) if out is not None else base / "sparsity.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
