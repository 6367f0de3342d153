"""IVON: natural-gradient variational learning of a Gaussian mean-field posterior at Adam's cost.

One :class:`torch.optim.Optimizer`, :class:`IVON` (Improved Variational Online Newton, Shen et al.
2024, Algorithm 1). The posterior over a plain network's weights is q = N(m, σ²) per weight:

* ``m`` is held in the module's parameters (outside a draw they hold exactly m);
* ``h`` is the optimizer's Hessian estimate, with ``δ`` = ``weight_decay`` (the prior precision
  per example, prior N(0, 1/(λδ))) and ``λ`` = ``ess``, the effective sample size (the
  training-set size N for a mean loss);
* σ = 1 / sqrt(λ (h + δ)).

Each step, with ``ℓ̄`` the **mean** minibatch loss and ``t`` the step count:

    θ ~ q, ε = (θ - m)/σ                        (:meth:`IVON.sampled_params`)
    ĝ = ∇ℓ̄(θ),  ĥ = ĝ · ε / σ                  (Price / reparameterization estimate, Alg. 1 l.4)
    g ← β1 g + (1 - β1) ĝ                          (l.5)
    h ← β2 h + (1 - β2) ĥ + ½ (1 - β2)² (h - ĥ)² / (h + δ)     (l.6, the Riemannian correction
                                                    that keeps h + δ > 0)
    ḡ = g / (1 - β1^t)                              (l.7, bias correction of g only)
    m ← m - α · clip((ḡ + δ m) / (h + δ), ξ)        (l.8; clip elementwise to [-ξ, ξ], §3.2)
    σ ← 1 / sqrt(λ (h + δ))                          (l.9)

with α the learning rate, times ``h0 + δ`` when ``rescale_lr`` (Algorithm 1's optional line, so
that the first steps move like SGD with learning rate α). With several draws per step
(``mc_samples`` in :meth:`IVON.step` with a closure, or several ``sampled_params`` blocks before
one ``step``), ĝ is the accumulated gradient and ĥ sums each block's gradient times its ε/σ.

**Gradient accumulation and scaling**: as in plain PyTorch, ``p.grad`` at ``step()`` is the
gradient estimate; scale each micro-batch's loss by 1/k. Backward passes inside one block share
one draw (k micro-batches in one block equal one big batch); each block is a new draw. Gradient
clipping between the block and ``step()`` changes ĝ, not ĥ (ĥ is taken when the block closes).

**Data-parallel** (``distributed=True``): DDP averages ĝ over the W ranks while each rank draws
its own ε_r, so W ranks give W Monte Carlo samples of ĝ. ĥ_r = ĝ ε_r / σ is all-reduced (summed):
Σ_r ĝ ε_r / σ is unbiased for diag(H) and identical on all ranks, so m and h stay bit-identical.
Cost: one extra all-reduce of the parameter count per step.

Parameters with ``requires_grad=False`` are skipped (σ = 0 in :meth:`IVON.posterior_std`); a
parameter without a gradient at ``step()`` is not updated. State is kept in the parameter's dtype
(float32 for bf16/fp16 parameters) on the parameter's device.

References:
    Shen et al., "Variational Learning is Effective for Large Deep Networks", ICML 2024,
    arXiv:2402.17641 (Algorithm 1; §3 for the Hessian estimate and the practical choices).
    Lin, Schmidt & Khan, "Handling the Positive-Definite Constraint in the Bayesian Learning
    Rule", ICML 2020, arXiv:2002.10060 (the correction term of the h update).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..nn.posterior import ParamPosterior

__all__ = ["IVON"]

_LOW = (torch.bfloat16, torch.float16)


def _state_dtype(p: Tensor) -> torch.dtype:
    return torch.float32 if p.dtype in _LOW else p.dtype


def _check(group: dict[str, Any]) -> None:
    """ValueErrors that name the bad hyperparameter (before any state is touched)."""
    for key in ("lr", "ess", "hess_init"):
        v = group[key]
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise ValueError(f"IVON: {key} must be a finite number > 0, got {v!r}")
    for key in ("beta1", "beta2"):
        v = group[key]
        if not (isinstance(v, (int, float)) and 0.0 <= v < 1.0):
            raise ValueError(f"IVON: {key} must be in [0, 1), got {v!r}")
    wd = group["weight_decay"]
    if not (isinstance(wd, (int, float)) and math.isfinite(wd) and wd >= 0):
        raise ValueError(f"IVON: weight_decay must be a finite number >= 0, got {wd!r}")
    clip = group["clip_radius"]
    if clip is not None and not (isinstance(clip, (int, float)) and clip > 0):
        raise ValueError(f"IVON: clip_radius must be > 0 or None, got {clip!r}")


def _buckets(params: list[Tensor]) -> list[list[Tensor]]:
    """Parameters grouped by (device, dtype), so that each group is one ``_foreach`` call."""
    out: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
    for p in params:
        out.setdefault((p.device, p.dtype), []).append(p)
    return list(out.values())


def _sigma(hess_plus_wd: list[Tensor], ess: float) -> list[Tensor]:
    """σ = 1/sqrt(λ (h + δ)) per tensor, from h + δ (Algorithm 1, line 9)."""
    sigma = torch._foreach_mul(hess_plus_wd, ess)
    torch._foreach_rsqrt_(sigma)
    return sigma


def _hess_update(hess: list[Tensor], hess_hat: list[Tensor], beta2: float, wd: float) -> None:
    """h ← β2 h + (1-β2) ĥ + ½(1-β2)² (h-ĥ)²/(h+δ), in place (Algorithm 1, line 6)."""
    corr = torch._foreach_sub(hess, hess_hat)
    torch._foreach_mul_(corr, corr)
    torch._foreach_div_(corr, torch._foreach_add(hess, wd))
    torch._foreach_lerp_(hess, hess_hat, 1.0 - beta2)
    torch._foreach_add_(hess, corr, alpha=0.5 * (1.0 - beta2) ** 2)


def _mean_step(means: list[Tensor], mom: list[Tensor], hess_plus_wd: list[Tensor],
               steps: list[int], group: dict[str, Any]) -> None:
    """m ← m - α clip((g/(1-β1^t) + δ m)/(h + δ), ξ), in place (Algorithm 1, lines 7-8)."""
    wd, clip = group["weight_decay"], group["clip_radius"]
    upd = torch._foreach_div(mom, [1.0 - group["beta1"] ** t for t in steps])
    if wd:
        torch._foreach_add_(upd, means, alpha=wd)
    torch._foreach_div_(upd, hess_plus_wd)
    if clip is not None:
        torch._foreach_clamp_min_(upd, -clip)
        torch._foreach_clamp_max_(upd, clip)
    lr = group["lr"] * ((group["hess_init"] + wd) if group["rescale_lr"] else 1.0)
    torch._foreach_add_(means, upd, alpha=-lr)


class IVON(torch.optim.Optimizer):
    """Improved Variational Online Newton: a Gaussian mean-field posterior N(m, σ²) over the
    parameters, trained by natural gradients at about the cost of Adam.

    Usage::

        opt = IVON(model.parameters(), lr=0.1, ess=len(train_set))
        for x, y in loader:
            opt.zero_grad(set_to_none=True)
            with opt.sampled_params(train=True):   # θ ~ q written into the parameters
                F.cross_entropy(model(x), y).backward()   # the mean loss
            opt.step()                                # the mean is back; update m and h

    Args:
        params: parameters or parameter groups (groups may override every hyperparameter
            below except ``mc_samples``; they may sit on different devices and dtypes).
        lr: α, the learning rate (> 0).
        ess: λ, the effective sample size (> 0): the training-set size for a mean loss.
        hess_init: h0, the initial Hessian estimate (> 0); the initial σ = 1/sqrt(λ(h0 + δ)).
        beta1: momentum of the gradient average g, in [0, 1).
        beta2: momentum of the Hessian estimate h, in [0, 1) (the paper uses 0.99999).
        weight_decay: δ ≥ 0, the prior precision per example (prior N(0, 1/(λδ))).
        mc_samples: draws per step taken by :meth:`step` with a closure (≥ 1).
        clip_radius: ξ, elementwise clip of the preconditioned update (None: no clipping).
        rescale_lr: multiply α by h0 + δ (Algorithm 1's optional line).
        distributed: gradients are averaged over ranks (DDP); all-reduce ĥ so that every rank
            holds the same h. Each rank must draw its own noise (seed + rank).
        process_group: the group for that all-reduce (default: the world).
        generator: draw the weight noise from this generator (default: torch's global RNG).

    References:
        Shen et al., "Variational Learning is Effective for Large Deep Networks", ICML 2024,
        arXiv:2402.17641, Algorithm 1.
    """

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]], lr: float,
                 ess: float, hess_init: float = 1.0, beta1: float = 0.9, beta2: float = 0.99999,
                 weight_decay: float = 1e-4, mc_samples: int = 1,
                 clip_radius: float | None = None, rescale_lr: bool = True, *,
                 distributed: bool = False, process_group: Any = None,
                 generator: torch.Generator | None = None) -> None:
        if not (isinstance(mc_samples, int) and mc_samples >= 1):
            raise ValueError(f"IVON: mc_samples must be an integer >= 1, got {mc_samples!r}")
        defaults = {"lr": lr, "ess": ess, "hess_init": hess_init, "beta1": beta1, "beta2": beta2,
                    "weight_decay": weight_decay, "clip_radius": clip_radius,
                    "rescale_lr": rescale_lr}
        _check(defaults)
        super().__init__(params, defaults)
        self.mc_samples = mc_samples
        self.distributed, self.process_group, self.generator = (distributed, process_group,
                                                                generator)
        self._inside = False
        self._num_draws = 0  # closed sampled_params(train=True) blocks since the last step
        self._hess_hat: dict[Tensor, Tensor] = {}
        # σ per parameter, computed once per step (with the h, λ and δ it was computed from)
        self._sigma_cache: dict[Tensor, tuple[Tensor, int, float, float, Tensor]] = {}

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Validate the group's hyperparameters (with the defaults filled in), then add it."""
        _check({**self.defaults, **{k: v for k, v in param_group.items() if k != "params"}})
        super().add_param_group(param_group)

    def _state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        st = self.state[p]
        if not st:
            dt = _state_dtype(p)
            st["step"] = 0
            st["momentum"] = torch.zeros_like(p, dtype=dt, memory_format=torch.preserve_format)
            st["hess"] = torch.full_like(p, group["hess_init"], dtype=dt,
                                         memory_format=torch.preserve_format)
        return st

    def _noise(self, params: list[Tensor]) -> list[Tensor]:
        """ε ~ N(0, I) for a bucket of one device and dtype, drawn as one flat tensor."""
        p0 = params[0]
        dt, numels = _state_dtype(p0), [p.numel() for p in params]
        gen = self.generator
        dev = gen.device if gen is not None else p0.device
        flat = torch.randn(sum(numels), generator=gen, device=dev, dtype=dt).to(p0.device)
        return [e.view_as(p) for e, p in zip(flat.split(numels), params, strict=True)]

    # -- drawing ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def sampled_params(self, train: bool = True) -> Iterator[None]:
        """Write a draw θ = m + σ ε into the parameters for the ``with`` body; restore m after.

        The mean is restored exactly on exit, also on an exception. With ``train=True`` the
        gradient accumulated inside the block (minus what ``p.grad`` held on entry) is
        recorded for the Hessian estimate ĥ of the next :meth:`step`; a block left by an
        exception records nothing. ``train=False`` only draws (prediction).
        """
        if self._inside:
            raise RuntimeError("IVON.sampled_params: already inside a draw; blocks do not nest")
        self._inside = True
        draws: list[tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor | None]]] = []
        ok = False
        try:
            with torch.no_grad():
                for group in self.param_groups:
                    ps = [p for p in group["params"] if p.requires_grad]
                    for bucket in _buckets(ps):
                        draws.append(self._draw(bucket, group, train))
            yield
            ok = True
        finally:
            with torch.no_grad():
                for bucket, means, _, _ in draws:
                    torch._foreach_copy_(bucket, means)
                if ok and train:
                    for bucket, _, noise, grad0 in draws:
                        self._record(bucket, noise, grad0)
                    self._num_draws += 1
            self._inside = False

    def _sigmas(self, bucket: list[Tensor], group: dict[str, Any]) -> list[Tensor]:
        """σ of a bucket: the one the last step computed, unless h, λ or δ changed since."""
        ess, wd = group["ess"], group["weight_decay"]
        hess = [self._state(p, group)["hess"] for p in bucket]
        cached = [self._sigma_cache.get(p) for p in bucket]
        if all(c is not None and c[0] is h and c[1] == h._version and c[2] == ess and c[3] == wd
               for c, h in zip(cached, hess, strict=True)):
            return [c[4] for c in cached]  # type: ignore[index]
        return self._cache_sigmas(bucket, hess, torch._foreach_add(hess, wd), ess, wd)

    def _cache_sigmas(self, bucket: list[Tensor], hess: list[Tensor],
                      hess_plus_wd: list[Tensor], ess: float, wd: float) -> list[Tensor]:
        sigma = _sigma(hess_plus_wd, ess)
        for p, h, s in zip(bucket, hess, sigma, strict=True):
            self._sigma_cache[p] = (h, h._version, ess, wd, s)
        return sigma

    def _draw(self, bucket: list[Tensor], group: dict[str, Any], train: bool
              ) -> tuple[list[Tensor], list[Tensor], tuple[list[Tensor], list[Tensor]],
                         list[Tensor | None]]:
        sigma = self._sigmas(bucket, group)
        eps = self._noise(bucket)
        means = [p.detach().clone() for p in bucket]
        if bucket[0].dtype in _LOW:
            for p, e, s in zip(bucket, eps, sigma, strict=True):
                p.copy_(torch.addcmul(p.float(), e, s))
        else:
            torch._foreach_addcmul_(bucket, eps, sigma)  # θ = m + σ ε, one pass
        grad0 = [p.grad.detach().clone() if train and p.grad is not None else None
                 for p in bucket]
        return bucket, means, (eps, sigma), grad0

    def _record(self, bucket: list[Tensor], noise: tuple[list[Tensor], list[Tensor]],
                grad0: list[Tensor | None]) -> None:
        """ĥ += (gradient of this block) · ε/σ (Algorithm 1, line 4)."""
        keep = [i for i, p in enumerate(bucket) if p.grad is not None]
        if not keep:
            return
        eps, sigma = noise
        grads = [bucket[i].grad if grad0[i] is None else bucket[i].grad - grad0[i]
                 for i in keep]
        grads = [g.to(eps[0].dtype) for g in grads]
        hat = torch._foreach_mul(grads, [eps[i] for i in keep])
        torch._foreach_div_(hat, [sigma[i] for i in keep])
        for i, h in zip(keep, hat, strict=True):
            acc = self._hess_hat.get(bucket[i])
            if acc is None:
                self._hess_hat[bucket[i]] = h
            else:
                acc.add_(h)

    # -- the update ---------------------------------------------------------------------------
    def _closure_draws(self, closure: Callable[[], Tensor]) -> Tensor:
        """``mc_samples`` draws of ``closure`` (forward + backward); the mean gradient and ĥ."""
        params = [p for g in self.param_groups for p in g["params"] if p.requires_grad]
        total: dict[Tensor, Tensor] = {}
        losses = []
        for _ in range(self.mc_samples):
            for p in params:
                p.grad = None
            with torch.enable_grad(), self.sampled_params(train=True):
                losses.append(closure().detach())
            for p in params:
                if p.grad is not None:
                    total[p] = total[p].add_(p.grad) if p in total else p.grad
        n = self.mc_samples
        for p in params:
            p.grad = total[p].div_(n) if p in total else None
        for acc in self._hess_hat.values():
            acc.div_(n)
        self._num_draws = 1
        return torch.stack(losses).mean()

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:  # type: ignore[override]
        """One IVON update of m and h from the draws since the last step.

        Args:
            closure: optional; runs the forward and backward pass of the mean loss on the
                current draw and returns the loss. ``step`` then zeroes the gradients, runs it
                ``mc_samples`` times, each on a new draw, averages, and updates.

        Returns:
            The mean loss over the draws when a closure is given, else None.

        Raises:
            RuntimeError: no ``sampled_params(train=True)`` block closed since the last step
                (or one is still open); m, h and the step count are left untouched.
        """
        if self._inside:
            raise RuntimeError("IVON.step() inside `sampled_params`: close the block first, so "
                               "that the parameters hold the mean again")
        loss = self._closure_draws(closure) if closure is not None else None
        if self._num_draws == 0:
            raise RuntimeError("IVON.step() needs a backward pass inside `with "
                               "opt.sampled_params(train=True):` since the last step (the "
                               "gradient must be taken at a posterior draw); nothing was updated")
        if self.distributed:
            self._all_reduce_hess_hat()
        for group in self.param_groups:
            ps = [p for p in group["params"] if p.requires_grad and p.grad is not None
                  and p in self._hess_hat]
            for bucket in _buckets(ps):
                self._update(bucket, group)
        self._hess_hat.clear()
        self._num_draws = 0
        return loss

    def _update(self, bucket: list[Tensor], group: dict[str, Any]) -> None:
        sts = [self._state(p, group) for p in bucket]
        for st in sts:
            st["step"] += 1
        low = bucket[0].dtype in _LOW
        grads = [p.grad.float() if low else p.grad for p in bucket]
        mom, hess = [s["momentum"] for s in sts], [s["hess"] for s in sts]
        torch._foreach_lerp_(mom, grads, 1.0 - group["beta1"])
        _hess_update(hess, [self._hess_hat[p] for p in bucket], group["beta2"],
                     group["weight_decay"])
        means = [p.float() for p in bucket] if low else bucket
        hess_plus_wd = torch._foreach_add(hess, group["weight_decay"])
        _mean_step(means, mom, hess_plus_wd, [s["step"] for s in sts], group)
        if low:
            torch._foreach_copy_(bucket, means)
        # σ of the next draw, from the h + δ just computed (saves the draw three passes)
        self._cache_sigmas(bucket, hess, hess_plus_wd, group["ess"], group["weight_decay"])

    def _all_reduce_hess_hat(self) -> None:
        if not (dist.is_available() and dist.is_initialized()):
            return
        accs = list(self._hess_hat.values())
        for bucket in _buckets(accs):
            flat = torch.cat([a.reshape(-1) for a in bucket])
            dist.all_reduce(flat, group=self.process_group)
            offset = 0
            for a in bucket:
                a.copy_(flat[offset: offset + a.numel()].view_as(a))
                offset += a.numel()

    # -- the posterior ------------------------------------------------------------------------
    def posterior_std(self) -> list[Tensor]:
        """σ = 1/sqrt(λ (h + δ)) per parameter, in parameter order (0 for frozen parameters)."""
        out = []
        for group in self.param_groups:
            for p in group["params"]:
                if not p.requires_grad:
                    out.append(torch.zeros_like(p, dtype=_state_dtype(p)))
                    continue
                h = self.state[p]["hess"] if self.state[p] else torch.full_like(
                    p, group["hess_init"], dtype=_state_dtype(p))
                out.append(torch.rsqrt(group["ess"] * (h + group["weight_decay"])))
        return out

    def posterior(self, module: nn.Module | None = None) -> ParamPosterior:
        """The current posterior N(m, σ²) as a detached :class:`ParamPosterior` (copies).

        Args:
            module: optional; names the parameters after ``module.named_parameters()``.
        """
        params = [p for g in self.param_groups for p in g["params"]]
        names = None
        if module is not None:
            by_id = {id(p): n for n, p in module.named_parameters()}
            names = [by_id.get(id(p), f"param{i}") for i, p in enumerate(params)]
        return ParamPosterior(params, [p.detach() for p in params], self.posterior_std(), names)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the state; m/h keep their saved dtype (float32 for low-precision params)."""
        saved = {k: dict(v) for k, v in state_dict["state"].items()}
        ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        super().load_state_dict(state_dict)
        params = [p for g in self.param_groups for p in g["params"]]
        for i, p in zip(ids, params, strict=True):
            if i in saved:
                for key in ("momentum", "hess"):
                    self.state[p][key] = saved[i][key].to(p.device, _state_dtype(p)).clone()
                self.state[p]["step"] = int(saved[i]["step"])
        self._hess_hat.clear()
        self._sigma_cache.clear()
        self._num_draws = 0
