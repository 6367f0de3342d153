"""What a training run writes (rank 0 only): metrics, the timing log, posterior snapshots.

Files in the run directory:

* ``metrics.jsonl`` — every record (``kind`` = ``"train"`` or ``"eval"``), one JSON per line;
* ``train.csv`` / ``eval.csv`` — the same records as tables;
* ``timing.csv`` — one row per step with the seed's columns (the seed tutorial): ``step``,
  ``batch_time_s``, ``samples_per_s`` (all workers), ``t_start``, ``t_end``, ``time_to_train_s``
  (cumulative step time, excluding logging/eval), plus ``allreduce_s`` and ``world_size``;
* ``posterior/stats.jsonl`` and ``posterior/step_XXXXXXX.pt`` — per-layer mu/sigma summaries and
  histograms (the data of the posterior-convergence plots).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..nn.sampling import bayesian_layers

__all__ = ["RunLog", "posterior_stats", "TIMING_COLUMNS"]

TIMING_COLUMNS = ("step", "batch_time_s", "samples_per_s", "t_start", "t_end",
                  "time_to_train_s", "allreduce_s", "world_size")


def _truncate_rows(path: Path, last_step: int, is_jsonl: bool) -> None:
    """Keep the rows with ``step <= last_step`` (a resumed run rewrites what followed)."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    if is_jsonl:
        keep = [ln for ln in lines if ln.strip() and json.loads(ln).get("step", 0) <= last_step]
    else:
        keep = lines[:1] + [ln for ln in lines[1:] if ln.strip()
                            and float(ln.split(",", 1)[0]) <= last_step]
    path.write_text("".join(keep))


class _Table:
    def __init__(self, path: Path) -> None:
        self.path, self.columns = path, None
        if path.is_file() and path.stat().st_size:
            with path.open() as fh:
                self.columns = next(csv.reader(fh))

    def write(self, row: dict[str, Any]) -> None:
        new = self.columns is None
        if new:
            self.columns = list(row)
        with self.path.open("a", newline="") as fh:
            w = csv.DictWriter(fh, self.columns, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow(row)


class RunLog:
    """Metric, timing and posterior writers of one run; every method is a no-op when disabled.

    Args:
        run_dir: the run directory.
        enabled: True on rank 0 only.
        resume_step: when resuming, rows logged after this step are dropped first.
        tensorboard: also write TensorBoard scalars if ``tensorboard`` is installed.
    """

    def __init__(self, run_dir: str | Path, enabled: bool = True, resume_step: int | None = None,
                 tensorboard: bool = True) -> None:
        self.dir, self.enabled = Path(run_dir), enabled
        self._timing_buf: list[str] = []
        self.tb = None
        if not enabled:
            return
        (self.dir / "posterior").mkdir(parents=True, exist_ok=True)
        if resume_step is not None:
            for name, jsonl in (("metrics.jsonl", True), ("train.csv", False),
                                ("eval.csv", False), ("timing.csv", False),
                                ("posterior/stats.jsonl", True)):
                _truncate_rows(self.dir / name, resume_step, jsonl)
        self.tables = {k: _Table(self.dir / f"{k}.csv") for k in ("train", "eval")}
        timing = self.dir / "timing.csv"
        if not timing.is_file() or not timing.stat().st_size:
            timing.write_text(",".join(TIMING_COLUMNS) + "\n")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(self.dir / "tensorboard"))
            except ImportError:
                self.tb = None

    def record(self, kind: str, row: dict[str, Any]) -> None:
        """Append one ``"train"`` or ``"eval"`` record."""
        if not self.enabled:
            return
        row = {k: (float(v) if isinstance(v, Tensor) else v) for k, v in row.items()}
        with (self.dir / "metrics.jsonl").open("a") as fh:
            fh.write(json.dumps({"kind": kind, **row}) + "\n")
        self.tables[kind].write(row)
        if self.tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, int | float) and math.isfinite(v):
                    self.tb.add_scalar(f"{kind}/{k}", v, row.get("step", 0))

    def timing(self, step: int, batch_time: float, samples: int, t_start: float, t_end: float,
               time_to_train: float, allreduce: float, world_size: int) -> None:
        """Buffer one timing row (written by :meth:`flush`)."""
        if self.enabled:
            self._timing_buf.append(
                f"{step},{batch_time:.9f},{samples / batch_time:.3f},{t_start:.6f},{t_end:.6f},"
                f"{time_to_train:.9f},{allreduce:.9f},{world_size}\n")

    def posterior(self, step: int, model: nn.Module, bins: int = 60) -> None:
        """Save a posterior snapshot (summary line + histogram tensors)."""
        if not self.enabled:
            return
        stats = posterior_stats(model, bins)
        torch.save(stats, self.dir / "posterior" / f"step_{step:07d}.pt")
        summary = {name: {k: float(v) for k, v in s.items() if v.dim() == 0}
                   for name, s in stats.items()}
        with (self.dir / "posterior" / "stats.jsonl").open("a") as fh:
            fh.write(json.dumps({"step": step, "layers": summary}) + "\n")

    def flush(self) -> None:
        if self.enabled and self._timing_buf:
            with (self.dir / "timing.csv").open("a") as fh:
                fh.writelines(self._timing_buf)
            self._timing_buf = []
        if self.tb is not None:
            self.tb.flush()

    def close(self) -> None:
        self.flush()
        if self.tb is not None:
            self.tb.close()


@torch.no_grad()
def posterior_stats(model: nn.Module, bins: int = 60) -> dict[str, dict[str, Tensor]]:
    """Per Bayesian layer: summaries and histograms of the posterior means and std devs.

    Returns ``{layer_name: {"mu_mean", "mu_std", "mu_abs_mean", "sigma_mean", "sigma_std",
    "sigma_min", "sigma_max", "snr_median", "mu_hist", "mu_edges", "sigma_hist",
    "sigma_edges"}}``; histograms span each layer's own range (the seed's Fig. 3 data).
    """
    out: dict[str, dict[str, Tensor]] = {}
    names = {m: n for n, m in model.named_modules()}
    for layer in bayesian_layers(model):
        mu = layer.weight_mu.detach().float().flatten().cpu()
        sigma = layer.weight_sigma.detach().float().flatten().cpu()
        s: dict[str, Tensor] = {
            "mu_mean": mu.mean(), "mu_std": mu.std(), "mu_abs_mean": mu.abs().mean(),
            "sigma_mean": sigma.mean(), "sigma_std": sigma.std(),
            "sigma_min": sigma.min(), "sigma_max": sigma.max(),
            "snr_median": (mu.abs() / sigma).median(),
        }
        for key, v in (("mu", mu), ("sigma", sigma)):
            lo, hi = float(v.min()), float(v.max())
            if hi <= lo:
                hi = lo + 1e-12
            s[f"{key}_hist"] = torch.histc(v, bins, lo, hi)
            s[f"{key}_edges"] = torch.linspace(lo, hi, bins + 1)
        out[names.get(layer, layer.__class__.__name__)] = s
    return out
