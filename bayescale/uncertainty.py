"""Monte Carlo prediction from the weight posterior.

Each MC sample holds one weight draw for the whole batch (:func:`bayescale.fixed_sample`), so
inference costs one plain forward per sample whatever estimator the model was trained with
(no Flipout doubling).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .sampling import fixed_sample

__all__ = ["mc_predict"]


@torch.no_grad()
def mc_predict(
    model: nn.Module, x: Tensor, num_samples: int = 100, *, batch_size: int = 1024,
    return_samples: bool = False,
) -> Tensor:
    """Predictive class probabilities from ``num_samples`` weight draws.

    Args:
        model: a classifier returning logits.
        x: inputs (N, ...).
        num_samples: weight draws T (the seed uses 300).
        batch_size: inputs per forward (bounds memory).
        return_samples: return the per-sample probabilities (T, N, C) instead of their mean.

    Returns:
        (N, C) mean probabilities, or (T, N, C) per-sample probabilities.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    per_sample: list[Tensor] = []
    total: Tensor | None = None
    for _ in range(num_samples):
        # One weight draw per sample, shared by every chunk: sample s is one network.
        with fixed_sample(model):
            probs = torch.cat([torch.softmax(model(x[i : i + batch_size]).float(), dim=-1)
                               for i in range(0, x.shape[0], batch_size)])
        if return_samples:
            per_sample.append(probs)
        else:  # running sum: memory stays (N, C) whatever num_samples is
            total = probs if total is None else total.add_(probs)
    return torch.stack(per_sample) if return_samples else total / num_samples
