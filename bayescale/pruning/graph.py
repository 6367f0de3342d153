"""Structured pruning of networks with skip connections through a dependency graph.

Residual networks couple channels across layers (a block's output channels, its shortcut's and
the next block's inputs and BatchNorms must go together). Rather than hand-writing that logic,
this module lets Torch-Pruning (Fang et al., "DepGraph: Towards any structural pruning", CVPR
2023, arXiv:2301.12900) find the coupled groups, with a custom pruner for bayescale's layers
(mu, rho, mask and bias sliced together) and a group-SNR importance:

    small = graph_prune(bnn, x[:1], sparsity=0.5)        # e.g. resnet18_tfp, 50% of channels
    small, masked = graph_prune(bnn, x[:1], sparsity=0.5, return_masked=True)

``return_masked`` also gives the full-size network with the same channels removed by zeroing
(Bayesian: weight mask and bias; BatchNorm: gamma and beta), which computes the same function as
the compacted one: the test of exactness. Torch-Pruning is the optional ``prune`` extra
(``pip install 'bayescale[prune]'``). Chains without skips need none of this:
:func:`bayescale.pruning.compact.structured_prune`.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from ..kefan.groups import expand_group_mask, group_snr
from ..nn.layers import BayesianLayer
from ..nn.linear import BayesLinear
from ..nn.sampling import mean_weights

__all__ = ["graph_prune", "bayes_pruners"]


def _tp() -> Any:
    try:
        import torch_pruning
    except ImportError as err:
        raise ImportError("pruning networks with skip connections needs Torch-Pruning: "
                          "pip install 'bayescale[prune]' (torch-pruning)") from err
    return torch_pruning


def _slice_bayes(layer: BayesianLayer, idxs: list[int], dim: int) -> BayesianLayer:
    n = layer.weight_mu.shape[dim]
    keep = torch.tensor(sorted(set(range(n)) - {int(i) for i in idxs}),
                        device=layer.weight_mu.device)
    for name in ("weight_mu", "weight_rho") + (("bias", "bias_mu", "bias_rho") if dim == 0
                                               else ()):
        p = layer._parameters.get(name)
        if p is not None:
            setattr(layer, name, nn.Parameter(p.detach().index_select(dim, keep).clone(),
                                              requires_grad=p.requires_grad))
    if layer._masked:
        layer.set_weight_mask(layer.weight_mask.index_select(dim, keep).clone())
    rows, cols = layer.weight_mu.shape[:2]
    if isinstance(layer, BayesLinear):
        layer.out_features, layer.in_features = rows, cols
    else:
        layer.out_channels, layer.in_channels = rows, cols
    return layer


def bayes_pruners() -> dict[type, Any]:
    """Torch-Pruning ``customized_pruners`` for every bayescale layer class."""
    tp = _tp()

    class BayesPruner(tp.pruner.function.BasePruningFunc):
        TARGET_MODULES = (BayesianLayer,)

        def prune_out_channels(self, layer: nn.Module, idxs: list[int]) -> nn.Module:
            return _slice_bayes(layer, idxs, 0)

        def prune_in_channels(self, layer: nn.Module, idxs: list[int]) -> nn.Module:
            return _slice_bayes(layer, idxs, 1)

        def get_out_channels(self, layer: nn.Module) -> int:
            return layer.weight_mu.shape[0]

        def get_in_channels(self, layer: nn.Module) -> int:
            return layer.weight_mu.shape[1]

    pruner = BayesPruner()
    from ..nn.conv import BayesConv1d, BayesConv2d, BayesConv3d

    return {cls: pruner for cls in (BayesLinear, BayesConv1d, BayesConv2d, BayesConv3d)}


def _is_out(dep: Any, tp: Any) -> bool:
    return getattr(dep.handler, "__name__", "") == "prune_out_channels"


def _importance(tp: Any):
    """Group SNR^2 summed over the coupled Bayesian layers (else the squared L2 norm)."""

    class SNRImportance(tp.importance.Importance):
        @torch.no_grad()
        def __call__(self, group: Any) -> Tensor:
            snr, norm = None, None
            for dep, idxs in group:
                m = dep.target.module
                if not _is_out(dep, tp):
                    continue
                if isinstance(m, BayesianLayer):
                    mu = m.weight_mu * m.weight_mask if m._masked else m.weight_mu
                    s = group_snr(mu, m.weight_sigma, "out")[idxs].double() ** 2
                    snr = s if snr is None else snr + s
                elif isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)):
                    s = m.weight.detach().flatten(1)[idxs].double().pow(2).sum(1)
                    norm = s if norm is None else norm + s
            return snr if snr is not None else norm

    return SNRImportance()


@torch.no_grad()
def _zero(model: nn.Module, name: str, idxs: list[int]) -> None:
    """Remove output channels ``idxs`` of ``name`` by zeroing (the masked twin)."""
    m = model.get_submodule(name)
    keep = torch.ones(m.weight_mu.shape[0] if isinstance(m, BayesianLayer) else
                      m.weight.shape[0], dtype=torch.bool)
    keep[idxs] = False
    if isinstance(m, BayesianLayer):
        full = expand_group_mask(keep, m.weight_mu.shape, "out")
        m.set_weight_mask(full.clone() & (m.weight_mask if m._masked else True))
        bias = m.bias_mu if m.bayesian_bias else m.bias
    else:
        m.weight[~keep] = 0
        bias = m.bias
    if bias is not None:
        bias[~keep] = 0


def graph_prune(model: nn.Module, example_input: Tensor, *, sparsity: float,
                ignored_layers: list[str] | None = None, return_masked: bool = False
                ) -> nn.Module | tuple[nn.Module, nn.Module]:
    """Remove ``floor(sparsity * channels)`` channels of every coupled group, lowest SNR first.

    Args:
        model: any network Torch-Pruning can trace (e.g. ``resnet18_tfp``), plain or Bayesian.
        example_input: one input batch for tracing (run with posterior-mean weights).
        sparsity: fraction of channels per group to remove, in [0, 1).
        ignored_layers: names of layers whose outputs are kept (default: the last Linear).
        return_masked: also return the full-size network with those channels zeroed.

    Returns:
        The compacted copy (and the masked copy); ``model`` is untouched.
    """
    tp = _tp()
    if not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must be a fraction in [0, 1), got {sparsity!r}")
    small = copy.deepcopy(model).eval()
    masked = copy.deepcopy(model).eval() if return_masked else None
    names = {m: n for n, m in small.named_modules()}
    if ignored_layers is None:
        last = [m for m in small.modules() if isinstance(m, (nn.Linear, BayesLinear))][-1:]
    else:
        last = [small.get_submodule(n) for n in ignored_layers]
    pruners = bayes_pruners()
    with mean_weights(small):
        pruner = tp.pruner.MetaPruner(
            small, example_input[:1], importance=_importance(tp), pruning_ratio=sparsity,
            ignored_layers=last, customized_pruners=pruners,
            root_module_types=[nn.modules.conv._ConvNd, nn.Linear, *pruners])
        for group in pruner.step(interactive=True):
            if masked is not None:
                for dep, idxs in group:
                    m = dep.target.module
                    if not _is_out(dep, tp):
                        continue
                    if isinstance(m, (BayesianLayer, nn.Linear, nn.modules.conv._ConvNd)):
                        _zero(masked, names[m], list(idxs))
                    elif isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
                        bn = masked.get_submodule(names[m])
                        bn.weight.data[list(idxs)] = 0
                        bn.bias.data[list(idxs)] = 0
            group.prune()
    return (small, masked) if return_masked else small
