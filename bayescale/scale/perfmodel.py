"""A first-principles model of synchronous data-parallel training time (Sharma & Jennings' study).

One step on ``n`` workers, each with a fixed per-worker batch ``b`` (the seed's Horovod recipe):

    t_step(n) = t_c * (1 + cv * E[max of n standard normals])      compute + stragglers
              + exposed(t_ar(n))                                   gradient all-reduce

* ``t_c = b * compute_s_per_sample + fixed_s`` is the measured forward+backward(+update) time of
  one worker, measured where it will run: when several workers share a node, time them there in
  lockstep (benchmarks/scaling_bench.py's co-location probe gives the factor over one worker
  alone; with one worker per node it is 1). Synchronous SGD waits for the slowest worker: with
  step times ~ N(t_c, (cv t_c)^2)
  the expected slowest of ``n`` is ``t_c (1 + cv * m_n)``, ``m_n = E[max_i z_i]`` (m_1 = 0,
  m_2 = 1/sqrt(pi)), computed by quadrature.
* The gradient (``grad_bytes``; a mean-field BNN sends mu and rho, twice a CNN's weights; the
  Ke & Fan optimizer sends the weights) is all-reduced in buckets of ``bucket_bytes`` (DDP's
  ``bucket_cap_mb``, Horovod's tensor fusion). One bucket of ``m`` bytes takes
  ring:  ``2 (n-1) alpha + 2 (n-1)/n * m / beta``  (reduce-scatter + all-gather, Patarasuk & Yuan
  2009) or  tree: ``2 ceil(log2 n) alpha + 2 m / beta`` (pipelined reduce + broadcast), with
  ``alpha`` the per-message latency (network + software) and ``beta`` the link bandwidth.
* All buckets but the last can run while the backward pass (``backward_fraction`` of ``t_c``)
  is still computing: ``exposed = t_last + max(0, t_rest - overlap * t_backward)``.
* bf16 gradient compression halves the bytes (``compression=0.5``).

Strong scaling (the seed's): a fixed budget of samples, ``steps = budget / (n b)``, speed-up
``S(n) = T(1)/T(n)``, efficiency ``S/n``. Weak scaling: fixed steps per worker, efficiency
``t_step(1)/t_step(n)``. :func:`fit_seed` fits the free parameters to the seed README's
Fig-1/Fig-2 points (the seed tutorial).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

__all__ = ["Interconnect", "INTERCONNECTS", "Workload", "Cluster", "StepTime",
           "allreduce_time", "expected_max_normal", "step_time", "scaling_table",
           "first_below", "fit_seed", "SEED_FIGURES", "fit_latency_bandwidth"]


@dataclass(frozen=True)
class Interconnect:
    """Per-message latency ``alpha`` (s) and per-link bandwidth ``beta`` (bytes/s)."""

    name: str
    latency_s: float
    bandwidth_Bps: float

    def __post_init__(self) -> None:
        if not (self.latency_s >= 0 and self.bandwidth_Bps > 0):
            raise ValueError(f"interconnect {self.name!r}: need latency >= 0 and bandwidth > 0")


# Nominal MPI-level figures (hardware + MPI stack, large-message bandwidth per node).
INTERCONNECTS: dict[str, Interconnect] = {
    "aries": Interconnect("Cray Aries (XC40 dragonfly)", 1.3e-6, 10e9),
    "ib-hdr": Interconnect("InfiniBand HDR 200 Gb/s", 1.0e-6, 24e9),
    "100gbe": Interconnect("100 Gb Ethernet (TCP)", 15e-6, 11e9),
}


@dataclass(frozen=True)
class Workload:
    """What one worker does per step: compute time and gradient bytes."""

    name: str
    compute_s_per_sample: float
    grad_bytes: float
    batch_per_worker: int
    fixed_s: float = 0.0
    backward_fraction: float = 2 / 3
    step_cv: float = 0.0

    @property
    def compute_s(self) -> float:
        return self.batch_per_worker * self.compute_s_per_sample + self.fixed_s

    @staticmethod
    def gradient_bytes(model: nn.Module, bytes_per_value: int = 4) -> int:
        """Bytes all-reduced per step: every trainable parameter (mu and rho for a BNN)."""
        return bytes_per_value * sum(p.numel() for p in model.parameters() if p.requires_grad)


@dataclass(frozen=True)
class Cluster:
    """The machine: interconnect, all-reduce algorithm, bucketing, overlap, compression."""

    interconnect: Interconnect
    algorithm: str = "ring"
    software_latency_s: float = 0.0
    bucket_bytes: float = 25 * 2**20
    overlap: float = 1.0
    compression: float = 1.0

    def __post_init__(self) -> None:
        if self.algorithm not in ("ring", "tree"):
            raise ValueError(f"algorithm must be 'ring' or 'tree', got {self.algorithm!r}")
        if not (0 <= self.overlap <= 1 and 0 < self.compression <= 1 and self.bucket_bytes > 0):
            raise ValueError("need 0 <= overlap <= 1, 0 < compression <= 1, bucket_bytes > 0")


def allreduce_time(nbytes: float, workers: int, interconnect: Interconnect,
                   algorithm: str = "ring", extra_latency_s: float = 0.0) -> float:
    """Time of one all-reduce of ``nbytes`` over ``workers`` (0 for one worker)."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if workers == 1 or nbytes <= 0:
        return 0.0
    alpha = interconnect.latency_s + extra_latency_s
    beta = interconnect.bandwidth_Bps
    if algorithm == "ring":
        return 2 * (workers - 1) * alpha + 2 * (workers - 1) / workers * nbytes / beta
    if algorithm == "tree":
        return 2 * math.ceil(math.log2(workers)) * alpha + 2 * nbytes / beta
    raise ValueError(f"algorithm must be 'ring' or 'tree', got {algorithm!r}")


