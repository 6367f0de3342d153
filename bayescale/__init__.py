"""bayescale: Bayesian neural networks at scale on PyTorch.

One subpackage per part of the system; each imports only the parts above it in this list:

* :mod:`bayescale.nn` - mean-field layers (reparameterization, Flipout, local reparameterization),
  priors, ``bayesianize`` for any ``nn.Module``, sampling control and the one ELBO convention;
* :mod:`bayescale.data` - data set catalogue, verified downloads, readers, shipped sets, loader;
* :mod:`bayescale.models` - the model zoo (one definition per architecture) and its registry;
* :mod:`bayescale.uncertainty` - MC prediction, aleatoric/epistemic split, metrics, plots, report;
* :mod:`bayescale.kefan` - Ke & Fan's adaptive SGHMC optimizer and spike-and-slab weight groups;
* :mod:`bayescale.ivon` - IVON, natural-gradient variational learning of plain networks;
* :mod:`bayescale.train` - the training engine, configs, checkpoints, ``torch.distributed``, runs;
* :mod:`bayescale.pruning` - BPrune (SNR), structured compaction, graph pruning, export;
* :mod:`bayescale.scale` - the worker-count scaling study, performance model, benchmark helpers;

then :mod:`bayescale.evaluate` (evaluate/predict a trained run), :mod:`bayescale.quickstart` and
:mod:`bayescale.cli`. The names below are the public API.
"""

from __future__ import annotations

from .evaluate import evaluate_run, predict_run
from .ivon.optimizer import IVON
from .kefan.optimizer import SGHMCSpikeSlab
from .models import count_parameters, get_model, list_models, register_model
from .nn.conv import BayesConv1d, BayesConv2d, BayesConv3d
from .nn.convert import DEFAULT_MAPPING, bayesianize
from .nn.elbo import (
    ELBOTerms,
    elbo_loss,
    elbo_terms,
    kl_divergence,
    kl_weight_blundell,
    kl_weight_linear,
)
from .nn.layers import ESTIMATORS, BayesianLayer
from .nn.linear import BayesLinear
from .nn.posterior import ParamPosterior
from .nn.priors import (
    INIT_PRESETS,
    GaussianPrior,
    PosteriorInit,
    Prior,
    ScaleMixturePrior,
    moped,
)
from .nn.sampling import bayesian_layers, fixed_sample, mean_weights
from .pruning.bprune import (
    apply_masks,
    bprune_table,
    masks_from_scores,
    prune,
    remove_masks,
    snr_scores,
)
from .pruning.compact import posterior_mean_model, structured_prune
from .pruning.export import export_onnx, export_torchscript
from .quickstart import run_pipeline
from .train.distributed import CollectiveError
from .train.runs import load_run
from .uncertainty.predict import (
    RegressionPrediction,
    decompose,
    mc_predict,
    mutual_information,
    predictive_entropy,
    timed_mc_predict,
)
from .uncertainty.report import write_report

__version__ = "0.1.0"

__all__ = [
    # layers
    "BayesianLayer",
    "BayesLinear",
    "BayesConv1d",
    "BayesConv2d",
    "BayesConv3d",
    "ESTIMATORS",
    # priors and posterior initialisation
    "Prior",
    "GaussianPrior",
    "ScaleMixturePrior",
    "PosteriorInit",
    "INIT_PRESETS",
    "moped",
    # conversion
    "bayesianize",
    "DEFAULT_MAPPING",
    # objective
    "kl_divergence",
    "elbo_loss",
    "elbo_terms",
    "ELBOTerms",
    "kl_weight_linear",
    "kl_weight_blundell",
    # sampling control
    "mean_weights",
    "fixed_sample",
    "bayesian_layers",
    # prediction
    "mc_predict",
    "timed_mc_predict",
    "RegressionPrediction",
    "decompose",
    "predictive_entropy",
    "mutual_information",
    # evaluation and reports
    "evaluate_run",
    "predict_run",
    "write_report",
    "run_pipeline",
    "load_run",
    # pruning, compaction, deployment
    "snr_scores",
    "masks_from_scores",
    "apply_masks",
    "remove_masks",
    "prune",
    "bprune_table",
    "structured_prune",
    "posterior_mean_model",
    "export_torchscript",
    "export_onnx",
    # the Ke & Fan optimizer
    "SGHMCSpikeSlab",
    # IVON and the posterior it exports
    "IVON",
    "ParamPosterior",
    # model zoo
    "get_model",
    "list_models",
    "register_model",
    "count_parameters",
    # training faults
    "CollectiveError",
]
