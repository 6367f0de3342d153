"""BayesLinear, the Bayesian ``nn.Linear`` (any estimator).

The posterior, prior, estimators and KL live in :class:`bayescale.nn.layers.BayesianLayer`; this
file only adds the linear op (one draw, K stacked draws, K draws of one shared input) and its
input checks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import BayesianLayer, check_float_input
from .priors import PosteriorInit, Prior

__all__ = ["BayesLinear"]


class BayesLinear(BayesianLayer):
    """Bayesian ``nn.Linear``: y = x W^T + b with W ~ N(weight_mu, softplus(weight_rho)^2)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        estimator: str = "flipout",
        prior: Prior | str | None = None,
        init: PosteriorInit | str | None = None,
        bayesian_bias: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if in_features <= 0 or out_features <= 0:
            raise ValueError(
                f"in_features and out_features must be positive, got {in_features}, {out_features}"
            )
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        super().__init__(
            (out_features, in_features), (out_features,) if bias else None,
            estimator=estimator, prior=prior, init=init, bayesian_bias=bayesian_bias,
            device=device, dtype=dtype,
        )

    def _op(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return F.linear(x, weight, bias)

    def _op_draws(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        k, rows = weight.shape[0], x.shape[0] // weight.shape[0]
        xk = x.reshape(k, -1, x.shape[-1])  # (K, B * extra dims, in)
        wt = weight.transpose(1, 2)
        out = torch.bmm(xk, wt) if bias is None else torch.baddbmm(bias.unsqueeze(1), xk, wt)
        return out.reshape(rows * k, *x.shape[1:-1], weight.shape[1])

    def _op_shared(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        k, out_f = weight.shape[0], weight.shape[1]  # one (B, in) x (in, K * out) matmul
        out = F.linear(x, weight.reshape(k * out_f, -1), None if bias is None else bias.reshape(-1))
        out = out.reshape(*x.shape[:-1], k, out_f).movedim(-2, 0)
        return out.reshape(k * x.shape[0], *x.shape[1:-1], out_f)

    def _prepare_input(self, x: Tensor) -> Tensor:
        check_float_input(x, "BayesLinear")
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"BayesLinear expects inputs of shape (*, {self.in_features}), got "
                f"{tuple(x.shape)}; flatten the input or fix in_features"
            )
        return x

    @staticmethod
    def _hyperparams(module: nn.Module) -> dict:
        return {"in_features": module.in_features, "out_features": module.out_features,
                "bias": module.bias is not None}

    def _shape_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"

