"""Fast in-memory batch loader with vectorised augmentation and rank sharding.

The data live in two tensors; an epoch is one ``torch.randperm`` and batches are index slices, so
there is no per-sample Python work. With ``world_size > 1`` each rank takes a disjoint strided
shard of the same epoch permutation, like ``torch.utils.data.DistributedSampler``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .datasets import all_finite

__all__ = ["TensorLoader", "CropFlip", "random_crop", "random_hflip"]


def _shift_gather(x: Tensor, padding: int, offsets: Tensor, flip: Tensor | None) -> Tensor:
    """Crop ``x`` after zero padding at per-example ``offsets`` ``[2, B]``, flipping ``flip``.

    One ``gather`` over the flattened padded planes; a flip just reverses the column indices.
    """
    b, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding)) if padding else x
    offsets = offsets.to(x.device)
    cols = torch.arange(w, device=x.device).expand(b, w)
    if flip is not None:
        cols = torch.where(flip.to(x.device)[:, None], w - 1 - cols, cols)
    cols = cols + offsets[1, :, None]
    rows = offsets[0, :, None] + torch.arange(h, device=x.device)
    flat = rows[:, :, None] * (w + 2 * padding) + cols[:, None, :]  # [B, H, W]
    index = flat.view(b, 1, h * w).expand(b, c, h * w)
    return padded.reshape(b, c, -1).gather(2, index).view(b, c, h, w)


def random_crop(x: Tensor, padding: int, generator: torch.Generator | None = None) -> Tensor:
    """Randomly crop each image of ``x`` ``[B, C, H, W]`` after zero-padding by ``padding``.

    The batch is padded once; per-example offsets in ``[0, 2 * padding]`` (rows, then columns)
    are drawn from ``generator`` and applied with one ``gather`` (no Python loop over examples).
    """
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    offsets = torch.randint(0, 2 * padding + 1, (2, x.shape[0]), generator=generator)
    return _shift_gather(x, padding, offsets, None) if padding else x


def random_hflip(x: Tensor, generator: torch.Generator | None = None, p: float = 0.5) -> Tensor:
    """Flip each image of ``x`` ``[B, ..., W]`` horizontally with probability ``p``."""
    mask = torch.rand(x.shape[0], generator=generator) < p
    mask = mask.to(x.device).view(-1, *([1] * (x.dim() - 1)))
    return torch.where(mask, x.flip(-1), x)


@dataclass(frozen=True)
class CropFlip:
    """Batch augmentation: random crop with zero padding and random horizontal flip.

    Draws crop offsets ``[2, B]`` then flip decisions ``[B]`` from the generator and applies
    both in a single gather; equivalent to :func:`random_crop` followed by :func:`random_hflip`.

    Attributes:
        padding: Zero padding on each side before cropping back to the input size (0 = none).
        flip: Whether to flip each example horizontally with probability 0.5.
    """

    padding: int = 4
    flip: bool = True

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if self.padding < 0:
            raise ValueError(f"padding must be >= 0, got {self.padding}")
        offsets = torch.randint(0, 2 * self.padding + 1, (2, x.shape[0]), generator=generator)
        mask = torch.rand(x.shape[0], generator=generator) < 0.5 if self.flip else None
        if self.padding == 0 and mask is None:
            return x
        return _shift_gather(x, self.padding, offsets, mask)


class TensorLoader:
    """Iterate over ``(x, y)`` mini-batches of in-memory tensors.

    Each ``iter()`` runs one epoch: the permutation comes from a generator seeded with
    ``seed + epoch`` (identical on every rank), this rank keeps ``perm[rank::world_size]``,
    and the epoch counter then advances by one. Call :meth:`set_epoch` to choose it explicitly,
    as with ``DistributedSampler``. When N is not divisible by ``world_size`` the permutation is
    truncated (``drop_last=True``) or wrapped around (``drop_last=False``) so that all ranks get
    the same number of batches.

    Args:
        x: Inputs ``[N, ...]``.
        y: Targets ``[N, ...]``.
        batch_size: Examples per batch (per rank).
        shuffle: Draw a fresh permutation each epoch; otherwise keep the stored order.
        drop_last: Drop the last incomplete batch of each rank.
        seed: Base seed of the permutation and of the augmentation.
        augment: Callable ``(x_batch, generator) -> x_batch`` applied to every batch,
            e.g. :class:`CropFlip`.
        rank: This worker's index in ``[0, world_size)``.
        world_size: Number of workers sharing the data.
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        batch_size: int,
        shuffle: bool = True,
        drop_last: bool = True,
        seed: int = 0,
        augment: Callable[[Tensor, torch.Generator], Tensor] | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        _validate(x, y, batch_size, rank, world_size)
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.shuffle, self.drop_last = shuffle, drop_last
        self.seed, self.augment = seed, augment
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        if len(self) == 0:
            raise ValueError(
                f"no batches: each of the {world_size} rank(s) holds {self.shard_size} examples, "
                f"fewer than batch_size={batch_size} with drop_last=True; lower batch_size"
            )

    @property
    def shard_size(self) -> int:
        """Examples this rank sees per epoch."""
        n, ws = self.x.shape[0], self.world_size
        return n // ws if self.drop_last else math.ceil(n / ws)

    def __len__(self) -> int:
        if self.drop_last:
            return self.shard_size // self.batch_size
        return math.ceil(self.shard_size / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch whose permutation the next iteration uses."""
        self.epoch = int(epoch)

    def indices(self, epoch: int | None = None) -> Tensor:
        """This rank's example indices for ``epoch`` (default: the current epoch), in order."""
        epoch = self.epoch if epoch is None else epoch
        n = self.x.shape[0]
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed + epoch)
            perm = torch.randperm(n, generator=gen)
        else:
            perm = torch.arange(n)
        total = self.shard_size * self.world_size
        if total > n:  # wrap around so every rank gets shard_size examples
            perm = perm.repeat(math.ceil(total / n))[:total]
        return perm[self.rank: total: self.world_size]

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        epoch = self.epoch
        self.epoch += 1
        return self.batches(epoch)

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """The batches of ``epoch`` from batch index ``start`` on (for exact resumption).

        Augmentation draws come from a generator seeded per (seed, epoch, rank, batch), so
        batch ``i`` is the same whether the epoch is iterated from 0 or from ``start``.
        """
        if not 0 <= start <= len(self):
            raise ValueError(f"start must be in [0, {len(self)}], got {start}")
        idx = self.indices(epoch).to(self.x.device)
        bs = self.batch_size
        for i in range(start, len(self)):
            sel = idx[i * bs: (i + 1) * bs]
            xb = self.x.index_select(0, sel)
            if self.augment is not None:
                gen = torch.Generator().manual_seed(
                    ((self.seed + epoch) * 1_000_003 + self.rank + 1) * 100_003 + i)
                xb = self.augment(xb, gen)
            yield xb, self.y.index_select(0, sel.to(self.y.device))


def _validate(x: Tensor, y: Tensor, batch_size: int, rank: int, world_size: int) -> None:
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"x has {x.shape[0]} examples but y has {y.shape[0]}; pass matching tensors"
        )
    if x.shape[0] == 0:
        raise ValueError("cannot build a loader over an empty data set")
    for name, t in (("x", x), ("y", y)):
        if not all_finite(t):
            bad = int((~torch.isfinite(t)).sum())
            raise ValueError(f"{name} contains {bad} NaN/Inf values; clean the data first")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
