"""Uncertainty study: BNNs against the baselines users weigh them against, on one harness.

    python benchmarks/uncertainty_study.py mnist --data-root /work/shared/data --epochs 20
    python benchmarks/uncertainty_study.py cifar10 --data-root /tmp/cifar_real --epochs 30
    python benchmarks/uncertainty_study.py mnist ... --methods deterministic bnn --seeds 0

Methods (``study_methods.METHODS``; same architecture, data and epoch budget): ``deterministic``
(the twin), ``temperature_scaled`` (the twin + a temperature fitted on a validation split of the
training set), ``mc_dropout`` (the twin with dropout before the classifier, sampled at test time),
``deep_ensemble`` (twins of seeds s .. s+K-1, K = 5), ``bnn`` (mean-field Flipout, the shipped
config) and ``sghmc_bma`` (Ke & Fan's SGHMC, weight samples from the ends of its cycles
averaged). MNIST: the conv pair (``methods``) and the FC pair (``fc``: deterministic and bnn).

Every training is ``bayescale.train.train`` on the training set minus a 5,000-example validation
split (seed 0, the same for every method), under the shared benchmark lock, in
``bench_out/uncertainty_study/<dataset>/<training>``; a killed one resumes exactly from its last
epoch checkpoint. Each finished (section, method, seed) evaluation appends one row to
``benchmarks/results/uncertainty_study_<dataset>.partial.jsonl`` and is skipped on restart; the
result JSON, the docs table and the figures are rebuilt from those rows after every row. A
model trained again after its evaluation (a new machine, a deleted run) is evaluated anew; the
replaced row stays in the JSON under ``earlier``.

Evaluation, per method and seed: accuracy, NLL, Brier, ECE (15 bins) and AURC on the clean test
set; OOD AUROC (MNIST: the Fashion-MNIST test set), the better of predictive entropy and mutual
information; accuracy, NLL and ECE under each shift level (MNIST: rotations 0-180 degrees in 15
degree steps and additive Gaussian noise sd 0.1-0.5, clipped; CIFAR-10: CIFAR-10-C-style
Gaussian noise, Gaussian blur and contrast at severities 1-5) on the first ``--shift-size`` test
images; ``shift_ece``, the mean ECE over all shift levels; training seconds (optimizer-step time
of the engine) and inference seconds (the clean test set, under the lock).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from study_methods import ARCHS, METHODS, SECTIONS, Study, Training, common_overrides  # noqa: E402
from study_report import write_outputs  # noqa: E402

from bayescale.data.catalogue import load_dataset  # noqa: E402
from bayescale.data.datasets import Dataset, TensorSplit  # noqa: E402
from bayescale.data.shifts import shift_levels  # noqa: E402
from bayescale.data.split import validation_split  # noqa: E402
from bayescale.scale.bench import cpu_name, results_path  # noqa: E402
from bayescale.train.config import load_config  # noqa: E402
from bayescale.train.engine import train  # noqa: E402
from bayescale.uncertainty import metrics as M  # noqa: E402
from bayescale.uncertainty.decomposition import (  # noqa: E402
    mutual_information,
    predictive_entropy,
)

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench_out" / "uncertainty_study"
LOCK = Path("/tmp/bayescale-bench.lock")
VAL_SIZE, VAL_SEED, SHIFT_SEED, MC_SEED = 5000, 0, 1234, 0
SHIFTS = {"mnist": [("rotation", list(range(0, 181, 15))), ("noise", [0.1, 0.2, 0.3, 0.4, 0.5])],
          "cifar10": [("gaussian_noise", [1, 2, 3, 4, 5]), ("gaussian_blur", [1, 2, 3, 4, 5]),
                      ("contrast", [1, 2, 3, 4, 5])]}
SEEDS = {"deterministic": [0, 1, 2], "bnn": [0, 1, 2]}  # the rest: [0]
# the order of the work: a first comparison early, then the baselines, then more seeds
FIGURES_EVERY_ROW = True  # redraw the figures after each evaluation (not only at the end)
PRIORITY = [("conv", "deterministic"), ("vgg3", "deterministic"), ("conv", "temperature_scaled"),
            ("vgg3", "temperature_scaled"), ("conv", "bnn"), ("vgg3", "bnn"),
            ("fc", "deterministic"), ("fc", "bnn"), ("conv", "mc_dropout"),
            ("vgg3", "mc_dropout"), ("conv", "sghmc_bma"), ("vgg3", "sghmc_bma"),
            ("conv", "deep_ensemble"), ("vgg3", "deep_ensemble")]


@contextlib.contextmanager
def flock(path: Path) -> Iterator[float]:
    """Hold an exclusive lock on ``path`` (waiting for it); yields the seconds waited."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield time.perf_counter() - t0
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# ------------------------------------------------------------------------------------ data
def load_data(dataset: str, root: str | None) -> dict[str, Any]:
    """Train (minus validation) / validation / test / OOD tensors; ``prep`` maps raw [0, 1]
    images to model inputs (CIFAR-10: minus the per-pixel mean of the training part)."""
    if dataset == "mnist":
        split = load_dataset("mnist", root=root)
        ood = load_dataset("fashion-mnist", root=root).test
    else:
        try:
            split = load_dataset("cifar10", root=root, subtract_pixel_mean=False)
        except FileNotFoundError as err:
            raise SystemExit(f"{err}\nthe offline JPEG copy needs converting once: python "
                             "/work/shared/data/cifar10/make_cifar10_bin.py /tmp/cifar_real/"
                             "cifar10, then --data-root /tmp/cifar_real") from err
        ood = None
    train_part, val = validation_split(split.train, VAL_SIZE, VAL_SEED)
    mean = train_part.x.mean(0, keepdim=True) if dataset == "cifar10" else None

    def prep(x: torch.Tensor) -> torch.Tensor:
        return x if mean is None else x - mean

    def shifted(ds: Dataset) -> Dataset:
        return Dataset(prep(ds.x), ds.y, ds.name, ds.num_classes)

    return {"train": shifted(train_part), "val": shifted(val), "test_raw": split.test,
            "ood": ood, "prep": prep, "num_classes": split.num_classes, "name": split.name}


