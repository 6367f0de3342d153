"""A Gaussian mean-field posterior over a plain module's own parameters, N(mean, std²).

Optimizers that learn a posterior over ordinary weights (IVON, Shen et al. 2024,
arXiv:2402.17641) keep the mean in the module's parameters and the standard deviation in their
state. :class:`ParamPosterior` is that posterior on its own, framework-neutral: it holds
references to the parameters plus one ``mean`` and one ``std`` tensor per parameter, draws a
weight sample in place for a forward pass and puts the mean back afterwards. Prediction
(``mc_predict(..., posterior=...)``), pruning by SNR (|m|/σ) and the run directory use it
without the optimizer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import torch
from torch import nn

__all__ = ["ParamPosterior"]


class ParamPosterior:
    """N(mean, std²) per parameter, sampled in place into the parameters it describes.

    Args:
        params: the parameters (a module's ``nn.Parameter`` objects, in a fixed order).
        mean: one tensor per parameter, the posterior mean m (same shape).
        std: one tensor per parameter, the posterior standard deviation σ > 0 (same shape).
        names: optional parameter names (``module.named_parameters()`` order), kept for
            pruning and reports.

    The tensors are copied and detached, so later optimizer steps do not change an exported
    posterior. Parameters may live on different devices and dtypes; each draw is made on the
    parameter's own device and dtype.
    """

    def __init__(self, params: Iterable[torch.Tensor], mean: Sequence[torch.Tensor],
                 std: Sequence[torch.Tensor], names: Sequence[str] | None = None) -> None:
        self.params = list(params)
        if not (len(self.params) == len(mean) == len(std)):
            raise ValueError(f"ParamPosterior: {len(self.params)} parameters but {len(mean)} "
                             f"means and {len(std)} standard deviations")
        for i, (p, m, s) in enumerate(zip(self.params, mean, std, strict=True)):
            if m.shape != p.shape or s.shape != p.shape:
                raise ValueError(f"ParamPosterior: parameter {i} has shape {tuple(p.shape)} but "
                                 f"mean {tuple(m.shape)} and std {tuple(s.shape)}")
        self.mean = [m.detach().clone() for m in mean]
        self.std = [s.detach().clone() for s in std]
        self.names = list(names) if names is not None else [f"param{i}"
                                                           for i in range(len(self.params))]
        if len(self.names) != len(self.params):
            raise ValueError(f"ParamPosterior: {len(self.names)} names for "
                             f"{len(self.params)} parameters")

    @classmethod
    def from_module(cls, module: nn.Module, std: Sequence[torch.Tensor] | float) -> ParamPosterior:
        """The posterior with mean = the module's current trainable parameters.

        Args:
            module: the plain module; its ``requires_grad`` parameters, in
                ``named_parameters()`` order, are the ones described.
            std: one σ tensor per such parameter, or one float for all.
        """
        named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        stds = ([torch.full_like(p, float(std)) for _, p in named]
                if isinstance(std, (int, float)) else list(std))
        return cls([p for _, p in named], [p.data for _, p in named], stds,
                   names=[n for n, _ in named])

    def __len__(self) -> int:
        return len(self.params)

    @contextlib.contextmanager
    def sample(self, generator: torch.Generator | None = None) -> Iterator[None]:
        """Write one draw θ = m + σ·ε, ε ~ N(0, I), into the parameters for the ``with`` body.

        On exit (also on an exception) the parameters hold exactly their values from before the
        ``with``. With a ``generator``, the noise is drawn from it (on its device; each draw is
        then moved to the parameter's device), so a seeded generator gives reproducible draws.
        """
        saved = [p.detach().clone() for p in self.params]
        try:
            with torch.no_grad():
                for p, m, s in zip(self.params, self.mean, self.std, strict=True):
                    dtype = torch.promote_types(p.dtype, torch.float32)  # bf16 draws in fp32
                    eps = _randn(p.shape, generator, p.device, dtype)
                    p.copy_((m.to(p.device, dtype) + s.to(p.device, dtype) * eps).to(p.dtype))
            yield
        finally:
            with torch.no_grad():
                for p, old in zip(self.params, saved, strict=True):
                    p.copy_(old)

    @contextlib.contextmanager
    def mean_params(self) -> Iterator[None]:
        """Write the posterior mean into the parameters for the ``with`` body, then restore."""
        saved = [p.detach().clone() for p in self.params]
        try:
            with torch.no_grad():
                for p, m in zip(self.params, self.mean, strict=True):
                    p.copy_(m.to(p.device, p.dtype))
            yield
        finally:
            with torch.no_grad():
                for p, old in zip(self.params, saved, strict=True):
                    p.copy_(old)

    def snr(self) -> list[torch.Tensor]:
        """Signal-to-noise ratio |m|/σ per parameter (BPrune's pruning score)."""
        return [m.abs() / s for m, s in zip(self.mean, self.std, strict=True)]

    def named_snr(self) -> dict[str, torch.Tensor]:
        """:meth:`snr` keyed by parameter name."""
        return dict(zip(self.names, self.snr(), strict=True))

    def state_dict(self) -> dict[str, object]:
        """Tensors and names only, loadable with ``torch.load(weights_only=True)``."""
        return {"names": list(self.names), "mean": [m.cpu() for m in self.mean],
                "std": [s.cpu() for s in self.std]}

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Restore mean and std saved by :meth:`state_dict` (shapes and count must match)."""
        mean, std = list(state["mean"]), list(state["std"])  # type: ignore[call-overload]
        if len(mean) != len(self.params) or len(std) != len(self.params):
            raise ValueError(f"ParamPosterior: the saved posterior has {len(mean)} parameters, "
                             f"this one {len(self.params)}")
        for i, (p, m, s) in enumerate(zip(self.params, mean, std, strict=True)):
            if m.shape != p.shape or s.shape != p.shape:
                raise ValueError(f"ParamPosterior: saved parameter {i} has shape "
                                 f"{tuple(m.shape)}, the module's {tuple(p.shape)}")
        self.mean = [m.to(p.device).clone() for m, p in zip(mean, self.params, strict=True)]
        self.std = [s.to(p.device).clone() for s, p in zip(std, self.params, strict=True)]
        if "names" in state:
            self.names = list(state["names"])  # type: ignore[call-overload]

    def save(self, path: str | Path) -> None:
        """Write :meth:`state_dict` to ``path`` with ``torch.save``."""
        torch.save(self.state_dict(), Path(path))

    @classmethod
    def load(cls, path: str | Path, module: nn.Module) -> ParamPosterior:
        """Read a posterior saved by :meth:`save` back onto ``module``'s trainable parameters.

        The file is read with ``torch.load(weights_only=True)``: tensors, lists and strings only.
        """
        state = torch.load(Path(path), map_location="cpu", weights_only=True)
        out = cls.from_module(module, 1.0)
        out.load_state_dict(state)
        return out


def _randn(shape: torch.Size, generator: torch.Generator | None, device: torch.device,
           dtype: torch.dtype) -> torch.Tensor:
    """Standard normal noise of ``shape`` and ``dtype`` on ``device`` (from ``generator``)."""
    if generator is None:
        return torch.randn(shape, device=device, dtype=dtype)
    eps = torch.randn(shape, generator=generator, device=generator.device, dtype=dtype)
    return eps.to(device)
