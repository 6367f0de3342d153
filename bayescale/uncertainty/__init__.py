"""Uncertainty: Monte Carlo prediction from the weight posterior, the aleatoric/epistemic
decomposition, metrics (calibration, OOD detection), evaluation summaries, plots and the HTML
run report (Depeweg et al. 2018, arXiv:1710.07283; Kendall & Gal 2017, arXiv:1703.04977).
"""

from __future__ import annotations

from .predict import (
    DEFAULT_NUM_SAMPLES,
    TASKS,
    RegressionPrediction,
    decompose,
    decompose_regression,
    expected_entropy,
    mc_predict,
    mutual_information,
    predictive_entropy,
    predictive_variance,
    timed_mc_predict,
)
from .report import (
    report_path,
    write_report,
)
from .summary import (
    EVAL_DIR,
    PREDICTION_KEYS,
    load_predictions,
    summarize,
)

__all__ = [
    "DEFAULT_NUM_SAMPLES",
    "TASKS",
    "RegressionPrediction",
    "mc_predict",
    "timed_mc_predict",
    "decompose",
    "decompose_regression",
    "predictive_entropy",
    "expected_entropy",
    "mutual_information",
    "predictive_variance",
    "EVAL_DIR",
    "PREDICTION_KEYS",
    "load_predictions",
    "summarize",
    "write_report",
    "report_path",
]
