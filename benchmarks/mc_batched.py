"""Batched and adaptive Monte Carlo draws against the loop (``mc_predict_bench.py batched``).

For each model, one process, same inputs, same seed (so the same weight draws on every side):

- ``loop``: ``mc_predict(..., draws_per_pass=1)``, T passes of one draw;
- ``batched``: ``draws_per_pass=K`` with K what ``"auto"`` takes from the memory budget;
- ``auto``: the default ``draws_per_pass="auto"`` (probe, then the faster of loop and batched);
- ``plain``: one forward of the deterministic twin over the inputs (the per-draw floor);
- ``adaptive``: ``num_samples="auto"`` (cap T), its T, NLL and accuracy against the loop's T.

The three MC sides run interleaved, the order rotating per round; each call is timed (wall and
process CPU) and its peak resident memory growth is read from ``/proc/self/status`` (VmHWM
reset before the call; glibc's mmap threshold is fixed so freed tensors leave RSS). Models are
trained through the library first (``bayescale.train``, cached under ``--models-dir``) so the
adaptive rows measure a real predictive; CIFAR10_BNN_model is timed at its initial weights.
Every timed block holds ``/tmp/bayescale-bench.lock``. Results go to ``mc_predict.json`` under
``"batched"`` (the file's other rows are kept).

    python benchmarks/mc_predict_bench.py batched --data-root ../shared/data
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

import bayescale
from bayescale.scale.bench import bench_lock, provenance, results_path, summary, write_json
from bayescale.uncertainty.metrics import accuracy, nll
from bayescale.uncertainty.passes import auto_draws_per_pass

MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}
# model -> (shipped config, data set, test inputs, T, training epochs (0: initial weights))
CASES = {
    "BNN_conv_flip": ("mnist_bnn_conv_flip_seed", "mnist", 10000, 300, 2),
    "BNN_FC_flip": ("mnist_bnn_fc_flip_seed", "mnist", 10000, 300, 5),
    "CIFAR10_BNN_model": ("cifar10_bnn_seed", "cifar10", 1000, 100, 0),
}
TARGETS = {"conv_speedup": 3.0, "fc_plain_passes_per_draw": 1.2, "adaptive_nll_rel": 0.01,
           "adaptive_max_draws": 100}


def _kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _measure(fn, device: torch.device) -> tuple[Any, dict[str, float]]:
    """Wall and process CPU seconds of ``fn()``, and its peak memory growth: resident memory
    on the CPU, allocated device memory on CUDA (synchronized before and after)."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device) / 1024
    else:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM
        before = _kb("VmRSS")
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    if cuda:
        torch.cuda.synchronize(device)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    peak = torch.cuda.max_memory_allocated(device) / 1024 if cuda else _kb("VmHWM")
    return out, {"wall_s": wall, "cpu_s": cpu, "peak_growth_mb": (peak - before) / 1024}


def _model(name: str, args: argparse.Namespace) -> tuple[torch.nn.Module, torch.Tensor,
                                                          torch.Tensor, dict[str, Any]]:
    """The (trained) model and its first ``n`` test inputs and labels."""
    from bayescale.models import model_spec
    from bayescale.train.builders import load_data
    from bayescale.train.config import load_config
    from bayescale.train.engine import train
    from bayescale.train.runs import build_model, load_run

    config, data, n, _, epochs = CASES[name]
    n = args.num_inputs or n
    run_dir = Path(args.models_dir) / f"{name}-e{epochs}"
    root = args.cifar_root if data == "cifar10" and args.cifar_root else args.data_root
    overrides = [f"data.root={root}", f"train.epochs={max(epochs, 1)}",
                 f"output.dir={run_dir.parent}", f"output.name={run_dir.name}",
                 "train.progress=false", f"train.threads={args.threads}",
                 "output.tensorboard=false"]
    meta = {"config": config, "epochs": epochs}
    if epochs and not (run_dir / "model.pt").is_file():
        with bench_lock():
            t0 = time.perf_counter()
            train(load_config(config, overrides))
            meta["train_s"] = time.perf_counter() - t0
    if epochs:
        run = load_run(run_dir)
        model, test = run.model, run.data().test
    else:
        cfg = load_config(config, overrides)
        torch.manual_seed(0)
        model = build_model(cfg)
        test = load_data(cfg, model_spec(cfg.model.name).input_shape).test
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    return model.eval().to(dev), test.x[:n].to(dev), test.y[:n].to(dev), meta


