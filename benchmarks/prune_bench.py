"""Pruning benchmarks of issue 6: accuracy after SNR pruning, and real MC-inference speed-ups.

    python benchmarks/prune_bench.py accuracy --data-root /work/shared/data   # BNN_conv/FC_flip
    python benchmarks/prune_bench.py mlp --data-root /work/shared/data        # 784-400-400-10
    python benchmarks/prune_bench.py cifar --data-root /tmp/cifar_real        # CIFAR10_BNN_model

* ``accuracy``: the seed MNIST models trained as in the training issue (``benchmarks/trained.py``,
  shipped config, 3 epochs), BPrune table at 0 / 80 / 90 % of the Bayesian weights pruned by SNR,
  clean and bprune modes, on the whole MNIST test set. An IVON run (``--models mnist_ivon:3``)
  is pruned by the SNR |m|/sigma of its posterior, clean mode (m = sigma = 0), no fine-tuning.
* ``mlp``: a Flipout BNN 784-400-400-10 trained here (Adam, ELBO), 80 % of the hidden units of each
  layer removed by unit SNR and the network rebuilt smaller; MC inference time A/B interleaved.
* ``cifar``: ``CIFAR10_BNN_model`` (trained run, 3 epochs), 70 % of the filters of each
  convolution removed and compacted; same timing.

Timing: :func:`bayescale.scale.bench.time_interleaved` (warm-up excluded, original and pruned
alternating in one process), ``torch.set_num_threads(--threads)``; one timed call = the whole MC
prediction (``num_samples`` weight draws over ``--timing-batch`` test inputs). Results go to
``benchmarks/results/prune_<suite>.json`` with provenance.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

import bayescale
from bayescale.data.catalogue import load_dataset
from bayescale.pruning import bprune as P
from bayescale.pruning import compact as C
from bayescale.pruning import posterior as PP
from bayescale.scale.bench import provenance, results_path, summary, time_interleaved, write_json
from bayescale.train.runs import load_run
from bayescale.uncertainty.metrics import accuracy, heldout_log_likelihood
from bayescale.uncertainty.predict import mc_predict

sys.path.insert(0, str(Path(__file__).parent))
from trained import trained_run  # noqa: E402


def _mc_metrics(model: nn.Module, x: torch.Tensor, y: torch.Tensor, samples: int) -> dict:
    probs = mc_predict(model, x, samples, batch_size=1000)
    return {"acc_mc": accuracy(probs, y), "heldout_nats": heldout_log_likelihood(probs, y)}


def _timing(models: dict[str, nn.Module], x: torch.Tensor, samples: int, rounds: int) -> dict:
    fns = {k: (lambda m=m: mc_predict(m, x, samples, batch_size=x.shape[0]))
           for k, m in models.items()}
    times = time_interleaved(fns, warmup=1, rounds=rounds, steps_per_round=1)
    out = {k: summary(v) for k, v in times.items()}
    base = out[next(iter(models))]["median_s"]
    for k in out:
        out[k]["speedup"] = base / out[k]["median_s"]
    return out


def _finetuned_rows(run, data, a: argparse.Namespace, kw: dict) -> list[dict]:
    """Clean pruning at 80/90 %, then ``--finetune-epochs`` of ELBO fine-tuning (masks kept)."""
    rows = []
    train = run.data().train
    for s in (0.8, 0.9):
        pruned, info = P.prune(run.model, sparsity=s)
        P.finetune(pruned, train.x, train.y, epochs=a.finetune_epochs, lr=a.finetune_lr)
        row = P.bprune_table(pruned, data, [0.0], **kw)[0]
        row.update(mode=f"clean+finetune{a.finetune_epochs}", threshold=info["threshold"],
                   target_sparsity=s, percent_pruned=info["percent_pruned"])
        rows.append(row)
    return rows


def accuracy_suite(a: argparse.Namespace) -> dict:
    rows = {}
    for item in a.models.split(","):
        config, epochs = item.split(":")
        run = load_run(trained_run(config, [f"train.epochs={epochs}"], data_root=a.data_root))
        test = run.data().test
        data = (test.x[: a.num_test], test.y[: a.num_test])
        kw = {"num_samples": a.samples, "num_passes": a.passes, "batch_size": 2000}
        t0 = time.perf_counter()
        if run.posterior is not None:  # IVON: SNR |m|/sigma of the optimizer's posterior
            table = PP.posterior_prune_table(run.model, run.posterior, data, [0.0],
                                             sparsities=[0.8, 0.9], **kw)
        else:  # the unpruned row once (threshold 0 prunes nothing in either mode), both modes
            table = P.bprune_table(run.model, data, [0.0], sparsities=[0.8, 0.9], **kw)
            table += P.bprune_table(run.model, data, sparsities=[0.8, 0.9], modes=("bprune",),
                                    **kw)
            if a.finetune_epochs:
                table += _finetuned_rows(run, data, a, kw)
        for r in table:
            b = table[0]
            r["acc_mc_loss_points"] = 100 * (b["acc_mc"] - r["acc_mc"])
            r["acc_single_loss_points"] = 100 * (b["acc_single"] - r["acc_single"])
        label = run.config.model.name + (" IVON" if run.posterior is not None else "")
        rows[f"{label} ({epochs} epochs)"] = {
            "run": str(run.run_dir), "train_epochs": int(epochs), "table": table,
            "seconds": time.perf_counter() - t0}
        for r in table:
            print(label, {k: (round(v, 4) if isinstance(v, float) else v)
                                          for k, v in r.items()}, flush=True)
    return rows


def _train_mlp(x: torch.Tensor, y: torch.Tensor, epochs: int) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 400), nn.ReLU(), nn.Linear(400, 400),
                        nn.ReLU(), nn.Linear(400, 10))
    model = bayescale.bayesianize(net, estimator="flipout")
    return P.finetune(model, x, y, epochs=epochs, batch_size=128, lr=1e-3)


def _speed(model: nn.Module, small: nn.Module, data, a: argparse.Namespace, extra: dict
           ) -> dict:
    test = data.test
    xt = test.x[: a.timing_batch]
    xe, ye = test.x[: a.num_test], test.y[: a.num_test]
    res = {"timing": _timing({"original": model, "pruned": small}, xt, a.samples, a.rounds),
           "original": _mc_metrics(model, xe, ye, a.eval_samples),
           "pruned": _mc_metrics(small, xe, ye, a.eval_samples), "num_test": int(xe.shape[0]),
           "weights": {"original": sum(m.weight_mu.numel() for m in P.prunable_layers(model)
                                       .values()),
                       "pruned": sum(m.weight_mu.numel() for m in P.prunable_layers(small)
                                     .values())}, **extra}
    if a.finetune_epochs:
        tuned = P.finetune(copy.deepcopy(small), data.train.x, data.train.y,
                           epochs=a.finetune_epochs, lr=a.finetune_lr)
        res["pruned_finetuned"] = _mc_metrics(tuned, xe, ye, a.eval_samples)
        res["finetune_epochs"] = a.finetune_epochs
    res["acc_change_points"] = 100 * (res["pruned"]["acc_mc"] - res["original"]["acc_mc"])
    print({k: v for k, v in res.items() if k != "timing"},
          {k: round(v["speedup"], 2) for k, v in res["timing"].items()}, flush=True)
    return res


def mlp_suite(a: argparse.Namespace) -> dict:
    data = load_dataset("mnist", root=a.data_root)
    t0 = time.perf_counter()
    model = _train_mlp(data.train.x, data.train.y, a.epochs)
    train_s = time.perf_counter() - t0
    small = C.structured_prune(model, data.test.x[:1], sparsity=0.8)
    widths = [m.weight_mu.shape[0] for m in P.prunable_layers(small).values()]
    return {"mlp_784_400_400_10": _speed(model.eval(), small.eval(), data, a, {
        "train_epochs": a.epochs, "train_seconds": train_s, "pruned_widths": widths,
        "unit_sparsity": 0.8})}


def cifar_suite(a: argparse.Namespace) -> dict:
    run = load_run(trained_run("cifar10_bnn_seed", [f"train.epochs={a.epochs}", "optim.lr=0.001"],
                               data_root=a.data_root))
    data = run.data()
    convs = [n for n, m in run.model.named_modules() if isinstance(m, bayescale.BayesConv2d)]
    small = C.structured_prune(run.model, data.test.x[:1], sparsity=0.7, layers=convs)
    widths = [m.weight_mu.shape[0] for m in P.prunable_layers(small).values()]
    return {"CIFAR10_BNN_model": _speed(run.model, small.eval(), data, a, {
        "run": str(run.run_dir), "filter_sparsity": 0.7, "pruned_widths": widths,
        "data": "CIFAR-10 (JPEG copy)"})}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("suite", choices=("accuracy", "mlp", "cifar"))
    p.add_argument("--data-root", default="/work/shared/data")
    p.add_argument("--epochs", type=int, default=3, help="training epochs (3)")
    p.add_argument("--samples", type=int, default=50, help="MC samples per prediction (50)")
    p.add_argument("--passes", type=int, default=50, help="single-sample passes (BPrune: 50)")
    p.add_argument("--eval-samples", type=int, default=20, help="MC samples, accuracy (20)")
    p.add_argument("--timing-batch", type=int, default=1000, help="test inputs per timed call")
    p.add_argument("--num-test", type=int, default=None, help="test inputs for accuracy (all)")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds per model (5)")
    p.add_argument("--finetune-epochs", type=int, default=1)
    p.add_argument("--finetune-lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--models", default="mnist_bnn_conv_flip_seed:3,mnist_bnn_fc_flip_seed:10",
                   help="accuracy: CONFIG:EPOCHS,... trained runs to prune")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    suite = {"accuracy": accuracy_suite, "mlp": mlp_suite, "cifar": cifar_suite}[a.suite]
    results = suite(a)
    config = dict(vars(a))
    command = "python benchmarks/prune_bench.py " + " ".join(sys.argv[1:])
    path = results_path(f"prune_{a.suite}.json")
    record = json.loads(path.read_text()) if path.is_file() else {"results": {}}
    for entry in results.values():  # entries of earlier commands stay, each with its own
        entry.update(command=command, provenance=provenance(config))
    record["results"].update(results)
    record["benchmark"] = f"prune_{a.suite}"
    write_json(path, record)
    print("wrote", path)


if __name__ == "__main__":
    main()
