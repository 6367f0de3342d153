"""Learning-rate and KL-weight schedules as pure functions of the step.

Being pure functions of ``(step, total_steps)`` makes ``--resume`` exact: the schedule state is
just the step counter that the checkpoint stores.
"""

from __future__ import annotations

import math

from ..nn.elbo import kl_weight_blundell, kl_weight_linear

__all__ = ["lr_factor", "kl_weight_at", "kl_weight_cyclical", "cyclical_cosine",
           "cyclical_cosine_kefan", "cycle_of_step", "cycle_sample_steps"]


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
    """beta_t: the factor on KL / N_train at ``step`` (see :mod:`bayescale.nn.elbo`)."""
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


def cyclical_cosine(step: int, total_steps: int, cycles: int, h0: float = 1.0,
                    ramp: float = 0.0) -> float:
    """Cyclical cosine step size (Zhang et al. 2019, cSG-MCMC; Ke & Fan) at 0-based
    ``step``: the run is cut into ``cycles`` equal cycles and each one decays
    ``h = h0 * (cos(pi * u) + 1) / 2`` from ``h0`` (u = 0) towards 0 (u -> 1), u being the position
    in the cycle, ``frac(step * cycles / total_steps)``.

    With ``ramp`` > 0 the first ``ramp`` fraction of every cycle raises h linearly from 0 to h0
    and the cosine decay fills the rest: a restart then climbs back to h0 instead of jumping
    there from h ~ 0, which on ill-conditioned problems throws the chain out of its mode.

    This is the step-counted form of :func:`cyclical_cosine_kefan`; it drops that formula's two
    quirks (a float batch count ``N/B + 1`` and an epoch offset of one), so the last cycle ends at
    the last step instead of restarting at ``h0``.
    """
    if cycles < 1 or total_steps < 1:
        raise ValueError(f"need cycles >= 1 and total_steps >= 1, got {cycles}, {total_steps}")
    if not 0 <= ramp < 1:
        raise ValueError(f"ramp is a fraction of each cycle in [0, 1), got {ramp}")
    u = (step * cycles / total_steps) % 1.0
    if u < ramp:
        return h0 * min(1.0, (u + 0.5 * cycles / total_steps) / ramp)  # mid-step: never 0
    u = (u - ramp) / (1 - ramp)
    return h0 * 0.5 * (math.cos(math.pi * u) + 1.0)


def cyclical_cosine_kefan(epoch: int, batch: int, num_train: int, batch_size: int, epochs: int,
                          cycles: int, h0: float) -> float:
    """Ke & Fan's schedule exactly as their scripts compute it, for replication.

    ``num_batch = N / B + 1`` (a float), ``T = epochs * num_batch``, ``P = floor(T / M)``,
    ``r = epoch * num_batch + batch`` and ``h = h0 * (cos(pi * (r mod P) / P) + 1) / 2``. Their
    training loops pass ``epoch + 1`` for ``epoch`` (0-based loop index) and run ``epochs - 1``
    epochs; callers replicate that themselves.
    """
    num_batch = num_train / batch_size + 1
    period = (epochs * num_batch) // cycles
    if period <= 0:
        raise ValueError(f"epochs={epochs} x {num_batch:g} batches leaves no step per cycle "
                         f"for {cycles} cycles")
    r = epoch * num_batch + batch
    return h0 * 0.5 * (math.cos(math.pi * (r % period) / period) + 1.0)


def cycle_of_step(step: int, total_steps: int, cycles: int) -> int:
    """0-based cycle index of 0-based ``step`` under :func:`cyclical_cosine`."""
    return min(cycles - 1, step * cycles // total_steps)


def cycle_sample_steps(total_steps: int, cycles: int, per_cycle: int, gap: int) -> list[int]:
    """Step counts (updates done) after which a sample is kept: the last ``per_cycle`` multiples
    of ``gap`` before the end of each cycle, the cycle's end included (Ke & Fan keep 3 per cycle,
    at epoch ends: ``gap`` = steps per epoch). Sorted, without duplicates, each inside its cycle.
    """
    if per_cycle < 0 or gap < 1:
        raise ValueError(f"need per_cycle >= 0 and gap >= 1, got {per_cycle}, {gap}")
    out: list[int] = []
    for c in range(cycles):
        start = -(-c * total_steps // cycles)        # first step of cycle c (ceil)
        end = -(-(c + 1) * total_steps // cycles)    # steps done when cycle c is over
        out += [end - j * gap for j in range(per_cycle) if end - j * gap > start]
    return sorted(set(out))
