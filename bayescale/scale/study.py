"""The scaling study (Sharma & Jennings): time-to-train and speed-up versus workers, BNN vs CNN.

``run_study`` launches ``bayescale train`` through ``torchrun`` once per (model, worker count) on
this machine; ``collect`` reads the per-step timing logs the training engine wrote
(``timing.csv``) into one table; ``plot_study`` draws the seed's two figures (total training time
vs workers; speed-up vs workers with the ideal line). For clusters, ``write_batch_scripts`` writes
SLURM and PBS/Cobalt scripts that run the same study at chosen node counts into the same layout,
so ``bayescale scale --collect DIR`` gathers them the same way.

Layout: ``OUT/runs/<label>-w<workers>/`` (one run directory each), ``OUT/scaling.csv``,
``OUT/time_to_train.png``, ``OUT/speedup.png``.
"""

from __future__ import annotations

import csv
import os
import shlex
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["run_study", "collect", "plot_study", "write_batch_scripts", "parse_workers"]

COLUMNS = ("label", "workers", "mode", "steps_per_worker", "time_to_train_s", "samples_per_s",
           "speedup", "efficiency", "median_step_s", "compute_s", "allreduce_s")


def parse_workers(text: str) -> list[int]:
    """``"1,2,4"`` -> [1, 2, 4] (positive, increasing)."""
    try:
        out = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"--workers takes a comma list of integers like 1,2,4, got {text!r}"
                         ) from None
    if not out or any(n < 1 for n in out) or out != sorted(set(out)):
        raise ValueError(f"--workers must be increasing positive integers, got {text!r}")
    return out


def _labels(twin: bool) -> list[tuple[str, list[str]]]:
    runs = [("BNN", [])]
    if twin:
        runs.append(("CNN", ["model.bayesian=false"]))
    return runs


def run_study(config: str, workers: list[int], mode: str, out_dir: str | Path,
              overrides: list[str] | None = None, twin: bool = True,
              cores: int | None = None) -> Path:
    """Train ``config`` (and its deterministic twin) on each worker count; return the CSV path.

    Every run goes through ``python -m torch.distributed.run --standalone`` (``torchrun``), with
    ``train.scaling=mode`` and the cores of this machine split evenly over the workers (unless
    ``train.threads`` is among the overrides).
    """
    if mode not in ("strong", "weak"):
        raise ValueError(f"--mode must be strong or weak, got {mode!r}")
    out = Path(out_dir)
    runs = out / "runs"
    cores = cores or len(os.sched_getaffinity(0))
    for label, extra in _labels(twin):
        for n in workers:
            run_dir = runs / f"{label}-w{n}"
            if (run_dir / "timing.csv").is_file() and (run_dir / "model.pt").is_file():
                print(f"[scale] {run_dir} done already, reused", flush=True)
                continue
            if run_dir.exists():
                raise FileExistsError(f"{run_dir} holds an unfinished run; remove it or choose "
                                      "another output directory")
            threads = ([] if any(o.startswith("train.threads=") for o in overrides or [])
                       else [f"train.threads={max(1, cores // n)}"])
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc-per-node={n}", "-m", "bayescale", "train", config,
                   *(overrides or []), *extra, f"train.scaling={mode}", *threads,
                   f"output.dir={runs}", f"output.name={run_dir.name}", "train.progress=false"]
            print("[scale] " + shlex.join(cmd), flush=True)
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                raise RuntimeError(f"run {run_dir.name} failed (exit {res.returncode}):\n"
                                   f"{res.stderr[-3000:]}")
    return collect(out, mode)


def _read_timing(path: Path, warmup: int) -> dict[str, float]:
    rows = list(csv.DictReader(path.open()))
    if not rows:
        raise ValueError(f"{path} has no timing rows; the run did not take a step")
    steps = [float(r["batch_time_s"]) for r in rows]
    ar = [float(r.get("allreduce_s") or 0.0) for r in rows]
    steady = slice(min(warmup, len(rows) - 1), None)
    med = statistics.median(steps[steady])
    med_ar = statistics.median(ar[steady])
    return {"steps_per_worker": len(rows), "time_to_train_s": float(rows[-1]["time_to_train_s"]),
            "workers": int(rows[0]["world_size"]), "median_step_s": med,
            "samples_per_s": statistics.median(float(r["samples_per_s"]) for r in rows[steady]),
            "allreduce_s": med_ar, "compute_s": med - med_ar}


def collect(out_dir: str | Path, mode: str = "strong", warmup: int = 10) -> Path:
    """Read ``OUT/runs/*/timing.csv`` into ``OUT/scaling.csv`` with speed-up and efficiency.

    Speed-up is T_1 / T_n of time-to-train (strong scaling) or n * t_1 / t_n of the median step
    (weak scaling); efficiency = speed-up / n.
    """
    out = Path(out_dir)
    found = sorted((out / "runs").glob("*-w*/timing.csv"))
    if not found:
        raise FileNotFoundError(f"no runs under {out / 'runs'} (expected <label>-w<N>/timing.csv);"
                                " run the study first")
    table: dict[str, list[dict[str, Any]]] = {}
    for path in found:
        label = path.parent.name.rsplit("-w", 1)[0]
        table.setdefault(label, []).append({"label": label, "mode": mode,
                                            **_read_timing(path, warmup)})
    rows = []
    for runs in table.values():
        runs.sort(key=lambda r: r["workers"])
        base = runs[0]
        for r in runs:
            n = r["workers"] / base["workers"]
            if mode == "strong":
                r["speedup"] = base["time_to_train_s"] / r["time_to_train_s"]
            else:
                r["speedup"] = n * base["median_step_s"] / r["median_step_s"]
            r["efficiency"] = r["speedup"] / n
            rows.append(r)
    path = out / "scaling.csv"
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    plot_study(path)
    return path