def expected_max_normal(n: int) -> float:
    """E[max of n iid standard normals] by quadrature (0 for n = 1, 1/sqrt(pi) for n = 2)."""
    if n <= 1:
        return 0.0
    x = torch.linspace(-12.0, 12.0, 24001, dtype=torch.float64)
    pdf = torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
    cdf = 0.5 * (1 + torch.erf(x / math.sqrt(2)))
    return torch.trapezoid(x * n * pdf * cdf.pow(n - 1), x).item()


@dataclass(frozen=True)
class StepTime:
    workers: int
    compute_s: float
    straggler_s: float
    allreduce_s: float
    exposed_s: float

    @property
    def total_s(self) -> float:
        return self.compute_s + self.straggler_s + self.exposed_s


def step_time(w: Workload, c: Cluster, workers: int) -> StepTime:
    """Modelled time of one synchronous step on ``workers`` workers (module docstring)."""
    nbytes = w.grad_bytes * c.compression
    full, rest = divmod(nbytes, c.bucket_bytes)
    buckets = [c.bucket_bytes] * int(full) + ([rest] if rest > 0 else [])
    times = [allreduce_time(m, workers, c.interconnect, c.algorithm, c.software_latency_s)
             for m in buckets]
    comm = sum(times)
    hidden_budget = c.overlap * w.backward_fraction * w.compute_s
    exposed = (times[-1] + max(0.0, comm - times[-1] - hidden_budget)) if times else 0.0
    straggle = w.compute_s * w.step_cv * expected_max_normal(workers)
    return StepTime(workers, w.compute_s, straggle, comm, exposed)


def scaling_table(w: Workload, c: Cluster, workers: list[int], mode: str = "strong",
                  budget_samples: float | None = None, steps: int = 1000,
                  global_batch: int | None = None) -> list[dict[str, Any]]:
    """Modelled rows (workers, step_s, time_to_train_s, samples_per_s, speedup, efficiency,
    compute_s, straggler_s, allreduce_s, exposed_allreduce_s).

    Modes: ``"strong"`` the seed's recipe - a fixed budget of samples, per-worker batch fixed,
    ``budget / (n b)`` steps; ``"weak"`` - fixed steps per worker, per-worker batch fixed (the
    same per-step efficiency as ``"strong"``, more work in total); ``"global-batch"`` - classic
    HPC strong scaling, a fixed global batch (default ``b``) split over the workers, so compute
    per step shrinks while the all-reduce does not.
    """
    if mode not in ("strong", "weak", "global-batch"):
        raise ValueError(f"mode must be 'strong', 'weak' or 'global-batch', got {mode!r}")
    budget = budget_samples if budget_samples is not None else steps * w.batch_per_worker
    gb = global_batch or w.batch_per_worker
    base = step_time(replace(w, batch_per_worker=gb) if mode == "global-batch" else w, c, 1)
    rows = []
    for n in workers:
        wn = replace(w, batch_per_worker=gb / n) if mode == "global-batch" else w
        st = step_time(wn, c, n)
        if mode == "strong":
            t1 = budget / w.batch_per_worker * base.total_s
            ttt = budget / (n * w.batch_per_worker) * st.total_s
        elif mode == "weak":
            t1, ttt = steps * base.total_s * n, steps * st.total_s  # t1: the same work on one
        else:
            t1, ttt = steps * base.total_s, steps * st.total_s
        speedup = t1 / ttt
        rows.append({"workers": n, "step_s": st.total_s, "time_to_train_s": ttt,
                     "samples_per_s": n * wn.batch_per_worker / st.total_s,
                     "speedup": speedup, "efficiency": speedup / n, "compute_s": st.compute_s,
                     "straggler_s": st.straggler_s, "allreduce_s": st.allreduce_s,
                     "exposed_allreduce_s": st.exposed_s})
    return rows


