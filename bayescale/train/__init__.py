"""Training: the engine (single process or ``torch.distributed`` data-parallel), configs and
seed flag files, checkpoints, run directories and logs, KL/learning-rate schedules, and the
Ke & Fan sampling loop.
"""

from __future__ import annotations

from .checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_latest,
    save_checkpoint,
)
from .config import (
    Config,
    ConfigError,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
    shipped_configs,
)
from .distributed import (
    CollectiveError,
    DistEnv,
    detect_env,
)
from .engine import (
    TrainingDiverged,
    run_paths,
    train,
)
from .runs import (
    Run,
    build_model,
    load_run,
)

__all__ = [
    "train",
    "TrainingDiverged",
    "run_paths",
    "Config",
    "ConfigError",
    "load_config",
    "config_from_dict",
    "config_to_dict",
    "apply_overrides",
    "shipped_configs",
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "load_latest",
    "Run",
    "load_run",
    "build_model",
    "CollectiveError",
    "DistEnv",
    "detect_env",
]
