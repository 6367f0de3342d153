"""Classification metrics on predictive probabilities (pure tensor functions)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["accuracy", "nll"]


def _check(probs: Tensor, target: Tensor) -> None:
    if probs.dim() != 2 or target.shape != probs.shape[:1]:
        raise ValueError(
            f"expected probabilities (N, C) and labels (N,), got {tuple(probs.shape)} and "
            f"{tuple(target.shape)}"
        )


def accuracy(probs: Tensor, target: Tensor) -> float:
    """Fraction of examples whose most probable class is the label."""
    _check(probs, target)
    return (probs.argmax(-1) == target).float().mean().item()


def nll(probs: Tensor, target: Tensor, eps: float = 1e-12) -> float:
    """Mean negative log predictive probability of the label, in nats."""
    _check(probs, target)
    picked = probs.gather(1, target.view(-1, 1)).squeeze(1)
    return -torch.log(picked.clamp_min(eps)).mean().item()
