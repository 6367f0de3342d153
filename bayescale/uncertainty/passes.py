"""The forward passes behind :func:`~bayescale.uncertainty.mc_predict`: one draw per pass, or K.

A pass is one weight draw shared by every input. The loop runs T passes of
:func:`~bayescale.nn.sampling.fixed_sample`. The batched path runs K draws in one forward
(:func:`~bayescale.nn.sampling.draws` with ``shared_input=True``): layers before the first
Bayesian layer run once on the inputs, that layer applies its K sampled weights to them as one
wide matmul or convolution, and every later layer runs on the K * B rows (Bayesian ones as one
``bmm`` or grouped convolution). Both paths make the same draws under the same RNG state.

``draws_per_pass="auto"`` takes K from a memory budget for the K stacked weight draws
(:data:`DEFAULT_DRAW_MEMORY`), then checks the batched forward against the loop on two inputs
(outside the RNG stream) and falls back to the loop if the model cannot be batched or its
outputs differ; finally the first pass runs as the loop and the first K draws batched, and the
faster of the two runs the rest. So "auto" never fails where the loop works and keeps the loop
where batching does not pay (often on a CPU, where these passes are memory-bound).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..nn.sampling import bayesian_layers, draws, fixed_sample

__all__ = ["DEFAULT_DRAW_MEMORY", "MAX_DRAWS_PER_PASS", "auto_draws_per_pass", "outputs"]

DEFAULT_DRAW_MEMORY = 256 * 2**20  # bytes for K stacked weight draws (noise and weights)
MAX_DRAWS_PER_PASS = 32


def _device(model: nn.Module, fallback: torch.device) -> torch.device:
    p = next(model.parameters(), None)
    return fallback if p is None else p.device


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def auto_draws_per_pass(model: nn.Module, num_passes: int, batch_size: int,
                        memory_budget: int | None = None) -> int:
    """K for ``draws_per_pass="auto"``: as many draws as the memory budget holds.

    K stacked draws hold, per Bayesian layer, K copies of the noise and of the sampled weights
    (and bias); K is the largest count whose bytes fit ``memory_budget`` (default
    :data:`DEFAULT_DRAW_MEMORY`), capped by :data:`MAX_DRAWS_PER_PASS`, the number of passes
    and ``batch_size`` (a forward holds ``batch_size // K`` inputs times K draws, so activation
    memory stays that of the loop).
    """
    budget = DEFAULT_DRAW_MEMORY if memory_budget is None else memory_budget
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ValueError(f"memory_budget must be a positive number of bytes, got {memory_budget!r}")
    per_draw = 0
    for layer in bayesian_layers(model):
        tensors = [layer.weight_mu] + ([layer.bias_mu] if layer.bayesian_bias else [])
        per_draw += sum(2 * t.numel() * t.element_size() for t in tensors)
    fits = budget // max(per_draw, 1)
    return int(max(1, min(fits, MAX_DRAWS_PER_PASS, num_passes, batch_size)))


def _loop(net: nn.Module, t: int, x: Tensor, batch_size: int
          ) -> Iterator[tuple[int, slice, Tensor, bool]]:
    ctx = fixed_sample(net) if bayesian_layers(net) else contextlib.nullcontext()
    device = _device(net, x.device)
    with ctx:
        for i in range(0, x.shape[0], batch_size):
            sl = slice(i, i + batch_size)
            yield t, sl, net(x[sl].to(device, non_blocking=True)), sl.stop >= x.shape[0]


def _posterior_loop(net: nn.Module, posterior: Any, num_passes: int, x: Tensor,
                    batch_size: int) -> Iterator[tuple[int, slice, Tensor, bool]]:
    """Passes of a deterministic network whose weights are drawn in place from ``posterior``."""
    device = _device(net, x.device)
    for t in range(num_passes):
        with posterior.sample():
            for i in range(0, x.shape[0], batch_size):
                sl = slice(i, i + batch_size)
                yield t, sl, net(x[sl].to(device, non_blocking=True)), sl.stop >= x.shape[0]


def _batched(model: nn.Module, t0: int, k: int, x: Tensor, rows: int
             ) -> Iterator[tuple[int, slice, Tensor, bool]]:
    device = _device(model, x.device)
    with draws(model, k, shared_input=True):
        for i in range(0, x.shape[0], rows):
            sl = slice(i, i + rows)
            xb = x[sl].to(device, non_blocking=True)
            out = model(xb)
            if not isinstance(out, Tensor) or out.shape[0] != k * xb.shape[0]:
                got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                raise ValueError(f"{k} weight draws on {xb.shape[0]} inputs should give "
                                 f"{k * xb.shape[0]} output rows, got {got}")
            end = sl.stop >= x.shape[0]
            for j, part in enumerate(out.chunk(k)):
                yield t0 + j, sl, part, end and j == k - 1


def _batchable(model: nn.Module, x: Tensor) -> bool:
    """Does the batched forward give the loop's outputs on two inputs? (RNG state untouched.)"""
    device = _device(model, x.device)
    xp = x[:2].to(device)
    forks = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=forks):
            ref = [p[2] for j in range(2) for p in _loop(model, j, xp, 2)]
        with torch.random.fork_rng(devices=forks):
            got = [p[2] for p in _batched(model, 0, 2, xp, 2)]
    except Exception:  # anything the batched forward cannot run: the loop will
        return False
    if not all(isinstance(r, Tensor) for r in ref) or len(got) != len(ref):
        return False
    return all(r.shape == g.shape and torch.allclose(g.float(), r.float(), rtol=1e-3, atol=1e-4
                                                     * max(1.0, float(r.abs().max())))
               for r, g in zip(ref, got, strict=True))


