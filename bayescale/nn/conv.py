"""Bayesian convolutions BayesConv1d/2d/3d: every option of ``nn.ConvNd``, any estimator.

The posterior, prior, estimators and KL live in :class:`bayescale.nn.layers.BayesianLayer`; this
file only adds the convolution op, its arguments and input checks. Flipout's sign vectors have shape
[N, C, 1, ..., 1]: one sign per example per channel, shared over space (as TFP's Conv*Flipout).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import BayesianLayer, check_float_input
from .priors import PosteriorInit, Prior

__all__ = ["BayesConv1d", "BayesConv2d", "BayesConv3d"]

_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def _ntuple(value: int | Sequence[int], n: int, name: str) -> tuple[int, ...]:
    out = (value,) * n if isinstance(value, int) else tuple(value)
    if len(out) != n or not all(isinstance(v, int) for v in out):
        raise ValueError(f"{name} must be an int or a tuple of {n} ints, got {value!r}")
    return out


class _BayesConvNd(BayesianLayer):
    """Shared N-d convolution logic; subclasses set ``_nd``, ``_conv`` and the sign dims."""

    _nd: int
    _conv: staticmethod

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: str | int | Sequence[int] = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        *,
        estimator: str = "flipout",
        prior: Prior | str | None = None,
        init: PosteriorInit | str | None = None,
        bayesian_bias: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        n, name = self._nd, type(self).__name__
        if in_channels <= 0 or out_channels <= 0 or groups <= 0:
            raise ValueError(f"{name}: channels and groups must be positive")
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"{name}: in_channels ({in_channels}) and out_channels ({out_channels}) must "
                f"both be divisible by groups ({groups})"
            )
        if padding_mode not in _PADDING_MODES:
            raise ValueError(f"{name}: padding_mode must be one of {_PADDING_MODES}")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = _ntuple(kernel_size, n, "kernel_size")
        self.stride = _ntuple(stride, n, "stride")
        self.dilation = _ntuple(dilation, n, "dilation")
        self.padding_mode = padding_mode
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(f"{name}: padding string must be 'same' or 'valid'")
            if padding == "same" and any(s != 1 for s in self.stride):
                raise ValueError(f"{name}: padding='same' needs stride 1 (as torch.nn.Conv)")
            self.padding = padding
        else:
            self.padding = _ntuple(padding, n, "padding")
        # Non-zero padding modes pad explicitly once per forward (F.pad order: last dim first).
        self._pad = self._explicit_padding() if padding_mode != "zeros" else None
        super().__init__(
            (out_channels, in_channels // groups, *self.kernel_size),
            (out_channels,) if bias else None,
            estimator=estimator, prior=prior, init=init, bayesian_bias=bayesian_bias,
            device=device, dtype=dtype,
        )

    def _explicit_padding(self) -> tuple[int, ...]:
        pads: list[int] = []
        for i in reversed(range(self._nd)):
            if self.padding == "same":
                total = self.dilation[i] * (self.kernel_size[i] - 1)
                pads += [total // 2, total - total // 2]
            elif self.padding == "valid":
                pads += [0, 0]
            else:
                pads += [self.padding[i], self.padding[i]]
        return tuple(pads)

    def _op(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        padding = 0 if self._pad is not None else self.padding
        return self._conv(x, weight, bias, self.stride, padding, self.dilation, self.groups)

    def _op_draws(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        """K draws as one grouped convolution: draw k's channels form groups k*g ... k*g+g-1."""
        k, n = weight.shape[0], self._nd
        if x.dim() != n + 2:
            return super()._op_draws(x, weight, bias)
        rows, c, spatial = x.shape[0] // k, x.shape[1], x.shape[2:]
        xg = x.reshape(k, rows, c, *spatial).transpose(0, 1).reshape(rows, k * c, *spatial)
        padding = 0 if self._pad is not None else self.padding
        out = self._conv(xg, weight.reshape(k * weight.shape[1], *weight.shape[2:]),
                         None if bias is None else bias.reshape(-1), self.stride, padding,
                         self.dilation, self.groups * k)
        o = self.out_channels
        return out.reshape(rows, k, o, *out.shape[2:]).transpose(0, 1).reshape(
            k * rows, o, *out.shape[2:])

    def _op_shared(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        """K draws on the same B inputs: one convolution with K times the output channels.

        Output channels are ordered (group, draw, channel) so that each of the ``groups``
        blocks still sees its own input channels; the result is reordered draw-major.
        """
        if x.dim() != self._nd + 2:
            return super()._op_shared(x, weight, bias)
        k, g, o = weight.shape[0], self.groups, self.out_channels
        w = weight.reshape(k, g, o // g, *weight.shape[2:]).transpose(0, 1)
        b = None if bias is None else bias.reshape(k, g, o // g).transpose(0, 1).reshape(-1)
        padding = 0 if self._pad is not None else self.padding
        out = self._conv(x, w.reshape(g * k * (o // g), *weight.shape[2:]), b, self.stride,
                         padding, self.dilation, g)
        rows, spatial = x.shape[0], out.shape[2:]
        out = out.reshape(rows, g, k, o // g, *spatial).permute(2, 0, 1, 3, *range(4, 4 + self._nd))
        return out.reshape(k * rows, o, *spatial)

    def _prepare_input(self, x: Tensor) -> Tensor:
        name, n = type(self).__name__, self._nd
        check_float_input(x, name)
        if x.dim() not in (n + 1, n + 2) or x.shape[-n - 1] != self.in_channels:
            spatial = {1: "L", 2: "H, W", 3: "D, H, W"}[n]
            raise ValueError(
                f"{name} expects inputs of shape (N, {self.in_channels}, {spatial}) or unbatched "
                f"({self.in_channels}, {spatial}), got {tuple(x.shape)}; check in_channels and "
                f"the input layout (channels first)"
            )
        if self._pad is not None:
            x = F.pad(x, self._pad, mode=self.padding_mode)
        return x

    @staticmethod
    def _hyperparams(module: nn.Module) -> dict:
        return {
            "in_channels": module.in_channels, "out_channels": module.out_channels,
            "kernel_size": module.kernel_size, "stride": module.stride, "padding": module.padding,
            "dilation": module.dilation, "groups": module.groups,
            "bias": module.bias is not None, "padding_mode": module.padding_mode,
        }

    def _shape_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}")
        if self.padding != (0,) * self._nd:
            s += f", padding={self.padding}"
        if self.dilation != (1,) * self._nd:
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode}"
        return s


class BayesConv1d(_BayesConvNd):
    """Bayesian ``nn.Conv1d`` (same arguments, plus estimator/prior/init/bayesian_bias)."""

    _nd = 1
    _sign_trailing_dims = 1  # one Flipout sign per example per channel, shared over space
    _conv = staticmethod(F.conv1d)


class BayesConv2d(_BayesConvNd):
    """Bayesian ``nn.Conv2d`` (same arguments, plus estimator/prior/init/bayesian_bias)."""

    _nd = 2
    _sign_trailing_dims = 2  # one Flipout sign per example per channel, shared over space
    _conv = staticmethod(F.conv2d)


class BayesConv3d(_BayesConvNd):
    """Bayesian ``nn.Conv3d`` (same arguments, plus estimator/prior/init/bayesian_bias)."""

    _nd = 3
    _sign_trailing_dims = 3  # one Flipout sign per example per channel, shared over space
    _conv = staticmethod(F.conv3d)
