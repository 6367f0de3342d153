"""A held-out validation split taken from a training set, deterministic by seed.

Post-hoc calibration (temperature scaling) and early model selection must not see the test set:
``train, val = validation_split(split.train, 5000, seed=0)`` holds out a random 5,000 training
examples and keeps the rest, in their original order, for training (Guo et al. 2017, section 4.2,
fit the temperature on such a validation set).
"""

from __future__ import annotations

import torch

from .datasets import Dataset

__all__ = ["validation_split"]


def validation_split(ds: Dataset, size: int | float, seed: int = 0) -> tuple[Dataset, Dataset]:
    """``(train, validation)``: a random ``size`` examples of ``ds`` held out, the rest kept.

    Args:
        ds: the training set.
        size: examples to hold out: an int (count) or a float in (0, 1) (fraction, rounded).
        seed: the held-out examples are a function of ``seed`` (and ``len(ds)``) only.

    Both parts keep the original order of ``ds``; together they are ``ds`` exactly once.

    Raises:
        ValueError: ``size`` leaves no example on one side.
    """
    n = len(ds)
    if isinstance(size, bool) or not isinstance(size, int | float):
        raise ValueError(f"size must be an int count or a float fraction, got {size!r}")
    k = round(size * n) if isinstance(size, float) else size
    if not 0 < k < n:
        raise ValueError(f"a validation split of {size!r} from {n} examples leaves {k} held out "
                         f"and {n - k} for training; both must be >= 1")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    held = torch.zeros(n, dtype=torch.bool)
    held[perm[:k]] = True
    keep, val = (~held).nonzero().squeeze(1), held.nonzero().squeeze(1)
    base = ds.name.rsplit("/", 1)[0]

    def part(idx: torch.Tensor, name: str) -> Dataset:
        noise = None if ds.noise_sd is None else ds.noise_sd[idx]
        return Dataset(ds.x[idx], ds.y[idx], f"{base}/{name}", ds.num_classes, noise)

    return part(keep, "train"), part(val, "validation")
