"""Learning-rate and KL-weight schedules as pure functions of the step.

Being pure functions of ``(step, total_steps)`` makes ``--resume`` exact: the schedule state is
just the step counter that the checkpoint stores.
"""

from __future__ import annotations

import math

from .elbo import kl_weight_blundell, kl_weight_linear

__all__ = ["lr_factor", "kl_weight_at", "kl_weight_cyclical"]


def lr_factor(step: int, total_steps: int, name: str = "constant", warmup_steps: int = 0,
              min_lr_ratio: float = 0.0, step_size: int = 1000, gamma: float = 0.1) -> float:
    """Multiplier of the base learning rate at 0-based ``step``.

    Linear warm-up from ``1/warmup_steps`` to 1 over the first ``warmup_steps`` steps, then
    ``"constant"``, ``"cosine"`` (half cosine from 1 to ``min_lr_ratio`` over the remaining
    steps; Loshchilov & Hutter 2017) or ``"step"`` (times ``gamma`` every ``step_size`` steps).
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    after = step - max(0, warmup_steps)
    if name == "constant":
        return 1.0
    if name == "cosine":
        span = max(1, total_steps - max(0, warmup_steps))
        progress = min(1.0, after / span)
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if name == "step":
        if step_size < 1:
            raise ValueError(f"schedule.step_size must be >= 1, got {step_size}")
        return gamma ** (after // step_size)
    raise ValueError(f"unknown lr schedule {name!r}; choose constant, cosine or step")


def kl_weight_cyclical(step: int, total_steps: int, cycles: int = 4, ratio: float = 0.5) -> float:
    """Cyclical KL annealing (Fu et al. 2019): in each of ``cycles`` equal cycles the weight rises
    linearly from 0 to 1 over the first ``ratio`` of the cycle, then stays at 1."""
    if cycles < 1 or not 0.0 < ratio <= 1.0:
        raise ValueError(f"need cycles >= 1 and 0 < ratio <= 1, got {cycles}, {ratio}")
    period = total_steps / cycles
    if period <= 0:
        return 1.0
    tau = (step % period) / period
    return min(1.0, tau / ratio)


def kl_weight_at(step: int, total_steps: int, weight: float = 1.0, schedule: str = "constant",
                 anneal_steps: int = 0, cycles: int = 4, ratio: float = 0.5,
                 batch_index: int = 0, batches_per_epoch: int = 1) -> float:
    """beta_t: the factor on KL / N_train at ``step`` (see :mod:`bayescale.elbo`)."""
    if schedule == "constant":
        return weight
    if schedule == "linear":
        return weight * kl_weight_linear(step, anneal_steps)
    if schedule == "cyclical":
        return weight * kl_weight_cyclical(step, total_steps, cycles, ratio)
    if schedule == "blundell":
        return weight * kl_weight_blundell(batch_index, batches_per_epoch)
    raise ValueError(f"unknown KL schedule {schedule!r}; choose constant, linear, cyclical "
                     "or blundell")