def outputs(model: nn.Module | Sequence[nn.Module], members: list[nn.Module] | None,
            num_passes: int, x: Tensor, batch_size: int, k: int | str,
            memory_budget: int | None = None, info: dict[str, Any] | None = None,
            posterior: Any = None) -> Iterator[tuple[int, slice, Tensor, bool]]:
    """(pass t, input slice, model output, round done) for every pass and input chunk.

    Each slice sees t = 0, 1, 2, ... in order; "round done" is True on the output after which
    every pass <= t is complete and the next output starts new passes (a place to stop).

    One model with Bayesian layers and ``k > 1`` runs k draws per forward on chunks of
    ``max(1, batch_size // k)`` inputs; ``k="auto"`` decides as the module docstring says.
    ``info["draws_per_pass"]`` is set to the K in use before the first output is yielded.
    """
    info = {} if info is None else info
    if posterior is not None:  # a weight posterior held outside the model (e.g. IVON's)
        info["draws_per_pass"] = 1
        yield from _posterior_loop(model, posterior, num_passes, x, batch_size)
        return
    batched = members is None and k != 1 and bool(bayesian_layers(model))
    choose = k == "auto"
    if batched and choose:
        k = auto_draws_per_pass(model, num_passes - 1, batch_size, memory_budget)
        batched = k > 1 and _batchable(model, x)
    info["draws_per_pass"] = k if batched else 1
    if not batched:
        for t in range(num_passes):
            yield from _loop(model if members is None else members[t], t, x, batch_size)
        return
    device, rows, t = _device(model, x.device), max(1, batch_size // k), 0
    if choose:  # time one loop pass against one batched round, keep the faster
        _sync(device)
        start = time.perf_counter()
        yield from _loop(model, 0, x, batch_size)
        _sync(device)
        loop_s, start = time.perf_counter() - start, time.perf_counter()
        kk = min(k, num_passes - 1)
        yield from _batched(model, 1, kk, x, max(1, batch_size // kk))
        _sync(device)
        if (time.perf_counter() - start) / kk >= loop_s:  # batching does not pay here
            info["draws_per_pass"] = 1
            for t in range(1 + kk, num_passes):
                yield from _loop(model, t, x, batch_size)
            return
        t = 1 + kk
    while t < num_passes:
        kk = min(k, num_passes - t)
        yield from _batched(model, t, kk, x, max(1, batch_size // kk) if kk < k else rows)
        t += kk
