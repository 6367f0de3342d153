"""The mean-field BNN's recipe, measured on the uncertainty study's harness (MNIST,
``BNN_conv_flip``): each variant of the seed's settings (``mnist_bnn_conv_flip_seed``) is trained
by the library on the study's data (the 55,000 training images left after the validation split)
for the study's budget and evaluated exactly as the study's ``bnn`` row (test accuracy, NLL, ECE,
Fashion-MNIST AUROC, the rotation and noise shifts, T = 20 draws).

Quality only: these trainings hold a lock of their own, not the shared benchmark lock, so their
seconds are not a cost measurement. The variant chosen becomes the shipped config and is then
run by the study proper, under the shared lock.

    python benchmarks/bnn_recipe.py --data-root ../shared/data [--epochs 20] [--variants ...]
        -> benchmarks/results/bnn_recipe_mnist.json (resumable: .partial.jsonl)
    python benchmarks/bnn_recipe.py --data-root ../shared/data --arch fc --variants ...
        -> benchmarks/results/bnn_recipe_mnist_fc.json (``BNN_FC_flip``, seed: ``fc1`` Bayesian)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import uncertainty_study as US  # noqa: E402
from study_methods import METHODS, Study, Training  # noqa: E402

from bayescale.scale.bench import provenance, results_path, write_json  # noqa: E402

BASE = {"conv": "mnist_bnn_conv_flip_seed", "fc": "mnist_bnn_fc_flip_seed"}


def variants(steps: int) -> dict[str, list[str]]:
    """Name -> overrides of the base (the seed's settings; ``steps``: the run's optimizer steps)."""
    return {
        "seed": [],
        "kl_warmup": ["kl.schedule=linear", f"kl.anneal_steps={steps // 4}"],  # KL 0 -> 1
        "tempered_kl_0.1": ["kl.weight=0.1"],  # a tempered posterior, labelled as such
        "tfp_vgg_init": ["model.init=tfp_vgg"],  # small initial sigma (TFP's VGG init)
        "cosine_lr": ["schedule.name=cosine"],
        "lr_3e-3_cosine": ["optim.lr=3e-3", "schedule.name=cosine"],
        # on top of the best so far (cosine): which layers are Bayesian, draws per step
        "cosine_all_bayesian": ["schedule.name=cosine", "model.bayesian_layers=all"],
        "cosine_last_layer": ["schedule.name=cosine", "model.bayesian_layers=last"],
        # on top of the lead (cosine, all layers Bayesian): two ELBO draws per step
        "cosine_all_bayesian_mc2": ["schedule.name=cosine", "model.bayesian_layers=all",
                                    "train.mc_samples=2"],
    }


def _write(stem: str, log: Path, args: argparse.Namespace, table: dict[str, list[str]]) -> None:
    """The result JSON, rebuilt from every evaluation row so far."""
    rows = [r for r in US.read_rows(log) if r["kind"] == "eval"]
    if rows:
        write_json(results_path(f"{stem}.json"), {
            "provenance": provenance(config={"epochs": args.epochs, "seed": args.seed,
                                             "base": BASE[args.arch], "variants": table,
                                             "samples": 20, "shift_size": args.shift_size,
                                             "lock": "own (not timed)"}),
            "variants": {r["variant"]: {k: v for k, v in r.items() if k != "per_shift"}
                         for r in rows}})


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--variants", nargs="+", default=None, help="names (default: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--arch", choices=sorted(BASE), default="conv",
                    help="conv: BNN_conv_flip (default); fc: BNN_FC_flip")
    ap.add_argument("--shift-size", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    US.WORK = US.ROOT / "bench_out" / "bnn_recipe"
    US.LOCK = Path("/tmp/bayescale-recipe.lock")  # not the shared lock: nothing here is timed
    stem = "bnn_recipe_mnist" + ("" if args.arch == "conv" else f"_{args.arch}")
    log = results_path(f"{stem}.partial.jsonl")
    data = US.load_data("mnist", args.data_root)
    steps = args.epochs * math.ceil(len(data["train"]) / 64)
    table = variants(steps)
    names = args.variants or list(table)
    unknown = sorted(set(names) - set(table))
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {sorted(table)}")
    study = Study("mnist", args.epochs, data["val"])
    for name in names:
        if any(r.get("variant") == name and r.get("epochs") == args.epochs
               and r.get("seed") == args.seed for r in US.read_rows(log) if r["kind"] == "eval"):
            continue
        tr = Training(f"{args.arch}-{name}-s{args.seed}", BASE[args.arch],
                      [f"train.seed={args.seed}", *table[name]])
        done = US.ensure_trained("mnist", tr, study, data, log, [])
        print(f"[eval] {name}", flush=True)
        t0 = time.perf_counter()
        predict = METHODS["bnn"].predict([US.run_dir("mnist", tr)], study)
        row = {"kind": "eval", "variant": name, "overrides": table[name], "seed": args.seed,
               "epochs": args.epochs,
               **US.evaluate("bnn", predict, data, study, args.shift_size),
               "train_s_untimed": done["train_s"], "eval_wall_s": time.perf_counter() - t0}
        row.pop("reliability", None)
        US._append(log, row)
        print(f"[eval] {name}: acc {row['accuracy']:.4f} nll {row['nll']:.4f} ece "
              f"{row['ece']:.4f} ood {row['ood_auroc']:.3f} shift_ece {row['shift_ece']:.4f}",
              flush=True)
        _write(stem, log, args, table)
    _write(stem, log, args, table)
    print(json.dumps({r["variant"]: round(r["nll"], 4) for r in US.read_rows(log)
                      if r["kind"] == "eval"}))


if __name__ == "__main__":
    main()
