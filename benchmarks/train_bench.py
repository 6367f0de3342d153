"""Training benchmarks of issue 4: seed models on real data, and data-parallel efficiency.

    python benchmarks/train_bench.py mnist --data-root ../shared/data        # 5 epochs, 4 models
    python benchmarks/train_bench.py cifar --data-root /tmp/cifar --epochs 3 # VGG3 BNN + twin
    python benchmarks/train_bench.py ddp                                      # 2x1 vs 1x1 threads

Each run goes through ``bayescale train`` (the CLI, in a subprocess; ``torchrun`` for the DDP
rows) with a shipped config and dotted overrides, then reads the run directory it wrote: the final
eval row (MC accuracy and NLL), ``timing.csv`` (per-step times) and the per-epoch times. Results go
to ``benchmarks/results/train_<suite>.json`` with provenance (commit, versions, machine, config).
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
from pathlib import Path

from bayescale.scale.bench import provenance, results_path, write_json


def _run(args: list[str], launcher: list[str] | None = None) -> str:
    cmd = [*(launcher or [sys.executable]), "-m", "bayescale", "train", *args,
           "train.progress=false"]
    print("+", " ".join(cmd), flush=True)
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"failed ({out.returncode}):\n{out.stderr[-4000:]}")
    return out.stdout


def _read_run(run_dir: Path, warmup: int = 20) -> dict:
    rows = list(csv.DictReader((run_dir / "timing.csv").open()))
    steps = [float(r["batch_time_s"]) for r in rows]
    allreduce = [float(r["allreduce_s"]) for r in rows]
    evals = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()
             if '"kind": "eval"' in ln]
    steady = steps[warmup:] or steps
    final = evals[-1]
    return {
        "steps_per_worker": len(steps),
        "world_size": int(rows[0]["world_size"]),
        "test_acc": final["test_acc"], "test_nll": final["test_nll"],
        "eval_samples": final["eval_samples"], "test_count": final["test_count"],
        "epoch_times_s": [e["epoch_time_s"] for e in evals],
        "time_to_train_s": float(rows[-1]["time_to_train_s"]),
        "median_step_s": statistics.median(steady),
        "allreduce_share": sum(allreduce[warmup:]) / max(1e-12, sum(steady)),
        "eval_curve": [(e["epoch"], e["test_acc"]) for e in evals],
    }


def _seeds(a: argparse.Namespace, pairs: tuple[tuple[str, str], ...], extra: list[str]) -> dict:
    rows: dict = {}
    for name, cfg in pairs:
        if a.models and name not in a.models:
            continue
        per_seed = []
        for seed in a.seeds:
            with tempfile.TemporaryDirectory() as tmp:
                _run([cfg, f"data.root={a.data_root}", f"train.epochs={a.epochs}",
                      f"train.threads={a.threads}", f"output.dir={tmp}", "output.name=run",
                      f"train.seed={seed}", *extra])
                per_seed.append({"seed": seed, **_read_run(Path(tmp) / "run")})
            print(name, seed, json.dumps({k: per_seed[-1][k]
                                          for k in ("test_acc", "epoch_times_s")}), flush=True)
        accs = [r["test_acc"] for r in per_seed]
        epoch_times = [t for r in per_seed for t in r["epoch_times_s"]]
        rows[name] = {"runs": per_seed, "test_acc_mean": statistics.fmean(accs),
                      "test_acc_min": min(accs), "test_acc_max": max(accs),
                      "test_nll_mean": statistics.fmean(r["test_nll"] for r in per_seed),
                      "epoch_time_median_s": statistics.median(epoch_times)}
    return rows


def mnist(a: argparse.Namespace) -> dict:
    extra = [f"eval.samples={a.eval_samples}"] if a.eval_samples else []
    return _seeds(a, (("BNN_conv_flip", "mnist_bnn_conv_flip_seed"),
                      ("CNN_conv", "mnist_cnn_conv"), ("BNN_FC_flip", "mnist_bnn_fc_flip_seed"),
                      ("CNN_FC", "mnist_cnn_fc")), extra)


def cifar(a: argparse.Namespace) -> dict:
    return _seeds(a, (("CIFAR10_BNN_model", "cifar10_bnn_seed"),
                      ("CIFAR10 CNN twin", "cifar10_cnn")),
                  [f"optim.lr={a.lr}"])


def ddp(a: argparse.Namespace) -> dict:
    """Weak scaling, BNN_conv_flip: the same steps per worker with 1 and with 2 workers."""
    common = ["mnist_bnn_conv_flip_seed", "data.name=mnist-small", f"train.steps={a.steps}",
              "train.scaling=weak", "train.threads=1", "eval.every_epochs=0", "eval.samples=1",
              "train.checkpoint_every=100000", f"train.seed={a.seeds[0]}", *a.extra]
    rows = {}
    for world in (1, 2):
        with tempfile.TemporaryDirectory() as tmp:
            launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                        f"--nproc-per-node={world}"]
            _run([*common, f"output.dir={tmp}", "output.name=run"], launcher)
            rows[f"{world}x1"] = _read_run(Path(tmp) / "run")
    # The machine's ceiling: two independent single-thread runs side by side (no communication).
    with tempfile.TemporaryDirectory() as tmp:
        cmds = [[sys.executable, "-m", "bayescale", "train", *common, f"output.dir={tmp}",
                 f"output.name=solo{i}", "train.progress=false"] for i in range(2)]
        print("+ 2 concurrent:", " ".join(cmds[0]), flush=True)
        procs = [subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                 for c in cmds]
        for p in procs:
            if p.wait() != 0:
                raise SystemExit(p.stderr.read().decode()[-4000:])
        rows["2 independent x1"] = [_read_run(Path(tmp) / f"solo{i}") for i in range(2)]
    one, two = rows["1x1"], rows["2x1"]
    bs = 64
    thr1 = bs / one["median_step_s"]
    thr2 = 2 * bs / two["median_step_s"]
    solo = statistics.fmean(r["median_step_s"] for r in rows["2 independent x1"])
    rows["throughput_1x1"] = thr1
    rows["throughput_2x1"] = thr2
    rows["efficiency"] = thr2 / (2 * thr1)
    rows["ceiling_efficiency"] = one["median_step_s"] / solo  # no communication at all
    rows["allreduce_share_2x1"] = two["allreduce_share"]
    print(json.dumps({k: rows[k] for k in ("throughput_1x1", "throughput_2x1", "efficiency",
                                           "ceiling_efficiency", "allreduce_share_2x1")}))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("suite", choices=("mnist", "cifar", "ddp"))
    p.add_argument("--data-root", default=os.environ.get("BAYESCALE_DATA", "../shared/data"))
    p.add_argument("--epochs", type=float, default=5.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=400, help="ddp: steps per worker")
    p.add_argument("--lr", type=float, default=1e-4, help="cifar: Adam lr (seed: 1e-4)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--models", nargs="*", help="only these rows (default: all)")
    p.add_argument("--extra", nargs="*", default=[], help="more key=value overrides (ddp)")
    p.add_argument("--eval-samples", type=int,
                   help="mnist: MC weight samples of the final evaluation (default: the config's)")
    a = p.parse_args()
    rows = {"mnist": mnist, "cifar": cifar, "ddp": ddp}[a.suite](a)
    path = results_path(f"train_{a.suite}.json")
    prov = provenance(vars(a))
    record = {"benchmark": f"train_{a.suite}", "provenance": prov, "results": rows}
    if a.models and path.is_file():  # a partial rerun replaces its rows and keeps the others
        old = json.loads(path.read_text())
        for name, row in old["results"].items():
            if name not in rows:
                row.setdefault("provenance", old["provenance"])
                rows[name] = row
        record["results"] = {k: rows[k] for k in [*old["results"], *rows] if k in rows}
    for row in rows.values():
        if isinstance(row, dict):
            row.setdefault("provenance", prov)
    print("wrote", write_json(path, record))


if __name__ == "__main__":
    main()
