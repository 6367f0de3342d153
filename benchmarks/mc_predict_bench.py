"""Cost of Monte Carlo prediction: bayescale.mc_predict against T plain forwards, and its memory.

Issue 5 targets (CPU, 2 threads): T = 100 weight draws over 1,024 inputs, batch 1,024;
ratio = mc_predict(Bayesian model) / (T x one forward of the plain twin) <= 1.10, and peak
memory bounded by the input chunk, not by T.

    (b) conv: 1x28x28 -> conv32 3x3 -> conv64 3x3 -> maxpool 2 -> dense 128 -> dense 10
    (c) vgg3: the seed's CIFAR-10 3-VGG-block net, get_model("CIFAR10_BNN_model") and its
        deterministic twin get_model("CIFAR10_BNN_model", bayesian=False)

Timing: the plain twin and the Bayesian model built with each training estimator (reparam,
flipout, local; inference always uses one fixed weight draw per sample, so they should cost
the same) run A/B interleaved in one process (bayescale.scale.bench.time_interleaved), one timed
call = the whole T-sample prediction; medians. Both sides get the same inputs and batch size;
the plain side is T forwards with no softmax or averaging (so the ratio also charges
mc_predict for those). glibc's allocator is tuned as in layer_overhead.py (recorded). Wall
time is the target's measure; process CPU time is reported as the cross-check for a shared
machine (other jobs stretch wall time, not the work done).

Overhead: the sampling work alone (eps, softplus, mu + sigma * eps for every layer) against one
plain forward, timed with many short interleaved calls, predicts the ratio robustly.

Memory: each (arch, batch_size, T) runs in a fresh process with glibc's mmap threshold fixed
at 128 KiB (freed tensors return to the OS, so RSS tracks live memory); we report the peak RSS
growth (VmHWM after a reset, minus RSS before) of one mc_predict call.

    flock /tmp/bayescale-bench.lock python benchmarks/mc_predict_bench.py \\
        --out benchmarks/results/mc_predict.json

``python benchmarks/mc_predict_bench.py batched --data-root ../shared/data`` runs the batched
and adaptive draws against the loop instead (:mod:`mc_batched`; its own lock per block).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

import bayescale
from bayescale.scale.bench import provenance, results_path, summary, write_json

sys.path.insert(0, str(Path(__file__).resolve().parent))
from layer_overhead import MALLOC_ENV, conv  # noqa: E402  (same net (b) as the train benchmark)


def vgg3() -> nn.Module:
    return bayescale.get_model("CIFAR10_BNN_model", bayesian=False)


ARCHS = {"conv": (conv, (1, 28, 28)), "vgg3": (vgg3, (3, 32, 32))}
TARGET = 1.10
MEMORY_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}


def _plain_fn(model: nn.Module, x: torch.Tensor, num_samples: int, batch_size: int):
    @torch.no_grad()
    def run() -> None:
        for _ in range(num_samples):
            for i in range(0, x.shape[0], batch_size):
                model(x[i : i + batch_size])

    return run


def _mc_fn(model: nn.Module, x: torch.Tensor, num_samples: int, batch_size: int):
    def run() -> None:
        bayescale.mc_predict(model, x, num_samples, batch_size=batch_size)

    return run


def time_arch(arch: str, args) -> dict:
    build, shape = ARCHS[arch]
    torch.manual_seed(0)
    plain = build().eval()
    x = torch.rand(args.num_inputs, *shape)
    fns = {"plain": _plain_fn(plain, x, args.num_samples, args.batch_size)}
    _plain_fn(plain, x, 1, args.batch_size)()  # warm-up: one pass (a timed call is T passes)
    for est in args.estimators:
        bayes = bayescale.bayesianize(plain, estimator=est).eval()
        fns[est] = _mc_fn(bayes, x, args.num_samples, args.batch_size)
        _mc_fn(bayes, x, 1, args.batch_size)()
    t0 = time.perf_counter()
    wall, cpu = _interleaved(fns, args.warmup, args.rounds)
    sp, cp = summary(wall["plain"]), summary(cpu["plain"])
    rows = []
    for est in args.estimators:
        sb, cb = summary(wall[est]), summary(cpu[est])
        ratio = sb["median_s"] / sp["median_s"]
        cpu_ratio = cb["median_s"] / cp["median_s"]
        ratio_min = min(wall[est]) / min(wall["plain"])  # least disturbed calls
        rows.append({"arch": arch, "estimator": est, "plain": sp, "bayes": sb, "ratio": ratio,
                     "ratio_of_min": ratio_min, "plain_cpu": cp, "bayes_cpu": cb,
                     "cpu_ratio": cpu_ratio, "wall_s": {"plain": wall["plain"], "bayes": wall[est]},
                     "target": TARGET, "meets_target": ratio <= TARGET,
                     "per_draw_ms": {"plain": 1e3 * sp["median_s"] / args.num_samples,
                                     "bayes": 1e3 * sb["median_s"] / args.num_samples}})
        print(f"{arch:5s} {est:8s} plain {sp['median_s']:7.3f} s  mc_predict {sb['median_s']:7.3f}"
              f" s  ratio {ratio:5.3f}x (of min {ratio_min:5.3f}x, CPU time {cpu_ratio:5.3f}x; "
              f"target <= {TARGET}x)",
              flush=True)
    rows[-1]["group_wall_s"] = time.perf_counter() - t0
    return rows


def _interleaved(fns: dict, warmup: int, rounds: int) -> tuple[dict, dict]:
    """Wall and process-CPU seconds per call, A/B interleaved with the order rotating per round.

    CPU time (all threads of this process) is the cross-check on a shared machine: other jobs
    stretch wall time but not the work done here.
    """
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            w0, c0 = time.perf_counter(), time.process_time()
            fns[name]()
            wall[name].append(time.perf_counter() - w0)
            cpu[name].append(time.process_time() - c0)
    return wall, cpu


def sampling_overhead(arch: str, args) -> dict:
    """The Bayesian extra work per MC sample, timed alone with many short interleaved calls.

    Per draw and layer mc_predict adds eps ~ N(0, 1), sigma = softplus(rho) and
    W = mu + sigma * eps (then the same forward as the plain net). Its cost against one plain
    forward over the inputs predicts the ratio without the minute-long calls' noise.
    """
    build, shape = ARCHS[arch]
    torch.manual_seed(0)
    plain = build().eval()
    layers = bayescale.bayesian_layers(bayescale.bayesianize(plain))
    x = torch.rand(args.num_inputs, *shape)

    @torch.no_grad()
    def draw() -> None:
        for layer in layers:
            sigma = layer.weight_sigma
            torch.addcmul(layer.weight_mu, sigma, torch.randn_like(sigma))

    fns = {"draw": draw, "forward": _plain_fn(plain, x, 1, args.batch_size)}
    wall, cpu = _interleaved(fns, 2, args.overhead_rounds)
    draw_s, fwd_s = (summary(wall[k])["median_s"] for k in ("draw", "forward"))
    row = {"arch": arch, "draw_ms": 1e3 * draw_s, "plain_forward_ms": 1e3 * fwd_s,
           "predicted_ratio": 1.0 + draw_s / fwd_s, "rounds": args.overhead_rounds,
           "draw_cpu_ms": 1e3 * summary(cpu["draw"])["median_s"],
           "plain_forward_cpu_ms": 1e3 * summary(cpu["forward"])["median_s"]}
    print(f"{arch:5s} per draw: sampling {row['draw_ms']:6.2f} ms, plain forward "
          f"{row['plain_forward_ms']:7.1f} ms -> predicted ratio {row['predicted_ratio']:5.3f}x",
          flush=True)
    return row


# ------------------------------------------------------------------ memory (child processes)
def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _memory_child(arch: str, batch_size: int, num_samples: int, num_inputs: int,
                  threads: int) -> None:
    torch.set_num_threads(threads)
    build, shape = ARCHS[arch]
    torch.manual_seed(0)
    model = bayescale.bayesianize(build()).eval()
    x = torch.rand(num_inputs, *shape)
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS counter (VmHWM)
    before = _status_kb("VmRSS")
    bayescale.mc_predict(model, x, num_samples, batch_size=batch_size)
    peak = _status_kb("VmHWM")
    print(json.dumps({"rss_before_mb": before / 1024, "peak_mb": peak / 1024,
                      "peak_growth_mb": (peak - before) / 1024}))


def measure_memory(args) -> list[dict]:
    rows = []
    # A fixed mmap threshold switches off glibc's dynamic one, so every freed tensor above it
    # goes back to the OS and RSS follows live memory (not heap fragmentation).
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.update(MEMORY_MALLOC_ENV)
    for arch in args.mem_archs:
        for batch_size in args.mem_batch_sizes:
            for t in args.mem_num_samples:
                cmd = [sys.executable, __file__, "--memory-child", arch, str(batch_size), str(t),
                       str(args.num_inputs), str(args.threads)]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
                rec = json.loads(out.stdout.strip().splitlines()[-1])
                rows.append({"arch": arch, "batch_size": batch_size, "num_samples": t, **rec})
                print(f"{arch:5s} batch {batch_size:5d} T {t:4d}: peak RSS growth "
                      f"{rec['peak_growth_mb']:8.1f} MB", flush=True)
    return rows


def main() -> None:
    if sys.argv[1:2] == ["batched"]:  # batched and adaptive draws against the loop
        from mc_batched import main as batched_main

        batched_main(sys.argv[2:])
        return
    if "--memory-child" in sys.argv:
        i = sys.argv.index("--memory-child")
        arch, bs, t, n, threads = sys.argv[i + 1 : i + 6]
        _memory_child(arch, int(bs), int(t), int(n), int(threads))
        return
    if not all(os.environ.get(k) == v for k, v in MALLOC_ENV.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_ENV})
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--archs", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    p.add_argument("--estimators", nargs="+", default=list(bayescale.ESTIMATORS))
    p.add_argument("--num-samples", type=int, default=100, help="T, weight draws")
    p.add_argument("--num-inputs", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5, help="timed calls per side (T passes each)")
    p.add_argument("--overhead-rounds", type=int, default=15,
                   help="interleaved (sampling, plain forward) pairs for the overhead estimate")
    p.add_argument("--warmup", type=int, default=0,
                   help="untimed full calls per side (one single-pass warm-up always runs)")
    p.add_argument("--mem-archs", nargs="+", default=["conv"], choices=list(ARCHS))
    p.add_argument("--mem-batch-sizes", nargs="+", type=int, default=[128, 1024])
    p.add_argument("--mem-num-samples", nargs="+", type=int, default=[10, 100])
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--skip-timing", action="store_true")
    p.add_argument("--merge", action="store_true",
                   help="keep the rows of other archs already in --out (run archs separately)")
    p.add_argument("--out", default=str(results_path("mc_predict.json")))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()  # the machine is shared: other jobs skew absolute times
    overhead = [sampling_overhead(a, args) for a in args.archs]
    timing = [] if args.skip_timing else [r for a in args.archs for r in time_arch(a, args)]
    memory = [] if args.skip_memory else measure_memory(args)
    config = {k: v for k, v in vars(args).items() if k not in ("out", "merge")}
    record = {"benchmark": "mc_predict", "overhead": overhead, "timing": timing, "memory": memory,
              "loadavg_start_end": [load_start, os.getloadavg()],
              "provenance": provenance(config)}
    if args.merge and Path(args.out).is_file():  # earlier runs keep rows not measured now
        runs = []
        for run in json.loads(Path(args.out).read_text()).get("runs", []):
            run["timing"] = [r for r in run["timing"] if r["arch"] not in
                             {x["arch"] for x in timing}]
            run["memory"] = [r for r in run["memory"] if r["arch"] not in
                             {x["arch"] for x in memory}]
            run["overhead"] = [r for r in run.get("overhead", []) if r["arch"] not in
                               {x["arch"] for x in overhead}]
            if run["timing"] or run["memory"] or run["overhead"]:
                runs.append(run)
        record = {"benchmark": "mc_predict", "runs": [*runs, record]}
    else:
        record = {"benchmark": "mc_predict", "runs": [record]}
    print("wrote", write_json(args.out, record))


if __name__ == "__main__":
    main()
