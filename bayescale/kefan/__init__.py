"""Ke & Fan, *On the optimization and pruning for Bayesian deep learning*: the adaptive SGHMC
optimizer with a spike-and-slab group prior (MCMC-within-EM) and the weight groups it prunes.
"""

from __future__ import annotations

from .groups import (
    GROUPINGS,
    group_snr,
    group_view,
    noise_floor_threshold,
    spike_slab_estep,
)
from .optimizer import (
    DEFAULT_PRESET,
    GROUP_POLICIES,
    PRESETS,
    TEMPERATURES,
    SGHMCSpikeSlab,
    layer_sparsity,
    posterior_temperature,
    resolve_hparams,
    schedule_hparams,
    sparsity,
    untempered_temperature,
)
from .stability import inclusion_frequency, support_report, support_stability

__all__ = [
    "SGHMCSpikeSlab",
    "PRESETS",
    "DEFAULT_PRESET",
    "schedule_hparams",
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
    "noise_floor_threshold",
    "inclusion_frequency",
    "support_stability",
    "support_report",
]