def bench_model(name: str, args: argparse.Namespace) -> dict[str, Any]:
    model, x, y, meta = _model(name, args)
    _, _, n, t, _ = CASES[name]
    n = len(x)
    bs = args.batch_size
    dev = torch.device(args.device)
    budget = int(args.memory_budget_mb * 2**20) if args.memory_budget_mb else None
    k = auto_draws_per_pass(model, t - 1, bs, budget)
    plain = bayescale.get_model(name, bayesian=False).eval().to(dev)
    sides = {"loop": 1, "batched": k, "auto": "auto"}
    wall: dict[str, list[dict]] = {s: [] for s in sides}
    means: dict[str, torch.Tensor] = {}
    info: dict[str, Any] = {}

    def mc(side: str):
        torch.manual_seed(args.seed)
        return bayescale.mc_predict(model, x, t, batch_size=bs, draws_per_pass=sides[side],
                                    memory_budget=budget, return_info=True)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    with bench_lock():
        bayescale.mc_predict(model, x[:bs], 2, batch_size=bs)  # warm-up
        with torch.no_grad():
            plain(x[:bs])
            plain_s = []
            for _ in range(args.plain_reps):
                sync()
                w0 = time.perf_counter()
                for i in range(0, n, bs):
                    plain(x[i:i + bs])
                sync()
                plain_s.append(time.perf_counter() - w0)
        names = list(sides)
        for r in range(args.rounds):
            for side in names[r % 3:] + names[:r % 3]:
                (probs, inf), m = _measure(lambda side=side: mc(side), dev)
                wall[side].append(m)
                means[side], info[side] = probs, inf
                print(f"{name:18s} {side:7s} T={t} {m['wall_s']:8.2f} s  peak +"
                      f"{m['peak_growth_mb']:.0f} MB  K={inf.draws_per_pass}", flush=True)
        torch.manual_seed(args.seed)
        (ad, ad_info), ad_m = _measure(lambda: bayescale.mc_predict(
            model, x, "auto", batch_size=bs, max_samples=t, memory_budget=budget,
            return_info=True), dev)
    med = {s: summary([m["wall_s"] for m in wall[s]])["median_s"] for s in sides}
    plain_pass = summary(plain_s)["median_s"]
    ref = means["loop"]
    row = {
        "name": "batched", "model": name, "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "memory_budget_mb": args.memory_budget_mb, "data": CASES[name][1], "num_inputs": n,
        "num_samples": t, "batch_size": bs, "draws_per_pass": k, "rounds": args.rounds,
        "auto_draws_per_pass": info["auto"].draws_per_pass, **meta,
        "sides": {s: {"median_s": med[s], "calls": wall[s]} for s in sides},
        "plain_pass_s": plain_pass, "plain_pass_calls_s": plain_s,
        "speedup_batched": med["loop"] / med["batched"], "speedup_auto": med["loop"] / med["auto"],
        "plain_passes_per_draw": {s: med[s] / t / plain_pass for s in sides},
        "max_abs_diff_vs_loop": {s: float((means[s] - ref).abs().max()) for s in sides},
        "adaptive": {"num_samples": ad_info.num_samples, "draws_per_pass": ad_info.draws_per_pass,
                     "standard_error": ad_info.standard_error, "converged": ad_info.converged,
                     **ad_m, "nll": nll(ad, y), "accuracy": accuracy(ad, y),
                     f"nll_T{t}": nll(ref, y), f"accuracy_T{t}": accuracy(ref, y)},
    }
    a = row["adaptive"]
    a["nll_rel_diff"] = abs(a["nll"] - a[f"nll_T{t}"]) / a[f"nll_T{t}"]
    print(f"{name:18s} loop {med['loop']:.1f} s, batched(K={k}) {med['batched']:.1f} s "
          f"({row['speedup_batched']:.2f}x), auto {med['auto']:.1f} s "
          f"({row['speedup_auto']:.2f}x); adaptive T={a['num_samples']} NLL {a['nll']:.4f} vs "
          f"{a[f'nll_T{t}']:.4f} at T={t}", flush=True)
    return row


