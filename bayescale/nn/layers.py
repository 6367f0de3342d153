"""Mean-field Gaussian Bayesian layers: the base class (BayesLinear: linear.py, convolutions:
conv.py).

Each weight has a posterior q(w) = N(mu, sigma^2) with sigma = softplus(rho); the parameters are
``weight_mu`` and ``weight_rho``. One base class owns the posterior, the prior and the estimator;
subclasses only supply the op (``F.linear`` or ``F.convNd``). ``forward`` returns a tensor;
``kl()`` is computed on demand from (mu, sigma) and the prior. Noise is drawn in ``forward`` and
never stored, so the only per-weight state is mu and rho.

Estimators (``estimator=``):
    * ``"reparam"``: one weight sample W = mu + sigma * eps per forward, shared by the batch
      (Blundell et al. 2015, arXiv:1505.05424).
    * ``"flipout"``: y = op(x, mu) + op(x * s_in, sigma * eps) * s_out with Rademacher signs per
      example (per channel for convolutions), as TFP's Flipout layers
      (Wen et al. 2018, arXiv:1803.04386).
    * ``"local"``: local reparameterization, y = op(x, mu) + sqrt(op(x^2, sigma^2)) * eps
      (Kingma et al. 2015, arXiv:1506.02557).

Layers sample in both train and eval mode; :func:`bayescale.mean_weights` and
:func:`bayescale.fixed_sample` switch that.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .priors import (
    GaussianPrior,
    PosteriorInit,
    Prior,
    resolve_init,
    resolve_prior,
    softplus_inverse,
)

__all__ = ["ESTIMATORS", "BayesianLayer", "check_float_input"]

ESTIMATORS = ("reparam", "flipout", "local")
_MODES = ("sample", "mean", "fixed", "draws")
_VAR_FLOOR = 1e-16  # keeps sqrt differentiable where op(x^2, sigma^2) == 0 (e.g. dead inputs)


_SIGN_TABLES: dict[tuple[torch.dtype, torch.device], Tensor] = {}  # constant lookup tables


def _sign_table(dtype: torch.dtype, device: torch.device) -> Tensor:
    """[256, 8] table: row b holds the 8 bits of byte b as +-1 (built once per dtype/device)."""
    key = (dtype, device)
    if key not in _SIGN_TABLES:
        bits = (torch.arange(256, device=device).unsqueeze(1) >> torch.arange(8, device=device)) & 1
        _SIGN_TABLES[key] = (bits * 2 - 1).to(dtype)
    return _SIGN_TABLES[key]


def _rademacher(shape: Sequence[int], like: Tensor) -> Tensor:
    """Independent +-1 signs with the dtype and device of ``like``.

    Draws 64 random bits per int64 and expands each byte through a lookup table: one RNG call per
    64 signs (``bernoulli_`` costs one per sign, ~50x slower on CPU).
    """
    n = math.prod(shape)
    words = torch.randint(-(2**63), 2**63 - 1, ((n + 63) // 64,), dtype=torch.int64,
                          device=like.device)
    # index_select is ~4x faster than advanced indexing here (CPU).
    signs = _sign_table(like.dtype, like.device).index_select(0, words.view(torch.uint8).long())
    return signs.view(-1)[:n].view(shape)


class BayesianLayer(nn.Module):
    """Base class: mean-field Gaussian weights (and optionally bias) around an op.

    Subclasses supply :meth:`_op` (the deterministic op), :meth:`_prepare_input`,
    :meth:`_hyperparams` (for :meth:`from_module`) and the number of trailing dims over which
    Flipout's signs are shared.
    """

    _sign_trailing_dims = 0  # trailing dims over which Flipout signs are shared (spatial dims)

    def __init__(
        self,
        weight_shape: Sequence[int],
        bias_shape: Sequence[int] | None,
        *,
        estimator: str = "flipout",
        prior: Prior | str | None = None,
        init: PosteriorInit | str | None = None,
        bayesian_bias: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if estimator not in ESTIMATORS:
            raise ValueError(f"unknown estimator {estimator!r}; choose one of {ESTIMATORS}")
        self.estimator = estimator
        self.prior = resolve_prior(prior)
        self.init = resolve_init(init)
        self.bayesian_bias = bool(bayesian_bias) and bias_shape is not None
        factory = {"device": device, "dtype": dtype}
        self.weight_mu = nn.Parameter(torch.empty(weight_shape, **factory))
        self.weight_rho = nn.Parameter(torch.empty(weight_shape, **factory))
        if bias_shape is None:
            self.register_parameter("bias", None)
        elif self.bayesian_bias:
            self.bias_mu = nn.Parameter(torch.empty(bias_shape, **factory))
            self.bias_rho = nn.Parameter(torch.empty(bias_shape, **factory))
        else:
            self.bias = nn.Parameter(torch.empty(bias_shape, **factory))
        self._mode = "sample"
        self._kl_cache: tuple[Tensor, tuple, list] | None = None  # (KL, key, live), last forward
        self._fixed_eps: tuple[Tensor, Tensor | None] | None = None
        # Pruning mask (bool, True = kept), a persistent buffer set only by set_weight_mask; the
        # plain flag keeps the unmasked forward free of buffer lookups.
        self.register_buffer("weight_mask", None)
        self._masked = False
        self.reset_parameters()

    # ------------------------------------------------------------------ posterior
    def reset_parameters(self) -> None:
        """Fresh init: mu ~ N(0, mu_std^2), rho ~ N(rho_mean, rho_std^2), bias loc ~ N(0, 0.1^2)."""
        if self.init.moped_delta is not None:
            raise ValueError(
                "MOPED init copies pretrained weights: build the layer with "
                "Bayes*.from_module(module, init=moped(delta)) or bayesianize(model, init=...)"
            )
        with torch.no_grad():
            self.weight_mu.normal_(0.0, self.init.mu_std)
            self.weight_rho.normal_(self.init.rho_mean, self.init.rho_std)
            if self.bayesian_bias:
                self.bias_mu.normal_(0.0, self.init.mu_std)
                self.bias_rho.normal_(self.init.rho_mean, self.init.rho_std)
            elif self.bias is not None:
                self.bias.normal_(0.0, 0.1)  # TFP's deterministic bias loc initializer

    def _sigma(self, rho: Tensor) -> Tensor:
        if self.init.rho_max is not None:
            rho = rho.clamp(max=self.init.rho_max)
        return F.softplus(rho)

    @property
    def weight_sigma(self) -> Tensor:
        """sigma = softplus(rho) of the weights (capped if the init sets ``rho_max``)."""
        return self._sigma(self.weight_rho)

    @property
    def bias_sigma(self) -> Tensor | None:
        return self._sigma(self.bias_rho) if self.bayesian_bias else None

    def set_weight_mask(self, mask: Tensor | None) -> None:
        """Prune (``mask``: bool, weight-shaped, True = kept) or unprune (``None``) the weights.

        A pruned weight is removed: exactly 0 in every forward (no noise) and out of the KL. The
        mask is a persistent buffer, so it is saved in and loaded from the state_dict.
        """
        if mask is not None:
            if mask.shape != self.weight_mu.shape or mask.dtype != torch.bool:
                raise ValueError(f"weight_mask must be a bool tensor of shape "
                                 f"{tuple(self.weight_mu.shape)}, got {mask.dtype} "
                                 f"{tuple(mask.shape)}; build it with bayescale.pruning.bprune")
            mask = mask.to(self.weight_mu.device)
        self.weight_mask = mask
        self._masked = mask is not None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # A pruned layer's state into a fresh one: create the mask buffer, then load as usual.
        if prefix + "weight_mask" in state_dict and not self._masked:
            self.set_weight_mask(torch.ones_like(self.weight_mu, dtype=torch.bool))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def kl(self) -> Tensor:
        """KL(q || p) summed over this layer's Bayesian weights (and bias, if Bayesian).

        Pruned weights (``weight_mask`` False) are removed from the model and from the KL.
        After a training forward the weight KL it computed is used once (same parameters, same
        prior, same grad mode), so sigma is not computed twice per step.
        """
        cached, self._kl_cache = self._kl_cache, None
        if cached is not None and cached[2] and cached[1] == self._kl_key() and not self._masked:
            kl = cached[0]
        elif self._masked:
            kl = self.prior.kl(self.weight_mu[self.weight_mask],
                               self.weight_sigma[self.weight_mask])
        else:
            kl = self.prior.kl(self.weight_mu, self.weight_sigma)
        if self.bayesian_bias:
            kl = kl + self.prior.kl(self.bias_mu, self.bias_sigma)
        return kl

    # ------------------------------------------------------------------ forward
    def _op(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        raise NotImplementedError

    def _prepare_input(self, x: Tensor) -> Tensor:
        """Validate (and for padded convolutions, pad) the input once per forward."""
        return x

    def _bias_mean(self) -> Tensor | None:
        return self.bias_mu if self.bayesian_bias else self.bias

    def _bias_sample(self) -> Tensor | None:
        if not self.bayesian_bias:
            return self.bias
        sigma = self.bias_sigma
        return torch.addcmul(self.bias_mu, sigma, torch.randn_like(sigma))

    def forward(self, x: Tensor) -> Tensor:
        x = self._prepare_input(x)
        if self._mode == "draws":
            return self._forward_draws(x)
        if self._masked:
            return self._forward_masked(x)
        if self._mode == "mean":
            return self._op(x, self.weight_mu, self._bias_mean())
        if self._mode == "fixed":
            return self._forward_fixed(x)
        mu = self.weight_mu
        if self._fuse_kl():
            # A training forward: sigma (or W) and the KL in one fused op; kl() reuses this KL.
            rho = self.weight_rho
            if self.init.rho_max is not None:
                rho = rho.clamp(max=self.init.rho_max)
            out, kl = self.prior.posterior_and_kl(mu, rho, self.estimator == "reparam")
            live = [True]  # cleared once backward has run through the fused op (graph freed)
            kl.grad_fn.register_hook(lambda *_: live.clear())
            self._kl_cache = (kl, self._kl_key(), live)
            if self.estimator == "reparam":
                return self._op(x, out, self._bias_sample())
            sigma = out
        else:
            sigma = self.weight_sigma
            if self.estimator == "reparam":
                weight = torch.addcmul(mu, sigma, torch.randn_like(sigma))
                return self._op(x, weight, self._bias_sample())
        if self.estimator == "flipout":
            return self._forward_flipout(x, mu, sigma)
        return self._forward_local(x, mu, sigma)

    def _fuse_kl(self) -> bool:
        """Fuse sigma and the KL in a gradient-recording forward under a Gaussian prior."""
        # Exactly GaussianPrior: a subclass may override kl(), which the fused op would bypass.
        return (torch.is_grad_enabled() and type(self.prior) is GaussianPrior
                and (self.weight_mu.requires_grad or self.weight_rho.requires_grad)
                and not torch.compiler.is_compiling())

    def _kl_key(self) -> tuple:
        """What the cached KL depends on: parameter versions, grad mode and the prior."""
        return (self.weight_mu._version, self.weight_rho._version, torch.is_grad_enabled(),
                id(self.prior), self.init.rho_max)

    def _forward_masked(self, x: Tensor) -> Tensor:
        """Forward of a pruned layer: W = m * (mu + sigma * eps), exactly 0 where m = 0."""
        m = self.weight_mask
        mu = self.weight_mu * m
        if self._mode == "mean":
            return self._op(x, mu, self._bias_mean())
        sigma = self.weight_sigma * m
        if self._mode == "fixed":
            eps_w, eps_b = self._fixed_eps
            bias = self._bias_mean()
            if eps_b is not None:
                bias = torch.addcmul(self.bias_mu, self.bias_sigma, eps_b)
            return self._op(x, torch.addcmul(mu, sigma, eps_w), bias)
        if self.estimator == "reparam":
            weight = torch.addcmul(mu, sigma, torch.randn_like(sigma))
            return self._op(x, weight, self._bias_sample())
        if self.estimator == "flipout":
            return self._forward_flipout(x, mu, sigma)
        return self._forward_local(x, mu, sigma)

    def _cached(self, eps_w: Tensor, make):
        """``make()`` (the sampled weights of the fixed noise ``eps_w``), computed once per draw
        while no gradient is taken and no parameter or mask changed: the input chunks of an MC
        pass then share one weight draw instead of recomputing mu + sigma * eps per chunk."""
        if torch.is_grad_enabled():
            return make()
        key = tuple(t._version for t in (*self.parameters(recurse=False), *self.buffers(False)))
        cache = getattr(self, "_sample_cache", None)
        if cache is not None and cache[0] is eps_w and cache[1] == key:
            return cache[2]
        out = make()
        self._sample_cache = (eps_w, key, out)
        return out

    def _forward_fixed(self, x: Tensor) -> Tensor:
        eps_w, eps_b = self._fixed_eps

        def make() -> tuple[Tensor, Tensor | None]:
            bias = self._bias_mean()
            if eps_b is not None:
                bias = torch.addcmul(self.bias_mu, self.bias_sigma, eps_b)
            return torch.addcmul(self.weight_mu, self.weight_sigma, eps_w), bias

        weight, bias = self._cached(eps_w, make)
        return self._op(x, weight, bias)

    def _forward_draws(self, x: Tensor) -> Tensor:
        """K weight draws in one forward (:func:`bayescale.nn.sampling.draws`).

        ``x`` holds K equal blocks of rows, draw-major: rows [k*B, (k+1)*B) see draw k, with
        W_k = mu + sigma * eps_k (times the mask of a pruned layer), exactly what K successive
        :func:`~bayescale.nn.sampling.fixed_sample` forwards compute.
        """
        eps_w, eps_b = self._fixed_eps
        k = eps_w.shape[0]
        shared = k > 1 and x.dim() >= 2 and x.shape[0] == getattr(self, "_draw_rows", None)
        if x.dim() < 2 or (x.shape[0] % k and not shared):
            raise ValueError(f"{type(self).__name__}: {k} weight draws per forward need a batch "
                             f"of K * B rows, got input {tuple(x.shape)}")

        def make() -> tuple[Tensor, Tensor | None]:
            mu, sigma = self.weight_mu, self.weight_sigma
            if self._masked:
                mu, sigma = mu * self.weight_mask, sigma * self.weight_mask
            bias = self._bias_mean()
            if eps_b is not None:
                bias = torch.addcmul(self.bias_mu, self.bias_sigma, eps_b)  # (K, out)
            elif bias is not None:
                bias = bias.expand(k, *bias.shape)
            return torch.addcmul(mu, sigma, eps_w), bias  # (K, *weight_shape)

        weight, bias = self._cached(eps_w, make)
        if shared:  # the model's own B input rows, not yet split by draw: one wide op
            return self._op_shared(x, weight, bias)
        return self._op_draws(x, weight, bias)

    def _op_draws(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        """The op with per-draw weights (K, ...) on draw-major rows; subclasses batch it."""
        k = weight.shape[0]
        parts = x.chunk(k)
        return torch.cat([self._op(parts[i], weight[i], None if bias is None else bias[i])
                          for i in range(k)])

    def _op_shared(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        """The K draws applied to the same B rows, stacked draw-major (K * B rows)."""
        return torch.cat([self._op(x, weight[i], None if bias is None else bias[i])
                          for i in range(weight.shape[0])])

    def _sign_shape(self, t: Tensor) -> tuple[int, ...]:
        k = self._sign_trailing_dims
        return tuple(t.shape[: t.dim() - k]) + (1,) * k

    def _forward_flipout(self, x: Tensor, mu: Tensor, sigma: Tensor) -> Tensor:
        delta = sigma * torch.randn_like(sigma)
        mean = self._op(x, mu, self._bias_sample())
        s_in = _rademacher(self._sign_shape(x), x)
        pert = self._op(x * s_in, delta, None)
        s_out = _rademacher(self._sign_shape(pert), pert)
        return torch.addcmul(mean, pert, s_out)

    def _forward_local(self, x: Tensor, mu: Tensor, sigma: Tensor) -> Tensor:
        mean = self._op(x, mu, self._bias_mean())
        bias_var = self.bias_sigma.square() if self.bayesian_bias else None
        var = self._op(x.square(), sigma.square(), bias_var)
        # Noise and its scale in float32 even when the ops ran in bf16 under autocast.
        std = var.float().clamp_min(_VAR_FLOOR).sqrt()
        return (mean.float() + std * torch.randn_like(std)).to(mean.dtype)

    # ------------------------------------------------------------------ conversion
    @classmethod
    def from_module(
        cls,
        module: nn.Module,
        *,
        estimator: str = "flipout",
        prior: Prior | str | None = None,
        init: PosteriorInit | str | None = None,
        bayesian_bias: bool = False,
    ) -> BayesianLayer:
        """Bayesian twin of a deterministic layer (same hyper-parameters, device and dtype).

        With a MOPED init (:func:`bayescale.moped`) mu and the bias are copied from the module and
        sigma = delta * |w|; otherwise the posterior is initialised fresh from ``init``.
        """
        init = resolve_init(init)
        layer = cls(
            **cls._hyperparams(module), estimator=estimator, prior=prior,
            init=replace(init, moped_delta=None), bayesian_bias=bayesian_bias,
            device=module.weight.device, dtype=module.weight.dtype,
        )
        layer.init = init
        delta = init.moped_delta
        if delta is not None:
            with torch.no_grad():
                w = module.weight.detach()
                layer.weight_mu.copy_(w)
                layer.weight_rho.copy_(softplus_inverse(delta * w.abs() + 1e-8))
                if module.bias is not None:
                    b = module.bias.detach()
                    if layer.bayesian_bias:
                        layer.bias_mu.copy_(b)
                        layer.bias_rho.copy_(softplus_inverse(delta * b.abs() + 1e-8))
                    else:
                        layer.bias.copy_(b)
        return layer

    @staticmethod
    def _hyperparams(module: nn.Module) -> dict:
        """Constructor arguments that rebuild ``module``'s shape and options."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        bias = "none" if self.bias is None and not self.bayesian_bias else (
            "bayesian" if self.bayesian_bias else "deterministic")
        pruned = ""
        if self._masked:
            pruned = f", pruned={int((~self.weight_mask).sum())}/{self.weight_mask.numel()}"
        return (f"{self._shape_repr()}, estimator={self.estimator}, prior={self.prior!r}, "
                f"bias={bias}{pruned}")

    def _shape_repr(self) -> str:
        return f"weight={tuple(self.weight_mu.shape)}"


def check_float_input(x: Tensor, name: str) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} expects a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(
            f"{name} expects a floating-point input, got dtype {x.dtype}; convert with x.float()"
        )