def first_below(w: Workload, c: Cluster, threshold: float = 0.5, max_workers: int = 1024,
                mode: str = "strong") -> int | None:
    """The smallest power-of-two worker count whose efficiency is below ``threshold``."""
    n = 1
    while n <= max_workers:
        if scaling_table(w, c, [n], mode)[0]["efficiency"] < threshold:
            return n
        n *= 2
    return None


# Seed README Fig-1 (total training time, s) and Fig-2 (speed-up), read off the PNGs
# (+-3 %). The demo is most likely the MNIST tutorial (BNN_conv_flip / CNN_conv, batch 64, 10
# epochs = 9375 steps of one worker) on ALCF Theta (Cray XC40, Aries), one rank per node.
SEED_FIGURES: dict[str, Any] = {
    "nodes": [1, 2, 4, 6, 8],
    "BNN": {"time_s": [2280, 1280, 690, 480, 375], "speedup": [1.0, 1.78, 3.28, 4.71, 6.07]},
    "CNN": {"time_s": [2370, 1320, 665, 460, 355], "speedup": [1.0, 1.80, 3.55, 5.13, 6.60]},
    "steps_one_worker": 9375, "batch": 64,
    "grad_bytes": {"BNN": 4 * 128_714, "CNN": 4 * 127_114},  # BNN_conv_flip / CNN_conv
}


def _model_speedups(alpha: torch.Tensor, cvs: dict[str, torch.Tensor], ic: Interconnect,
                    algorithm: str) -> dict[str, torch.Tensor]:
    """Vectorised strong-scaling speed-ups of the seed runs over a grid of parameters."""
    f = SEED_FIGURES
    out = {}
    for m in ("BNN", "CNN"):
        t1 = f[m]["time_s"][0] / f["steps_one_worker"]
        nb = f["grad_bytes"][m]
        rows = []
        for n in f["nodes"][1:]:
            if algorithm == "ring":
                comm = (2 * (n - 1) * (ic.latency_s + alpha)
                        + 2 * (n - 1) / n * nb / ic.bandwidth_Bps)
            else:
                comm = (2 * math.ceil(math.log2(n)) * (ic.latency_s + alpha)
                        + 2 * nb / ic.bandwidth_Bps)
            tn = t1 * (1 + cvs[m] * expected_max_normal(n)) + comm
            rows.append(n * t1 / tn)
        out[m] = torch.stack(rows, -1)
    return out