def quickstart_eval(args: argparse.Namespace) -> dict[str, Any]:
    """The quickstart's evaluation step (``bayescale quickstart``: BNN_conv_flip, 3 epochs on
    mnist-small, fashion-mnist-small as OOD set) with the old fixed T = 100 and with the new
    default ``"auto"``, on one trained run, in one process (order: fixed, auto, fixed, auto)."""
    from bayescale.evaluate import evaluate_run
    from bayescale.train.config import load_config
    from bayescale.train.engine import train

    run_dir = Path(args.models_dir) / "quickstart"
    if not (run_dir / "model.pt").is_file():
        with bench_lock():
            train(load_config("quickstart", [f"output.dir={run_dir.parent}", "output.name="
                                             "quickstart", "train.progress=false",
                                             f"train.threads={args.threads}"]))
    torch.set_num_threads(args.threads)
    sides: dict[str, list[dict[str, Any]]] = {"fixed_T100": [], "auto": []}
    with bench_lock():
        for _ in range(args.rounds):
            for side, t in (("fixed_T100", 100), ("auto", "auto")):
                w0 = time.perf_counter()
                m = evaluate_run(run_dir, t, ood="fashion-mnist-small", progress=False,
                                 out_dir=Path(args.models_dir) / f"qs-eval-{side}")
                sides[side].append({"wall_s": time.perf_counter() - w0,
                                    "mc_inference_s": m["mc_inference_s"]
                                    + m["ood"]["mc_inference_s"],
                                    "num_samples": m["num_samples"], "accuracy": m["accuracy"],
                                    "nll": m["nll"], "ece": m["ece"],
                                    "ood_auroc_mi": m["ood"]["mutual_information"]["auroc"]})
                print(f"quickstart eval {side:10s} T={m['num_samples']:3d} "
                      f"{sides[side][-1]['wall_s']:6.1f} s  NLL {m['nll']:.4f}", flush=True)
    med = {s: summary([c["wall_s"] for c in v])["median_s"] for s, v in sides.items()}
    return {"name": "quickstart_eval", "model": "BNN_conv_flip", "data": "mnist-small",
            "sides": {s: {"median_s": med[s], "calls": v} for s, v in sides.items()},
            "speedup": med["fixed_T100"] / med["auto"]}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-root", required=True, help="folder with mnist/ and cifar10/")
    p.add_argument("--cifar-root", help="root of cifar10/cifar-10-batches-bin (default: "
                   "--data-root; write it with ../shared/data/cifar10/make_cifar10_bin.py)")
    p.add_argument("--models", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--models-dir", default="/tmp/bayescale-mc-models")
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--num-inputs", type=int, help="test inputs (default: the model's case)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--plain-reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (the GPU check of the "
                   "batched draws: --device cuda)")
    p.add_argument("--memory-budget-mb", type=float, default=None,
                   help="memory for the K stacked weight draws (default: mc_predict's 256 MiB)")
    p.add_argument("--quickstart", action="store_true",
                   help="instead: the quickstart's evaluation, fixed T = 100 against auto")
    p.add_argument("--out", default=str(results_path("mc_predict.json")))
    args = p.parse_args(argv)
    if any(os.environ.get(k) != v for k, v in MALLOC_ENV.items()):  # glibc reads it at start
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_ENV})
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    old = json.loads(out.read_text()) if out.is_file() else {"benchmark": "mc_predict"}
    if args.quickstart:
        old["quickstart_eval"] = quickstart_eval(args)
        old["quickstart_eval"]["provenance"] = provenance(config=vars(args))
        write_json(out, old)
        print(f"wrote {out}")
        return
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: torch {torch.__version__} sees no CUDA "
                         "device; run on a GPU machine or use --device cpu")
    rows = [r for r in old.get("batched", []) if r["model"] not in args.models
            or r.get("device", "cpu") != args.device]
    for name in args.models:
        rows.append(bench_model(name, args))
        old["batched"] = rows
        old["batched_provenance"] = provenance(config={**vars(args), "targets": TARGETS,
                                                       "malloc_env": MALLOC_ENV})
        write_json(out, old)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