def plot_study(csv_path: str | Path) -> list[Path]:
    """The seed's Fig-1 (total training time vs workers) and Fig-2 (speed-up vs workers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    csv_path = Path(csv_path)
    rows = list(csv.DictReader(csv_path.open()))
    labels = sorted({r["label"] for r in rows})
    paths = []
    for key, ylabel, name in (("time_to_train_s", "total training time [s]", "time_to_train"),
                              ("speedup", "speed-up T1/Tn", "speedup")):
        fig, ax = plt.subplots(figsize=(4.5, 3.4))
        top = 1
        for label in labels:
            pts = [(int(r["workers"]), float(r[key])) for r in rows if r["label"] == label]
            ax.plot([n for n, _ in pts], [v for _, v in pts], "o-", label=f"{label} (measured)")
            top = max(top, max(n for n, _ in pts))
        if key == "speedup":
            ax.plot([1, top], [1, top], "k--", lw=1, label="ideal 1:1")
        ax.set_xlabel("workers")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = csv_path.parent / f"{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


_SLURM = """#!/bin/bash
#SBATCH --job-name=bayescale-{label}-n{nodes}
#SBATCH --nodes={nodes}
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task={cores}
#SBATCH --time={time}
# bayescale scaling study: {label} on {nodes} node(s), one worker per node.
# Rank and size come from SLURM_PROCID/SLURM_NTASKS, MASTER_ADDR from the node list.
export MASTER_PORT=${{MASTER_PORT:-29500}}
export OMP_NUM_THREADS={cores}
srun python -m bayescale train {args} output.dir={runs} output.name={label}-w{nodes}
"""

_PBS = """#!/bin/bash
#PBS -N bayescale-{label}-n{nodes}
#PBS -l select={nodes}:ncpus={cores}:mpiprocs=1
#PBS -l walltime={time}
#COBALT -n {nodes}
#COBALT -t {minutes}
# bayescale scaling study: {label} on {nodes} node(s) (PBS Pro, or Cobalt on ALCF Theta).
# Rank and size come from the MPI launcher's PMI_/OMPI_ variables.
cd "${{PBS_O_WORKDIR:-$PWD}}"
NODEFILE=${{PBS_NODEFILE:-$COBALT_NODEFILE}}
export MASTER_ADDR=$(head -n 1 "$NODEFILE")
export MASTER_PORT=${{MASTER_PORT:-29500}}
export OMP_NUM_THREADS={cores}
if command -v aprun >/dev/null; then  # Cray ALPS (Theta): 1 rank per node, {cores} threads
  aprun -n {nodes} -N 1 -d {cores} -j 1 -cc depth \\
    python -m bayescale train {args} output.dir={runs} output.name={label}-w{nodes}
else
  mpirun -np {nodes} --map-by ppr:1:node \\
    python -m bayescale train {args} output.dir={runs} output.name={label}-w{nodes}
fi
"""


def write_batch_scripts(config: str, nodes: list[int], out_dir: str | Path, mode: str = "strong",
                        overrides: list[str] | None = None, twin: bool = True,
                        cores_per_node: int = 64, time: str = "01:00:00") -> list[Path]:
    """SLURM (``.sbatch``) and PBS/Cobalt (``.pbs``) scripts, one per (model, node count), plus
    ``submit_all.sh``; results land in ``OUT/runs`` for ``bayescale scale --collect OUT``."""
    out = Path(out_dir).resolve()
    h, m, _ = (int(x) for x in time.split(":"))
    written = []
    for label, extra in _labels(twin):
        args = shlex.join([config, *(overrides or []), *extra, f"train.scaling={mode}",
                           f"train.threads={cores_per_node}", "train.progress=false"])
        for n in nodes:
            fields = {"label": label, "nodes": n, "cores": cores_per_node, "time": time,
                      "minutes": 60 * h + m, "args": args, "runs": shlex.quote(str(out / "runs"))}
            for suffix, text in ((".sbatch", _SLURM), (".pbs", _PBS)):
                path = out / "batch" / f"{label}-n{n}{suffix}"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text.format(**fields))
                written.append(path)
    submit = out / "batch" / "submit_all.sh"
    lines = ["#!/bin/bash", "# submit every script with the scheduler found on this machine",
             'if command -v sbatch >/dev/null; then for f in "$(dirname "$0")"/*.sbatch; do '
             'sbatch "$f"; done', 'elif command -v qsub >/dev/null; then for f in '
             '"$(dirname "$0")"/*.pbs; do qsub "$f"; done',
             'else echo "no sbatch or qsub here" >&2; exit 1; fi',
             f"# when all jobs are done: bayescale scale --collect {shlex.quote(str(out))}"
             f" --mode {mode}"]
    submit.write_text("\n".join(lines) + "\n")
    submit.chmod(0o755)
    return [*written, submit]
