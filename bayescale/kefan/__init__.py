"""Ke & Fan, *On the optimization and pruning for Bayesian deep learning*: the adaptive SGHMC
optimizer with a spike-and-slab group prior (MCMC-within-EM) and the weight groups it prunes.
"""

from __future__ import annotations

from .groups import (
    GROUPINGS,
    group_snr,
    group_view,
    spike_slab_estep,
)
from .optimizer import (
    GROUP_POLICIES,
    PRESETS,
    TEMPERATURES,
    SGHMCSpikeSlab,
    layer_sparsity,
    posterior_temperature,
    resolve_hparams,
    sparsity,
    untempered_temperature,
)

__all__ = [
    "SGHMCSpikeSlab",
    "PRESETS",
    "GROUP_POLICIES",
    "TEMPERATURES",
    "resolve_hparams",
    "untempered_temperature",
    "posterior_temperature",
    "sparsity",
    "layer_sparsity",
    "GROUPINGS",
    "group_view",
    "group_snr",
    "spike_slab_estep",
]