def fit_seed(interconnect: Interconnect | str = "aries", algorithm: str = "ring",
             stragglers: bool = True) -> dict[str, Any]:
    """Fit the software latency (shared) and the step-time CV (one per model) to Fig-2.

    ``stragglers=False`` fits the latency alone (CV = 0): the all-reduce must then explain the
    whole loss of efficiency. The eight points (+-3 %) fit both variants; their extrapolations
    bracket what larger runs would see.

    The bandwidth is the interconnect's (not fitted), there is no overlap (TF1 Horovod runs the
    all-reduce after the backward pass) and one fused bucket per step. Least squares on the
    relative speed-up errors over a log grid, refined once. Returns the parameters, the
    predicted speed-ups and the relative error of each of the 8 points.
    """
    ic = INTERCONNECTS[interconnect] if isinstance(interconnect, str) else interconnect
    f = SEED_FIGURES
    obs = {m: torch.tensor(f[m]["speedup"][1:], dtype=torch.float64) for m in ("BNN", "CNN")}

    def search(alphas: torch.Tensor, cvs: torch.Tensor) -> tuple[float, float, float]:
        a, cv = alphas.view(-1, 1), cvs.view(1, -1)
        pred = _model_speedups(a, {"BNN": cv, "CNN": cv}, ic, algorithm)  # (alphas, cvs, nodes)
        # the BNN and CNN errors separate given alpha: pick each model's best cv per alpha
        sse = {m: ((pred[m] / obs[m] - 1) ** 2).sum(-1) for m in ("BNN", "CNN")}
        bi, ci = sse["BNN"].argmin(1), sse["CNN"].argmin(1)
        total = sse["BNN"].gather(1, bi.view(-1, 1)) + sse["CNN"].gather(1, ci.view(-1, 1))
        k = int(total.argmin())
        return alphas[k].item(), cvs[bi[k]].item(), cvs[ci[k]].item()

    coarse, fine = ((torch.linspace(0, 0.5, 501, dtype=torch.float64),
                     torch.linspace(0, 0.5, 2001, dtype=torch.float64)) if stragglers else
                    (torch.zeros(1, dtype=torch.float64),) * 2)
    alpha, cv_b, cv_c = search(torch.logspace(-7, -1, 241, dtype=torch.float64), coarse)
    alpha, cv_b, cv_c = search(torch.linspace(alpha * 0.9, alpha * 1.1, 201, dtype=torch.float64),
                               fine)
    pred = _model_speedups(torch.tensor(alpha, dtype=torch.float64),
                           {"BNN": torch.tensor(cv_b), "CNN": torch.tensor(cv_c)}, ic, algorithm)
    errors = {m: (pred[m] / obs[m] - 1).tolist() for m in ("BNN", "CNN")}
    return {"interconnect": ic.name, "algorithm": algorithm, "stragglers": stragglers,
            "software_latency_s": alpha,
            "step_cv": {"BNN": cv_b, "CNN": cv_c}, "nodes": f["nodes"][1:],
            "predicted_speedup": {m: pred[m].tolist() for m in pred},
            "observed_speedup": {m: f[m]["speedup"][1:] for m in ("BNN", "CNN")},
            "relative_error": errors,
            "max_abs_relative_error": max(abs(e) for v in errors.values() for e in v)}


def seed_workload(model: str, fit: dict[str, Any]) -> Workload:
    """The seed demo's ``model`` ("BNN"/"CNN") as a :class:`Workload` with fitted CV."""
    f = SEED_FIGURES
    t1 = f[model]["time_s"][0] / f["steps_one_worker"]
    return Workload(f"seed {model}", t1 / f["batch"], f["grad_bytes"][model], f["batch"],
                    step_cv=fit["step_cv"][model])


def seed_cluster(fit: dict[str, Any], interconnect: str = "aries", **changes: Any) -> Cluster:
    """The fitted seed cluster (no overlap, one fused bucket), optionally changed."""
    c = Cluster(INTERCONNECTS[interconnect], fit["algorithm"], fit["software_latency_s"],
                bucket_bytes=64 * 2**20, overlap=0.0)
    return replace(c, **changes)


def fit_latency_bandwidth(sizes_bytes: list[float], times_s: list[float], workers: int,
                          algorithm: str = "ring") -> Interconnect:
    """Least-squares alpha, beta from measured all-reduce times (the model is linear in them)."""
    if workers < 2 or len(sizes_bytes) != len(times_s) or len(sizes_bytes) < 2:
        raise ValueError("need >= 2 workers and >= 2 (size, time) pairs of equal length")
    if algorithm == "ring":
        a_coef, b_coef = 2 * (workers - 1), 2 * (workers - 1) / workers
    else:
        a_coef, b_coef = 2 * math.ceil(math.log2(workers)), 2.0
    design = torch.tensor([[a_coef, b_coef * s] for s in sizes_bytes], dtype=torch.float64)
    t = torch.tensor(times_s, dtype=torch.float64).view(-1, 1)
    alpha, inv_beta = torch.linalg.lstsq(design, t).solution.view(-1).tolist()
    return Interconnect("measured", max(alpha, 0.0), 1.0 / max(inv_beta, 1e-15))
