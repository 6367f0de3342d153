"""A Ke & Fan run (``optim.name=sghmc`` in ``bayescale train``): the training glue the engine
calls, weight samples and Bayesian model averaging, and the sparsity log and plot.

* :class:`KeFanTraining` - the cyclical cosine step size (Ke & Fan), the E-step and pruning at the
  first batch of every epoch past the warm-up (Ke & Fan), samples at the cycle ends, the
  sparsity log, BMA at the end;
* :class:`SampleCollector` / :func:`load_samples` - weight samples as CPU state dicts, written to
  ``RUN/samples/sample_XX.pt``, read back as modules for ``bayescale.mc_predict(samples, x)``;
* :class:`SparsityLog` / :func:`plot_sparsity` - ``RUN/sparsity.csv``, one row per epoch end (and
  the initial state): ``epoch``, ``step``, ``sparsity`` (zero fraction of all parameters, Ke &
  Fan's measure), ``spike`` (fraction of the groupable weights under the spike prior),
  ``train_loss`` (the epoch's mean batch loss on rank 0; empty for the initial row) and
  ``sparsity.<layer>``. Only rank 0 writes; a resumed run first drops the rows past its
  checkpoint.
"""

from __future__ import annotations

import copy
import csv
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..kefan.optimizer import SGHMCSpikeSlab, layer_sparsity, sparsity
from ..kefan.stability import support_report, warmup_stall
from . import distributed as D
from .schedules import cycle_sample_steps, cyclical_cosine

__all__ = ["KeFanTraining", "SampleCollector", "load_samples", "check_model", "SparsityLog",
           "read_sparsity", "plot_sparsity"]


class SampleCollector:
    """Keeps weight samples (CPU state dicts) after given step counts; with ``run_dir``, also
    writes them to ``run_dir/samples/sample_XX.pt`` (XX = index in ``steps``) and ``index.json``.

    Ke & Fan keep 3 samples at the end of each cycle (epoch ends): :meth:`for_cycles`.
    """

    def __init__(self, steps: Iterable[int], run_dir: str | Path | None = None,
                 keep: bool = True) -> None:
        self.steps = sorted(set(int(s) for s in steps))
        self.dir = Path(run_dir) / "samples" if run_dir is not None else None
        self.keep = keep
        self.samples: list[dict[str, Tensor]] = []
        self.taken: list[int] = []

    @classmethod
    def for_cycles(cls, total_steps: int, cycles: int, per_cycle: int, gap: int,
                   run_dir: str | Path | None = None, keep: bool = True) -> SampleCollector:
        """``per_cycle`` samples ``gap`` steps apart at the end of each of ``cycles`` cycles."""
        return cls(cycle_sample_steps(total_steps, cycles, per_cycle, gap), run_dir, keep)

    @torch.no_grad()
    def __call__(self, step: int, model: nn.Module) -> bool:
        """Take a sample if ``step`` (updates done) is a sampling step; returns whether it did."""
        if step not in self.steps:
            return False
        state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
            torch.save(state, self.dir / f"sample_{self.steps.index(step):02d}.pt")
            index = self.dir / "index.json"
            done = json.loads(index.read_text()) if index.is_file() else {}
            done[f"sample_{self.steps.index(step):02d}.pt"] = step
            index.write_text(json.dumps(dict(sorted(done.items())), indent=1))
        if self.keep:
            self.samples.append(state)
            self.taken.append(step)
        return True

    def restore(self, up_to_step: int) -> None:
        """After a resume: reload the samples already written (steps <= ``up_to_step``)."""
        if self.dir is None or not (self.dir / "index.json").is_file():
            return
        done = json.loads((self.dir / "index.json").read_text())
        for name, step in sorted(done.items(), key=lambda kv: kv[1]):
            if step <= up_to_step and step not in self.taken and self.keep:
                self.samples.append(torch.load(self.dir / name, weights_only=True))
                self.taken.append(step)

    def modules(self, template: nn.Module) -> list[nn.Module]:
        """The kept samples as modules (copies of ``template`` in eval mode)."""
        out = []
        for state in self.samples:
            m = copy.deepcopy(template)
            m.load_state_dict(state)
            out.append(m.eval())
        return out


