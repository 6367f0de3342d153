"""Train-step cost of Bayesian models against plain PyTorch models of the same architecture.

Foundation issue targets (CPU, 2 threads, batch 128, Adam), ratio = Bayesian / plain step time:
reparam <= 1.15x on (b) and (c); flipout <= 2.2x on (b) and (c); every estimator <= 2.0x on (a).

    (a) mlp:  MLP 784-128-64-10
    (b) conv: 1x28x28 -> conv32 3x3 -> conv64 3x3 -> maxpool 2 -> dense 128 -> dense 10
    (c) vgg3: the seed's CIFAR-10 3-VGG-block net (spec 2.4), 3x32x32 input

Both models of a pair live in one process and are timed A/B interleaved
(bayescale.scale.bench), each
step = forward + loss + backward + Adam step on a fixed synthetic batch (timing does not depend
on the data). The Bayesian loss is bayescale.elbo_loss (NLL + KL/N); the plain one cross-entropy.

    python benchmarks/layer_overhead.py --out benchmarks/results/layer_overhead.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

import bayescale
from bayescale.scale.bench import provenance, results_path, summary, time_interleaved, write_json


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 64),
                         nn.ReLU(), nn.Linear(64, 10))


def conv() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 32, 3), nn.ReLU(), nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 12 * 12, 128), nn.ReLU(), nn.Linear(128, 10),
    )


def vgg3() -> nn.Module:
    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding="same"), nn.ReLU(),
                nn.Conv2d(cout, cout, 3, padding="same"), nn.ReLU(), nn.MaxPool2d(2)]
    return nn.Sequential(*block(3, 32), *block(32, 64), *block(64, 128), nn.Flatten(),
                         nn.Linear(2048, 128), nn.ReLU(), nn.Linear(128, 10))


ARCHS = {"mlp": (mlp, (1, 28, 28)), "conv": (conv, (1, 28, 28)), "vgg3": (vgg3, (3, 32, 32))}
TARGETS = {("mlp", e): 2.0 for e in bayescale.ESTIMATORS}
TARGETS.update({(a, "reparam"): 1.15 for a in ("conv", "vgg3")})
TARGETS.update({(a, "flipout"): 2.2 for a in ("conv", "vgg3")})


def make_step(model: nn.Module, x, y, bayesian: bool, num_train: int, fused: bool):
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=fused or None)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        out = model(x)
        if bayesian:
            loss = bayescale.elbo_loss(out, y, model, num_train)
        else:
            loss = F.cross_entropy(out, y)
        loss.backward()
        opt.step()

    return step


# glibc returns large activation buffers to the OS after every pass, so half of a conv step can be
# page faults (environment notes). Keep them: both models of a pair run under the same settings,
# which are recorded in the provenance. --system-malloc opts out.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "4294967296", "MALLOC_TRIM_THRESHOLD_": "4294967296"}


def _reexec_with_malloc_env() -> None:
    if "--system-malloc" in sys.argv or all(os.environ.get(k) == v for k, v in MALLOC_ENV.items()):
        return
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_ENV})


def main() -> None:
    _reexec_with_malloc_env()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--archs", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    p.add_argument("--estimators", nargs="+", default=list(bayescale.ESTIMATORS))
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--steps-per-round", type=int, default=10)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--fused-adam", action="store_true", help="Adam(fused=True) for both sides")
    p.add_argument("--system-malloc", action="store_true",
                   help="keep glibc's default allocator thresholds (no re-exec)")
    p.add_argument("--out", default=str(results_path("layer_overhead.json")))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    for arch in args.archs:
        build, shape = ARCHS[arch]
        x = torch.randn(args.batch_size, *shape)
        y = torch.randint(0, 10, (args.batch_size,))
        for est in args.estimators:
            plain = build()
            bayes = bayescale.bayesianize(plain, estimator=est)
            fns = {
                "plain": make_step(plain, x, y, False, 60000, args.fused_adam),
                "bayes": make_step(bayes, x, y, True, 60000, args.fused_adam),
            }
            t0 = time.perf_counter()
            times = time_interleaved(fns, warmup=args.warmup, rounds=args.rounds,
                                     steps_per_round=args.steps_per_round)
            sp, sb = summary(times["plain"]), summary(times["bayes"])
            ratio = sb["median_s"] / sp["median_s"]
            target = TARGETS.get((arch, est))
            rows.append({"arch": arch, "estimator": est, "plain": sp, "bayes": sb,
                         "ratio": ratio, "target": target,
                         "meets_target": None if target is None else ratio <= target,
                         "wall_s": time.perf_counter() - t0})
            print(f"{arch:5s} {est:8s} plain {sp['median_s']*1e3:7.2f} ms  bayes "
                  f"{sb['median_s']*1e3:7.2f} ms  ratio {ratio:5.2f}x"
                  + (f"  (target <= {target}x)" if target else ""), flush=True)
    record = {"benchmark": "layer_overhead", "results": rows,
              "provenance": provenance({k: v for k, v in vars(args).items() if k != "out"})}
    print("wrote", write_json(args.out, record))


if __name__ == "__main__":
    main()
