"""Uncertainty benchmark (issue 5): seed BNNs vs their CNN twins on real MNIST, Fashion-MNIST OOD.

    flock /tmp/bayescale-bench.lock python benchmarks/uncertainty_bench.py \\
        --data-root /work/shared/data --epochs 3 --samples 100

For each of BNN_conv_flip, BNN_FC_flip and their deterministic twins CNN_conv, CNN_FC: a run
trained with ``bayescale train <config> train.epochs=E`` (shared with the other benchmarks via
``trained.py``) is evaluated with :func:`bayescale.evaluate.evaluate_run`: T MC weight draws on the
10,000 MNIST test digits and on the 10,000 Fashion-MNIST test images (the out-of-distribution
set): accuracy, NLL, Brier, ECE (15 bins), mean single-sample accuracy, held-out nats, and OOD
AUROC / AUPR / FPR95 scored by predictive entropy and by mutual information (a CNN's mutual
information is 0 for every input: its MI AUROC is 0.5 by construction). Writes
``benchmarks/results/uncertainty_mnist.json`` (with provenance) and the figures under
``docs/figures/`` (reliability, entropy/MI histograms, the seed's Fig. 3 and Fig. 4), drawn by
:mod:`bayescale.uncertainty.plots` from the saved arrays in ``bench_out/uncertainty/<config>/``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

from bayescale.data.datasets import MNIST_CLASSES
from bayescale.evaluate import evaluate_run, load_predictions
from bayescale.scale.bench import figures_path, provenance, results_path, write_json
from bayescale.uncertainty import plots as plots

sys.path.insert(0, str(Path(__file__).resolve().parent))
from trained import trained_run  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench_out" / "uncertainty"
MODELS = {  # config -> (model, twin of)
    "mnist_bnn_conv_flip_seed": ("BNN_conv_flip", None),
    "mnist_cnn_conv": ("CNN_conv", "BNN_conv_flip"),
    "mnist_bnn_fc_flip_seed": ("BNN_FC_flip", None),
    "mnist_cnn_fc": ("CNN_FC", "BNN_FC_flip"),
}


def _figures(config: str, model: str, run_dir: Path, out_dir: Path) -> list[str]:
    """The PNGs of one model (BNNs: all four; twins: reliability and histograms)."""
    p = load_predictions(out_dir / "predictions.npz")
    stem = f"uncertainty_{model}"
    made = [plots.plot_reliability(p, figures_path(f"{stem}_reliability.png")),
            plots.plot_uncertainty_histograms(p, figures_path(f"{stem}_ood_hist.png"),
                                              "Fashion-MNIST")]
    if model.startswith("BNN"):
        made += [plots.plot_posterior_convergence(run_dir,
                                                  figures_path(f"{stem}_fig3_posterior.png")),
                 plots.plot_true_class_draws(p, figures_path(f"{stem}_fig4_mc_draws.png"),
                                             MNIST_CLASSES)]
    return [os.path.relpath(m, ROOT) for m in made]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-root", required=True, help="folder holding mnist/ and fashion-mnist/")
    ap.add_argument("--epochs", type=int, default=3, help="training epochs of each run (3)")
    ap.add_argument("--samples", type=int, default=100, help="MC weight draws T (100)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (2)")
    ap.add_argument("--models", nargs="*", default=list(MODELS), help="configs to run")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows, figures = [], []
    for config in args.models:
        model, twin_of = MODELS[config]
        run_dir = trained_run(config, [f"train.epochs={args.epochs}"], data_root=args.data_root,
                              threads=args.threads)
        out_dir = WORK / config
        t0 = time.perf_counter()
        m = evaluate_run(run_dir, args.samples, ood="fashion-mnist", data_root=args.data_root,
                         out_dir=out_dir, progress=False)
        wall = time.perf_counter() - t0
        row = {"config": config, "model": model, "twin_of": twin_of, "run_dir":
               str(Path(run_dir).relative_to(ROOT)), "evaluate_wall_s": wall,
               **{k: v for k, v in m.items() if k not in ("run", "weights", "files", "created")}}
        rows.append(row)
        figures += _figures(config, model, Path(run_dir), out_dir)
        o = m["ood"]
        print(f"{model:14s} acc {m['accuracy']:.4f} nll {m['nll']:.4f} ece {m['ece']:.4f} "
              f"AUROC entropy {o['entropy']['auroc']:.4f} MI {o['mutual_information']['auroc']:.4f}"
              f"  ({m['mc_inference_s']:.1f} + {o['mc_inference_s']:.1f} s MC)", flush=True)
    record = {"benchmark": "uncertainty_mnist", "results": rows, "figures": figures,
              **provenance({"epochs": args.epochs, "samples": args.samples,
                            "threads": args.threads, "ood": "fashion-mnist (test, 10000)",
                            "in_distribution": "mnist (test, 10000)", "num_bins": 15,
                            "seed_mc": 0, "command": " ".join(["python", *sys.argv])})}
    print("wrote", write_json(results_path("uncertainty_mnist.json"), record))


if __name__ == "__main__":
    main()
