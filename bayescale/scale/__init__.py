"""Scaling: the worker-count study (time-to-train, speed-up), a performance model of
synchronous data-parallel training, and the benchmark helpers (provenance, interleaved timing).
"""

from __future__ import annotations

from .bench import (
    cpu_name,
    provenance,
    summary,
    time_interleaved,
    write_json,
)
from .perfmodel import (
    Cluster,
    Interconnect,
    Workload,
    scaling_table,
    step_time,
)
from .study import (
    collect,
    parse_workers,
    plot_study,
    run_study,
    write_batch_scripts,
)

__all__ = [
    "run_study",
    "collect",
    "plot_study",
    "write_batch_scripts",
    "parse_workers",
    "Cluster",
    "Interconnect",
    "Workload",
    "step_time",
    "scaling_table",
    "provenance",
    "time_interleaved",
    "summary",
    "write_json",
    "cpu_name",
]
