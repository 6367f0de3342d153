"""Run every benchmark of the project, then regenerate the docs' tables (about 30 min, 2 cores).

    python benchmarks/run_all.py --data-root ../shared/data          # the whole suite
    python benchmarks/run_all.py --only layers mc_predict             # some of it
    python benchmarks/run_all.py --list                               # what would run
    python benchmarks/run_all.py --full                               # the published sizes

The default ("suite") sizes are smaller than the published full runs (fewer rounds, steps and
epochs) so the whole set finishes in about half an hour. They write their JSON with provenance
(and figures) under ``bench_out/suite/`` (``$BAYESCALE_RESULTS_DIR``) and the tables to
``bench_out/suite/TABLES.md``, leaving the published results alone. ``--full`` uses the commands
written under each table in docs/*.md, writes to benchmarks/results/ and docs/figures/, then
benchmarks/tables.py rewrites the tables in README.md and docs/*.md. Benchmarks run one at a time
(timings on a shared 2-core machine are meaningless otherwise). Data-dependent entries are
skipped, with a note, when ``--data-root`` does not hold the data they need; the peers entry needs
the ``peers`` extra (``pip install -c constraints.txt -e ".[peers]"``).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SUITE_DIR = HERE.parent / "bench_out" / "suite"


def suite(data: str, cifar: str, full: bool) -> dict[str, tuple[list[str], str | None]]:
    """name -> (arguments after ``python``, the data it needs or None)."""
    f = full
    return {
        "layers": (["layer_overhead.py", "--rounds", "10" if f else "3"], None),
        "mc_predict": (["mc_predict_bench.py", "--rounds", "3"] if f else
                       ["mc_predict_bench.py", "--rounds", "2", "--num-samples", "20",
                        "--num-inputs", "512", "--mem-batch-sizes", "128"], None),
        "ddp": (["train_bench.py", "ddp", "--steps", "400" if f else "200"], None),
        "scaling": (["scaling_bench.py", "--steps", "300" if f else "150", "--probe-steps",
                     "150" if f else "60"], None),
        "uncertainty": (["uncertainty_bench.py", "--data-root", data, "--epochs", "3",
                         "--samples", "100"] if f else
                        ["uncertainty_bench.py", "--data-root", data, "--epochs", "3",
                         "--samples", "20", "--models", "mnist_bnn_fc_flip_seed", "mnist_cnn_fc"],
                        "mnist"),
        "prune_accuracy": (["prune_bench.py", "accuracy", "--data-root", data, "--models",
                            "mnist_bnn_fc_flip_seed:10", "--samples", "20", "--passes", "20",
                            "--finetune-epochs", "1", "--threads", "1"], "mnist"),
        "prune_mlp": (["prune_bench.py", "mlp", "--data-root", data, "--epochs", "3",
                       "--samples", "50", "--rounds", "5" if f else "3", "--threads", "1"],
                      "mnist"),
        "prune_cifar": (["prune_bench.py", "cifar", "--data-root", cifar, "--epochs", "1",
                         "--samples", "10", "--timing-batch", "100", "--num-test", "2000",
                         "--threads", "1"], "cifar10"),
        "kefan_regression": (["kefan_bench.py", "regression"] + ([] if f else
                                                                 ["--epochs", "600"]), None),
        "kefan_steptime": (["kefan_bench.py", "steptime", "--threads", "1"], None),
        "kefan_mnist": (["kefan_bench.py", "mnist", "--data-root", data, "--threads", "1"]
                        + ([] if f else ["--epochs", "1"]), "mnist"),
        "crash": (["crash_bench.py", "--kills", "20" if f else "5"], None),
        "dist_faults": (["dist_fault_bench.py", "--kills", "8" if f else "3", "--hangs",
                         "2" if f else "1"], None),
        "data_pipeline": (["data_pipeline.py", "--data-dir", cifar, "--rounds", "6" if f else "2",
                           "--steps-per-round", "5" if f else "3"], "cifar10"),
        "train_cifar": (["train_bench.py", "cifar", "--data-root", cifar, "--lr", "1e-3",
                         "--epochs", "3" if f else "0.2"], "cifar10"),
        "train_mnist": (["train_bench.py", "mnist", "--data-root", data] + (
            ["--seeds", "0", "1", "2"] if f else ["--epochs", "1"]), "mnist"),
        "peers": (["peers_bench.py"] + ([] if f else ["--rounds", "2", "--archs", "mlp", "conv"]),
                  "peers"),
    }


def _has(need: str | None, data: str, cifar: str) -> str | None:
    """None if the requirement is met, else why not."""
    if need is None:
        return None
    if need == "peers":
        ok = all(importlib.util.find_spec(m) for m in ("bayesian_torch", "ivon"))
        return None if ok else "peers extra not installed"
    root = Path(cifar if need == "cifar10" else data)
    return None if (root / need).exists() else f"no {need} under {root}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default="../shared/data")
    p.add_argument("--cifar-root", default="/tmp/cifar_real",
                   help="folder with cifar10/ in binary form (make_cifar10_bin.py)")
    p.add_argument("--only", nargs="*", help="run only these entries")
    p.add_argument("--skip", nargs="*", default=[], help="skip these entries")
    p.add_argument("--full", action="store_true",
                   help="the published full sizes (the commands in docs/*.md)")
    p.add_argument("--list", action="store_true")
    a = p.parse_args()
    entries = suite(a.data_root, a.cifar_root, a.full)
    unknown = (set(a.only or []) | set(a.skip)) - set(entries)
    if unknown:
        raise SystemExit(f"unknown entries {sorted(unknown)}; "
                         f"choose from {list(entries)}")
    env = dict(os.environ)
    if not a.full:
        env["BAYESCALE_RESULTS_DIR"] = str(SUITE_DIR)
    report = []
    for name, (args, need) in entries.items():
        if (a.only and name not in a.only) or name in a.skip:
            continue
        cmd = [sys.executable, str(HERE / args[0]), *args[1:]]
        if a.list:
            print(f"{name:18s} {' '.join(cmd[1:])}")
            continue
        why = _has(need, a.data_root, a.cifar_root)
        if why:
            report.append((name, "skipped", why, 0.0))
            print(f"[run_all] skip {name}: {why}", flush=True)
            continue
        print(f"[run_all] {name}: {' '.join(cmd)}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.run(cmd, cwd=HERE.parent, env=env).returncode
        dt = time.perf_counter() - t0
        report.append((name, "ok" if rc == 0 else f"failed ({rc})", "", dt))
    if a.list:
        return
    tables = [] if a.full else ["--results", str(SUITE_DIR), "--summary",
                                str(SUITE_DIR / "TABLES.md")]
    subprocess.run([sys.executable, str(HERE / "tables.py"), *tables], cwd=HERE.parent,
                   check=False)
    print("\n[run_all] summary")
    for name, status, why, dt in report:
        print(f"  {name:18s} {status:12s} {dt / 60:6.1f} min  {why}")
    if any(s.startswith("failed") for _, s, _, _ in report):
        sys.exit(1)


if __name__ == "__main__":
    main()
