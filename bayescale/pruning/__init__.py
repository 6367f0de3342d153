"""Pruning: BPrune by the signal-to-noise ratio |mu|/sigma (Sharma & Jennings), structured
compaction into a smaller dense network, dependency-graph pruning, and export for deployment.
"""

from __future__ import annotations

from .bprune import (
    CRITERIA,
    MODES,
    SCOPES,
    apply_masks,
    bprune_nonzeros,
    bprune_table,
    finetune,
    get_masks,
    magnitude_scores,
    masks_from_scores,
    percent_pruned,
    prunable_layers,
    prune,
    prune_run,
    pruned_fraction,
    remove_masks,
    snr_scores,
    sparsity_masks,
    threshold_masks,
    write_table_csv,
)
from .compact import (
    CompactionPlan,
    compaction_plan,
    mask_units,
    posterior_mean_model,
    structured_prune,
    unit_masks,
    unit_scores,
)
from .export import (
    SampledLayer,
    check_onnx,
    export_onnx,
    export_torchscript,
    sampling_model,
)

__all__ = [
    "MODES",
    "SCOPES",
    "CRITERIA",
    "prunable_layers",
    "snr_scores",
    "magnitude_scores",
    "threshold_masks",
    "sparsity_masks",
    "masks_from_scores",
    "apply_masks",
    "remove_masks",
    "get_masks",
    "pruned_fraction",
    "bprune_nonzeros",
    "percent_pruned",
    "prune",
    "bprune_table",
    "write_table_csv",
    "prune_run",
    "finetune",
    "CompactionPlan",
    "unit_scores",
    "unit_masks",
    "mask_units",
    "compaction_plan",
    "structured_prune",
    "posterior_mean_model",
    "SampledLayer",
    "sampling_model",
    "export_torchscript",
    "export_onnx",
    "check_onnx",
]
