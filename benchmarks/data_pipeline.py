"""Data pipeline cost: the in-memory loader against one CIFAR10_BNN_model training step.

Target: the loader (batch gather + random crop with 4-pixel zero padding + horizontal flip) takes
< 5 % of a training step. Setup: CPU, 2 threads, batch 128, ``CIFAR10_BNN_model`` (spec §2.4, all
8 layers Flipout), Adam, loss ``bayescale.elbo_loss`` (mean NLL + KL / N).

Three functions are timed A/B interleaved in one process
(``bayescale.scale.bench.time_interleaved``):

    loader  next batch of bayescale.data.loader.TensorLoader(augment=CropFlip(4, flip=True))
    step    forward + loss + backward + Adam step on a fixed batch
    both    next batch + a step on it (the real training loop)

share = median(loader) / median(both); the JSON also records (both - step) / both.
Data: synthetic CIFAR-shaped tensors by default (the loader's cost does not depend on pixel
values), or the real CIFAR-10 training split with ``--data-dir`` (binary version; convert the
shared JPEG copy first with ``/work/shared/data/cifar10/make_cifar10_bin.py DIR``).

    python benchmarks/data_pipeline.py --out benchmarks/results/data_pipeline.json
    python benchmarks/data_pipeline.py --rounds 2 --steps-per-round 2 --num-examples 1024  # smoke
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Iterator

import torch
from torch import Tensor

import bayescale
from bayescale.data.catalogue import load_dataset
from bayescale.data.loader import CropFlip, TensorLoader
from bayescale.models import get_model
from bayescale.scale.bench import provenance, results_path, summary, time_interleaved, write_json

TARGET_SHARE = 0.05


def load_data(data_dir: str | None, num_examples: int, seed: int) -> tuple[Tensor, Tensor, str]:
    """CIFAR-10 training tensors from ``data_dir``, or synthetic ones of the same shape."""
    if data_dir:
        split = load_dataset("cifar10", root=data_dir)
        return split.train.x, split.train.y, "cifar10"
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(num_examples, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (num_examples,), generator=gen)
    return x, y, "synthetic"


def endless(loader: TensorLoader) -> Iterator[tuple[Tensor, Tensor]]:
    """Batches from consecutive epochs, forever."""
    while True:
        yield from loader


def make_step(model: torch.nn.Module, num_train: int, lr: float):
    """One optimisation step ``step(x, y)``: forward, negative ELBO, backward, Adam."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)

    def step(x: Tensor, y: Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        loss = bayescale.elbo_loss(model(x), y, model, num_train)
        loss.backward()
        opt.step()

    return step


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data-dir", default=None, help="root holding cifar-10-batches-bin/")
    p.add_argument("--num-examples", type=int, default=50_000, help="synthetic set size")
    p.add_argument("--model", default="CIFAR10_BNN_model")
    p.add_argument("--estimator", default="flipout", choices=bayescale.ESTIMATORS)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--padding", type=int, default=4, help="crop padding (0 = no crop)")
    p.add_argument("--no-flip", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--steps-per-round", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(results_path("data_pipeline.json")))
    return p.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    x, y, source = load_data(args.data_dir, args.num_examples, args.seed)
    loader = TensorLoader(x, y, args.batch_size, seed=args.seed,
                          augment=CropFlip(args.padding, flip=not args.no_flip))
    next_batch = functools.partial(next, endless(loader))
    model = get_model(args.model, estimator=args.estimator)
    step = make_step(model, num_train=x.shape[0], lr=args.lr)
    xb, yb = next_batch()
    fns = {"loader": next_batch, "step": lambda: step(xb, yb), "both": lambda: step(*next_batch())}
    t0 = time.perf_counter()
    times = time_interleaved(fns, warmup=args.warmup, rounds=args.rounds,
                             steps_per_round=args.steps_per_round)
    stats = {name: summary(t) for name, t in times.items()}
    med = {name: s["median_s"] for name, s in stats.items()}
    share = med["loader"] / med["both"]
    record = {
        "benchmark": "data_pipeline",
        "data": source,
        "timings": stats,
        "loader_batches_per_s": 1.0 / med["loader"],
        "loader_images_per_s": args.batch_size / med["loader"],
        "step_per_s": 1.0 / med["step"],
        "loader_share": share,
        "loader_share_from_difference": (med["both"] - med["step"]) / med["both"],
        "target_share": TARGET_SHARE,
        "meets_target": share < TARGET_SHARE,
        "wall_s": time.perf_counter() - t0,
        "provenance": provenance({k: v for k, v in vars(args).items() if k != "out"}),
    }
    print(f"data={source} loader {1e3 * med['loader']:.2f} ms/batch "
          f"({record['loader_batches_per_s']:.0f} batches/s), step {1e3 * med['step']:.1f} ms, "
          f"step+loader {1e3 * med['both']:.1f} ms; loader share {100 * share:.2f}% "
          f"(target < {100 * TARGET_SHARE:.0f}%)")
    print("wrote", write_json(args.out, record))


if __name__ == "__main__":
    main()
