"""Bayesian building blocks: mean-field layers, priors, ``bayesianize``, sampling control and
the ELBO (Blundell et al. 2015, arXiv:1505.05424; Wen et al. 2018, arXiv:1803.04386 for Flipout).
"""

from __future__ import annotations

from .conv import (
    BayesConv1d,
    BayesConv2d,
    BayesConv3d,
)
from .convert import (
    DEFAULT_MAPPING,
    bayesianize,
)
from .elbo import (
    LIKELIHOODS,
    ELBOTerms,
    elbo_loss,
    elbo_terms,
    kl_divergence,
    kl_weight_blundell,
    kl_weight_linear,
)
from .layers import (
    ESTIMATORS,
    BayesianLayer,
)
from .linear import BayesLinear
from .posterior import ParamPosterior
from .priors import (
    INIT_PRESETS,
    GaussianPrior,
    PosteriorInit,
    Prior,
    ScaleMixturePrior,
    moped,
    resolve_init,
    resolve_prior,
    softplus_inverse,
)
from .sampling import (
    bayesian_layers,
    draws,
    fixed_sample,
    mean_weights,
)

__all__ = [
    "Prior",
    "GaussianPrior",
    "ScaleMixturePrior",
    "PosteriorInit",
    "INIT_PRESETS",
    "moped",
    "resolve_prior",
    "resolve_init",
    "softplus_inverse",
    "ESTIMATORS",
    "BayesianLayer",
    "BayesLinear",
    "BayesConv1d",
    "BayesConv2d",
    "BayesConv3d",
    "DEFAULT_MAPPING",
    "bayesianize",
    "bayesian_layers",
    "draws",
    "mean_weights",
    "fixed_sample",
    "ParamPosterior",
    "LIKELIHOODS",
    "ELBOTerms",
    "kl_divergence",
    "elbo_terms",
    "elbo_loss",
    "kl_weight_linear",
    "kl_weight_blundell",
]
