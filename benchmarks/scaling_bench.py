"""Scaling study (issue 8): measured 1-2 workers, the performance model validated and extrapolated.

    python benchmarks/scaling_bench.py                # ~5 min on 2 cores
    python benchmarks/scaling_bench.py --steps 400

1. ``bayescale scale`` (weak scaling, one thread per worker, BNN_conv_flip and its CNN twin on the
   embedded mnist-small): measured step time, all-reduce time, efficiency at 1 and 2 workers.
2. A co-location probe (the engine's step on a fixed batch, one thread per worker): one worker
   alone, two independent workers side by side, and two workers in lockstep (a barrier before
   every step, as DDP imposes, but no gradients exchanged). The lockstep / alone ratio is what
   sharing this node's cores, caches and memory bandwidth costs a worker, apart from the
   all-reduce; on a cluster with one worker per node it is 1.
3. A gloo all-reduce micro-benchmark (2 processes, 4 KB - 16 MB) fitted to alpha + m/beta.
4. The model's prediction of the 2-worker efficiency from measured inputs only (1-worker compute
   time and its CV, the lockstep factor of step 2, alpha/beta from step 3, gradient bytes),
   compared with the measurement of step 1.
5. The fit to the seed README's Fig-1/Fig-2 (both variants), and the extrapolation to 1,024
   workers on Aries / InfiniBand HDR / 100 GbE with and without bf16 gradient compression.

Writes benchmarks/results/scaling.json and docs/figures/scaling_*.png.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from bayescale.models import get_model
from bayescale.scale import perfmodel as P
from bayescale.scale.bench import figures_path, provenance, results_path, write_json

ROOT = Path(__file__).resolve().parents[1]
SIZES = [4096, 65536, 524288, 2**21, 2**23, 2**24]


def _allreduce_worker(rank: int, port: int, reps: int, q) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    out = {}
    for size in SIZES:
        t = torch.ones(size // 4)
        times = []
        for i in range(reps + 3):
            dist.barrier()
            t0 = time.perf_counter()
            dist.all_reduce(t)
            if i >= 3:
                times.append(time.perf_counter() - t0)
        out[size] = statistics.median(times)
    if rank == 0:
        q.put(out)
    dist.barrier()
    dist.destroy_process_group()


def allreduce_micro(reps: int = 30) -> dict[int, float]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    port = 29000 + os.getpid() % 1000
    procs = [ctx.Process(target=_allreduce_worker, args=(r, port, reps, q)) for r in range(2)]
    for p in procs:
        p.start()
    res = q.get(timeout=600)
    for p in procs:
        p.join()
    return res


def _colocated_worker(rank: int, world: int, port: int, steps: int, bayesian: bool,
                      lockstep: bool, q) -> None:
    """One worker of the co-location probe: the engine's step (forward, ELBO, backward, Adam) on
    a fixed batch, one thread; with ``lockstep`` every step starts at a barrier, as in DDP, but no
    gradient is communicated. Reports the median step time without the barrier wait."""
    from bayescale import elbo_loss
    from bayescale.train.distributed import tune_malloc

    tune_malloc()
    torch.set_num_threads(1)
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(rank)
    model = get_model("BNN_conv_flip", bayesian=bayesian)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.rand(64, 1, 28, 28), torch.randint(0, 10, (64,))
    times = []
    for _ in range(steps):
        if lockstep:
            dist.barrier()
        t0 = time.perf_counter()
        loss = elbo_loss(model(x), y, model, 60000)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    q.put((rank, statistics.median(times[steps // 5:])))
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()


def colocation_probe(bayesian: bool, steps: int) -> dict[str, float]:
    """Compute time per step of one worker alone, of two independent workers side by side, and
    of two workers in lockstep (a barrier per step, no gradients exchanged): what sharing this
    node's cores, caches and memory bandwidth costs a data-parallel worker, measured apart from
    the all-reduce."""
    ctx = mp.get_context("spawn")
    out = {}
    for name, world, lockstep in (("solo", 1, False), ("independent_pair", 2, False),
                                  ("lockstep_pair", 2, True)):
        q = ctx.Queue()
        port = 29500 + os.getpid() % 1000 + 7 * len(out)
        procs = [ctx.Process(target=_colocated_worker,
                             args=(r, world if lockstep else 1, port, steps, bayesian, lockstep, q))
                 for r in range(world)]
        for p in procs:
            p.start()
        res = [q.get(timeout=900)[1] for _ in procs]
        for p in procs:
            p.join()
        out[name] = statistics.fmean(res)
    out["independent_factor"] = out["independent_pair"] / out["solo"]
    out["lockstep_factor"] = out["lockstep_pair"] / out["solo"]
    return out


def _steps(run_dir: Path, warmup: int = 20) -> tuple[list[float], list[float]]:
    rows = list(csv.DictReader((run_dir / "timing.csv").open()))[warmup:]
    return [float(r["batch_time_s"]) for r in rows], [float(r["allreduce_s"]) for r in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300, help="steps per worker (weak scaling)")
    ap.add_argument("--probe-steps", type=int, default=150,
                    help="steps per co-location probe run (solo, independent pair, lockstep pair)")
    a = ap.parse_args()
    common = ["data.name=mnist-small", f"train.steps={a.steps}", "eval.every_epochs=0",
              "eval.samples=1", "train.checkpoint_every=100000", "train.threads=1"]
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        study = Path(tmp) / "study"
        cmd = [sys.executable, "-m", "bayescale", "scale", "mnist_bnn_conv_flip_seed", *common,
               "--workers", "1,2", "--mode", "weak", "--out", str(study)]
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
        measured = list(csv.DictReader((study / "scaling.csv").open()))
        out["measured"] = measured
        steps = {(r["label"], int(r["workers"])): _steps(study / "runs" / f"{r['label']}-w"
                                                          f"{r['workers']}") for r in measured}
    micro = allreduce_micro()
    ic = P.fit_latency_bandwidth(list(micro), list(micro.values()), 2)
    out["allreduce_micro_s"] = {str(k): v for k, v in micro.items()}
    out["localhost_gloo"] = {"latency_s": ic.latency_s, "bandwidth_Bps": ic.bandwidth_Bps}
    # what sharing the node costs one worker, apart from communication (co-location probe)
    probes = {label: colocation_probe(bayes, a.probe_steps)
              for label, bayes in (("BNN", True), ("CNN", False))}
    out["colocation"] = probes
    pred_rows = {}
    for label, bayes in (("BNN", True), ("CNN", False)):
        contention = probes[label]["lockstep_factor"]
        one = steps[(label, 1)][0]
        t1, cv = statistics.median(one), statistics.pstdev(one) / statistics.fmean(one)
        nbytes = P.Workload.gradient_bytes(get_model("BNN_conv_flip", bayesian=bayes))
        w = P.Workload(f"{label} BNN_conv_flip x1 thread", t1 * contention / 64, nbytes, 64,
                       step_cv=cv)
        c = P.Cluster(ic, "ring", bucket_bytes=25 * 2**20, overlap=1.0)
        st2 = P.step_time(w, c, 2)
        predicted_eff = t1 / st2.total_s
        meas = next(r for r in measured if r["label"] == label and r["workers"] == "2")
        pred_rows[label] = {"t1_s": t1, "cv": cv, "grad_bytes": nbytes,
                            "contention": contention, "predicted_step2_s": st2.total_s,
                            "predicted_allreduce_s": st2.allreduce_s,
                            "predicted_efficiency": predicted_eff,
                            "measured_efficiency": float(meas["efficiency"]),
                            "measured_allreduce_s": float(meas["allreduce_s"]),
                            "error_points": 100 * (predicted_eff - float(meas["efficiency"]))}
        print(label, json.dumps(pred_rows[label]), flush=True)
    out["validation_2_workers"] = pred_rows
    fits = {name: P.fit_seed("aries", "ring", stragglers=st)
            for name, st in (("latency+stragglers", True), ("latency only", False))}
    out["seed_fit"] = fits
    extra = {}
    workers = [2**k for k in range(11)]
    for fname, fit in fits.items():
        for model in ("BNN", "CNN"):
            w = P.seed_workload(model, fit)
            for icn in P.INTERCONNECTS:
                for comp in (1.0, 0.5):
                    c = P.seed_cluster(fit, icn, compression=comp)
                    for mode in ("strong", "global-batch"):
                        key = f"{fname}|{model}|{icn}|{'bf16' if comp < 1 else 'fp32'}|{mode}"
                        rows = P.scaling_table(w, c, workers, mode, global_batch=64 * 64)
                        extra[key] = {"efficiency": [r["efficiency"] for r in rows],
                                      "below_50pct_at": next((r["workers"] for r in rows
                                                              if r["efficiency"] < 0.5), None)}
    out["extrapolation"] = {"workers": workers, "curves": extra}
    _figures(fits, extra, workers)
    path = write_json(results_path("scaling.json"), {"benchmark": "scaling", "provenance":
                                                 provenance(vars(a)), "results": out})
    print("wrote", path)


def _figures(fits: dict, curves: dict, workers: list[int]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures_path("x").parent.mkdir(parents=True, exist_ok=True)
    f = P.SEED_FIGURES
    fig, ax = plt.subplots(figsize=(4.8, 3.6))
    ax.plot([1, 8], [1, 8], "k--", lw=1, label="ideal")
    for model, color in (("BNN", "C0"), ("CNN", "C1")):
        ax.plot(f["nodes"], f[model]["speedup"], "o", color=color, label=f"seed {model} (Fig-2)")
        for (name, fit), style in zip(fits.items(), ("-", ":"), strict=True):
            ax.plot([1, *fit["nodes"]], [1, *fit["predicted_speedup"][model]], style,
                    color=color, label=f"model {model}, {name}")
    ax.set_xlabel("nodes")
    ax.set_ylabel("speed-up")
    ax.legend(fontsize=6.5)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(figures_path("scaling_seed_fit.png"), dpi=110)
    plt.close(fig)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    for ax, mode in zip(axes, ("strong", "global-batch"), strict=True):
        for model, color in (("BNN", "C0"), ("CNN", "C1")):
            for comp, style in (("fp32", "-"), ("bf16", "--")):
                key = f"latency+stragglers|{model}|aries|{comp}|{mode}"
                ax.plot(workers, curves[key]["efficiency"], style, color=color,
                        label=f"{model} {comp} (Aries)")
            key = f"latency only|{model}|aries|fp32|{mode}"
            ax.plot(workers, curves[key]["efficiency"], ":", color=color,
                    label=f"{model} fp32, latency-only fit")
        ax.axhline(0.5, color="k", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("workers")
        ax.set_title({"strong": "per-worker batch 64 (seed recipe)",
                      "global-batch": "global batch 4096 split over workers"}[mode], fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("modelled efficiency")
    axes[0].legend(fontsize=6.5)
    fig.tight_layout()
    fig.savefig(figures_path("scaling_extrapolation.png"), dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