def load_samples(run_dir: str | Path, map_location: str | torch.device = "cpu"
                 ) -> list[nn.Module]:
    """The weight samples a run collected (``RUN/samples/sample_XX.pt``) as modules, in order,
    ready for Bayesian model averaging: ``bayescale.mc_predict(load_samples(run), x)``."""
    from .checkpoint import CheckpointError
    from .runs import load_run

    files = sorted((Path(run_dir) / "samples").glob("sample_*.pt"))
    if not files:
        raise CheckpointError(f"{str(run_dir)!r} has no samples/sample_XX.pt; train with "
                              "optim.name=sghmc and sghmc.samples_per_cycle >= 1")
    template = load_run(run_dir, map_location).model
    out = []
    for f in files:
        m = copy.deepcopy(template)
        m.load_state_dict(torch.load(f, map_location=map_location, weights_only=True))
        out.append(m.eval())
    return out


def check_model(model: nn.Module) -> None:
    """SGHMC samples the weights themselves: the network must be deterministic."""
    from ..nn.sampling import bayesian_layers

    if bayesian_layers(model):
        raise ValueError("optim.name=sghmc samples the weights of a deterministic network (its "
                         "iterates are the posterior samples); this model has Bayesian layers: "
                         "set model.bayesian=false")


class KeFanTraining:
    """What ``bayescale train`` adds for ``optim.name=sghmc``: the cyclical step size, the E-step
    and pruning at the first batch of each epoch after warm-up, sample collection, the sparsity
    log (``RUN/sparsity.csv``) and Bayesian model averaging over the samples at the end.
    """

    def __init__(self, opt: SGHMCSpikeSlab, model: nn.Module, h0: float, cycles: int,
                 samples_per_cycle: int, per_epoch: int, total: int, run_dir: Path,
                 resume_step: int | None = None, ramp: float = 0.0,
                 warm_up_cycles: float | None = None, after_factor: float = 1.0) -> None:
        self.opt, self.model, self.h0, self.cycles = opt, model, h0, cycles
        self.per_epoch, self.total, self.ramp = per_epoch, total, ramp
        self.after_factor = after_factor
        self._loss: Tensor | None = None  # the running epoch's summed batch losses
        self._loss_n = 0
        if warm_up_cycles is not None:  # the preset's warm-up: whole cycles of this run
            for g in opt.param_groups:
                g["warm_up"] = int(round(warm_up_cycles * total / per_epoch / cycles))
        self.collector = SampleCollector.for_cycles(
            total, cycles, samples_per_cycle, per_epoch, run_dir if D.is_main() else None)
        self.log = SparsityLog(run_dir / "sparsity.csv", D.is_main(), resume_step)
        if resume_step is None:
            self.log.write(0, 0, model, opt)
        else:
            self._restore(resume_step)

    def _restore(self, step: int) -> None:
        if D.is_main():
            self.collector.restore(step)
        box = D.broadcast_object((self.collector.samples, self.collector.taken))
        self.collector.samples, self.collector.taken = box  # type: ignore[misc]

    def lr(self, step: int) -> float:
        """h at 0-based ``step`` (Ke & Fan, :func:`bayescale.train.schedules.cyclical_cosine`)."""
        h = cyclical_cosine(step, self.total, self.cycles, self.h0, self.ramp)
        warm_up = self.opt.param_groups[0]["warm_up"]  # E-step from epoch warm_up + 1 (0-based)
        return h * self.after_factor if step >= (warm_up + 1) * self.per_epoch else h

    def before_step(self, epoch: int, batch: int) -> None:
        """E-step and pruning at the first batch of every epoch past the warm-up (Ke & Fan)."""
        if batch == 0:
            due = [g for g in self.opt.param_groups if epoch > g["warm_up"]]
            if due:
                self.opt.em_step(due)

    def after_step(self, step: int, loss: Tensor | None = None) -> None:
        """Samples at the cycle ends; a sparsity row at every epoch end (with the epoch's mean
        training loss on this rank, when ``loss`` - the step's batch loss - is given)."""
        self.collector(step, self.model)
        if loss is not None:
            self._loss = self._loss + loss.detach().double() if self._loss is not None else (
                loss.detach().double())
            self._loss_n += 1
        if step % self.per_epoch == 0 or step == self.total:
            mean = float(self._loss) / self._loss_n if self._loss is not None else None
            self.log.write(step / self.per_epoch, step, self.model, self.opt, mean)
            self._loss, self._loss_n = None, 0

    def finish(self, evaluate: Callable[[list[nn.Module]], dict[str, Any]]) -> dict[str, Any]:
        """BMA metrics over the kept samples (``evaluate(modules)``), saved to ``RUN/bma.json``."""
        self.log.close()
        if not self.collector.samples:
            return {}
        res = {"bma_samples": len(self.collector.samples), "sample_steps": self.collector.taken,
               "clipped_steps": self.opt.clipped_steps,  # gradient spikes the guard rescaled
               **evaluate(self.collector.modules(self.model))}
        support = self.support()
        if support is not None:
            res["support"] = {k: v for k, v in support.items() if k != "inclusion_frequency"}
            if D.is_main():
                (self.log.path.parent / "support.json").write_text(json.dumps(support))
        if D.is_main():
            (self.log.path.parent / "bma.json").write_text(json.dumps(res, indent=2))
        return res


    def support(self) -> dict[str, Any] | None:
        """How stable the input layer's selected groups were over the samples taken after the
        warm-up (:func:`bayescale.kefan.stability.support_report`; None without a grouped
        input layer or such samples)."""
        w = self.opt.input_weight()
        name = next((n for n, p in self.model.named_parameters() if p is w), None)
        if name is None:
            return None
        warm_up = next(g["warm_up"] for g in self.opt.param_groups
                       if any(p is w for p in g["params"]))
        after = [s[name] for s, step in zip(self.collector.samples, self.collector.taken,
                                            strict=True)
                 if name in s and step > (warm_up + 1) * self.per_epoch]
        if not after:
            return None
        thr = self.opt.state.get(w, {}).get("threshold", self.opt.param_groups[0][
            "soft_threshold"])
        out = {"param": name, **support_report(after, "in", thr)}
        if self.log.enabled and self.log.path.is_file():  # the warm-up's epoch losses
            losses = [r["train_loss"] for r in read_sparsity(self.log.path)
                      if 0 < r["epoch"] <= warm_up + 1 and r.get("train_loss") is not None]
            out["warmup"] = warmup_stall(losses)
            out["stable"] = out["stable"] and not out["warmup"]["stalled"]
        return out


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

    def write(self, epoch: float, step: int, model: nn.Module, opt: Any,
              loss: float | None = None) -> None:
        """Log the sparsity of ``model`` (and the spike fraction of ``opt``, and the epoch's
        mean training loss when given) now."""
        if not self.enabled:
            return
        row = {"epoch": round(float(epoch), 4), "step": step, "sparsity": sparsity(model),
               "spike": _spike_fraction(opt), "train_loss": "" if loss is None else loss}
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
        rows = [{k: float(v) if v != "" else None for k, v in r.items()}
                for r in csv.DictReader(fh)]
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
    ax.plot(epochs, [r["sparsity"] for r in rows], "k-", lw=2, marker="o", ms=3,
            label="all parameters")
    for key in rows[0]:
        if key.startswith("sparsity."):
            ax.plot(epochs, [r[key] for r in rows], lw=1, marker=".", label=key.split(".", 1)[1])
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