# ------------------------------------------------------------------------------------ training
def run_dir(dataset: str, tr: Training) -> Path:
    return WORK / dataset / tr.name


def ensure_trained(dataset: str, tr: Training, study: Study, data: dict[str, Any],
                   log: Path, extra: list[str]) -> dict[str, Any]:
    """Train ``tr`` unless its ``model.pt`` exists (resume a killed one); returns its summary."""
    out = run_dir(dataset, tr)
    summary = out / "study_train.json"
    with flock(out.with_name(f".{tr.name}.lock")):
        if summary.is_file():
            return json.loads(summary.read_text())
        cfg = load_config(tr.config, [*common_overrides(study, tr.config), *extra,
                                      *tr.overrides])
        split = TensorSplit(data["train"], data["val"], data["name"], data["num_classes"])
        resume = out if (out / "checkpoint.pt").is_file() else None
        print(f"[train] {tr.name}: {tr.config} {' '.join(tr.overrides)}"
              + (" (resuming)" if resume else ""), flush=True)
        with flock(LOCK) as waited:
            t0 = time.perf_counter()
            res = train(cfg, resume=resume, data=split, run_dir=out)
            wall = time.perf_counter() - t0
        row = {"kind": "train", "training": tr.name, "config": tr.config,
               "overrides": tr.overrides, "epochs": res["epochs"], "steps": res["steps"],
               "train_s": res["time_to_train_s"], "wall_s": wall, "lock_wait_s": waited,
               "val_eval": res["final_eval"], "resumed": resume is not None, "machine": cpu_name(),
               "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        summary.write_text(json.dumps(row, indent=1))
        _append(log, row)
        print(f"[train] {tr.name}: {res['time_to_train_s']:.0f} s of steps, {wall:.0f} s wall, "
              f"validation accuracy {res['final_eval']['test_acc']:.4f}", flush=True)
        return row


# ------------------------------------------------------------------------------------ evaluation
def _metrics(samples: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    mean = samples.double().mean(0)
    return {**M.classification_metrics(mean, labels, 15), "aurc": M.aurc(mean, labels)}


def evaluate(method: str, predict: Any, data: dict[str, Any], study: Study,
             shift_size: int) -> dict[str, Any]:
    """Every metric of one method and seed (see the module docstring)."""
    test = data["test_raw"]
    x, y = data["prep"](test.x), test.y
    torch.manual_seed(MC_SEED)
    with flock(LOCK):
        t0 = time.perf_counter()
        samples = predict(x)
        infer_s = time.perf_counter() - t0
    row: dict[str, Any] = {**_metrics(samples, y), "infer_s": infer_s,
                           "mc_samples": int(samples.shape[0])}
    row["reliability"] = {k: v.tolist() for k, v in
                          M.reliability(samples.double().mean(0), y, 15).items()}
    if data["ood"] is not None:
        ood = predict(data["prep"](data["ood"].x))
        scores = {"entropy": (predictive_entropy(samples.mean(0)), predictive_entropy(ood.mean(0))),
                  "mi": (mutual_information(samples), mutual_information(ood))}
        aucs = {k: M.auroc(a.double(), b.double()) for k, (a, b) in scores.items()}
        if samples.shape[0] == 1:  # MI is 0 everywhere: AUROC 0.5 by ties, not a measurement
            aucs["mi"] = None
        row["ood_auroc_entropy"], row["ood_auroc_mi"] = aucs["entropy"], aucs["mi"]
        row["ood_auroc"] = max(v for v in aucs.values() if v is not None)
        row["ood_score"] = max((k for k in aucs if aucs[k] is not None), key=lambda k: aucs[k])
    per_shift = []
    xs, ys = test.x[:shift_size], y[:shift_size]
    for kind, levels in SHIFTS[study.dataset]:
        for _, level, shifted in shift_levels(xs, kind, levels, seed=SHIFT_SEED):
            s = predict(data["prep"](shifted))
            m = _metrics(s, ys)
            per_shift.append({"shift": kind, "level": level, "accuracy": m["accuracy"],
                              "nll": m["nll"], "ece": m["ece"]})
    row["per_shift"] = per_shift
    row["shift_ece"] = sum(p["ece"] for p in per_shift) / len(per_shift)
    row.update({f"study_{k}": v for k, v in study.extra.items()})
    return row


# ------------------------------------------------------------------------------------ the loop
def _append(path: Path, row: dict[str, Any]) -> None:
    with path.open("a") as fh:
        fh.write(json.dumps(row) + "\n")


def read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _current(row: dict[str, Any], dataset: str, trainings: list[Training]) -> bool:
    """An evaluation stands unless one of its trainings was trained (again) after it: a
    retrained model is evaluated anew, and the replaced row stays on record as ``earlier``."""
    for tr in trainings:
        summary = run_dir(dataset, tr) / "study_train.json"
        if summary.is_file() and json.loads(summary.read_text())["finished"] > row["finished"]:
            return False
    return True


def plan(dataset: str, methods: list[str], seeds: list[int] | None) -> list[tuple[str, str, int]]:
    """(section, method, seed) in the order of the work: every method's first seed by
    ``PRIORITY``, then the further seeds of deterministic and bnn."""
    todo = []
    for section, names in SECTIONS[dataset].items():
        for m in names:
            if m in methods:
                default = SEEDS.get(m, [0]) if dataset == "mnist" else [0]  # CIFAR-10: one
                todo += [(section, m, s) for s in (seeds if seeds is not None else default)]
    order = {k: i for i, k in enumerate(PRIORITY)}
    return sorted(todo, key=lambda t: (t[2] > 0, t[2], order.get(t[:2], 99)))


def run_study(args: argparse.Namespace) -> Path:
    torch.set_num_threads(args.threads)
    global WORK, LOCK
    WORK = Path(args.work_dir) if args.work_dir else WORK
    LOCK = Path(args.lock)
    log = results_path(f"uncertainty_study_{args.dataset}.partial.jsonl")
    log.parent.mkdir(parents=True, exist_ok=True)
    data = load_data(args.dataset, args.data_root)
    config = {"epochs": args.epochs, "dataset": args.dataset, "val_size": VAL_SIZE,
              "val_seed": VAL_SEED, "samples": args.samples, "ensemble_size": args.ensemble_size,
              "dropout": args.dropout, "sghmc_cycles": args.sghmc_cycles,
              "sghmc_samples_per_cycle": args.sghmc_per_cycle, "shift_size": args.shift_size,
              "shifts": SHIFTS[args.dataset], "num_bins": 15, "threads": args.threads,
              "train_size": len(data["train"]), "test_size": len(data["test_raw"])}
    for section, method, seed in plan(args.dataset, args.methods, args.seeds):
        key = {"section": section, "method": method, "seed": seed, "epochs": args.epochs}
        study = Study(args.dataset, args.epochs, data["val"], args.samples, args.batch_size,
                      args.ensemble_size, args.dropout, args.sghmc_cycles, args.sghmc_per_cycle)
        spec = METHODS[method]
        trainings = spec.runs(section, seed, study)
        names = [tr.name for tr in trainings]  # a changed recipe trains and evaluates anew
        if any(all(r.get(k) == v for k, v in key.items()) and r.get("trainings") == names
               and _current(r, args.dataset, trainings)
               for r in read_rows(log) if r.get("kind") == "eval"):
            continue
        extra = ARCHS[args.dataset][section]["extra"]
        done = [ensure_trained(args.dataset, tr, study, data, log, extra) for tr in trainings]
        if args.train_only:
            continue
        print(f"[eval] {section}/{method} seed {seed}", flush=True)
        t0 = time.perf_counter()
        predict = spec.predict([run_dir(args.dataset, tr) for tr in trainings], study)
        row = {"kind": "eval", **key, **evaluate(method, predict, data, study, args.shift_size),
               "train_s": sum(d["train_s"] for d in done),
               "trainings": [tr.name for tr in trainings], "eval_wall_s": 0.0,
               "machine": cpu_name(),
               "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        row["eval_wall_s"] = time.perf_counter() - t0
        _append(log, row)
        print(f"[eval] {section}/{method} seed {seed}: acc {row['accuracy']:.4f} nll "
              f"{row['nll']:.4f} ece {row['ece']:.4f} ood {row.get('ood_auroc')} shift_ece "
              f"{row['shift_ece']:.4f} ({row['eval_wall_s']:.0f} s)", flush=True)
        write_outputs(args.dataset, read_rows(log), config, " ".join(["python", *sys.argv]),
                      figures=FIGURES_EVERY_ROW)
    return write_outputs(args.dataset, read_rows(log), config, " ".join(["python", *sys.argv]))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dataset", choices=sorted(SECTIONS))
    ap.add_argument("--data-root", required=True, help="folder holding the data sets")
    ap.add_argument("--epochs", type=float, default=None,
                    help="training epochs of every method (default: 20 MNIST, 30 CIFAR-10)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--seeds", nargs="+", type=int, default=None,
                    help="seeds of every method (default: MNIST 0 1 2 for deterministic and "
                         "bnn, 0 for the rest; CIFAR-10 0)")
    ap.add_argument("--samples", type=int, default=20, help="MC draws, bnn and mc_dropout (20)")
    ap.add_argument("--ensemble-size", type=int, default=5, help="deep ensemble members (5)")
    ap.add_argument("--dropout", type=float, default=0.5, help="mc_dropout rate (0.5)")
    ap.add_argument("--sghmc-cycles", type=int, default=4, help="SGHMC cycles M (4)")
    ap.add_argument("--sghmc-per-cycle", type=int, default=3, help="samples per cycle (3)")
    ap.add_argument("--shift-size", type=int, default=2000,
                    help="test images per shift level (the first N; 2000)")
    ap.add_argument("--batch-size", type=int, default=1000, help="inference batch (1000)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1)")
    ap.add_argument("--train-only", action="store_true", help="train, do not evaluate")
    ap.add_argument("--lock", default=str(LOCK),
                    help="the shared benchmark lock held by each training and timed inference")
    ap.add_argument("--work-dir", default=None,
                    help="where the trainings go (default bench_out/uncertainty_study)")
    args = ap.parse_args(argv)
    if args.epochs is None:
        args.epochs = 20 if args.dataset == "mnist" else 30
    if float(args.epochs).is_integer():
        args.epochs = int(args.epochs)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    print("wrote", run_study(args))


if __name__ == "__main__":
    main()
