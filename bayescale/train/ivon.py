"""An IVON run (``optim.name=ivon`` in ``bayescale train``): the training glue the engine calls.

* :func:`check_model` refuses a model with Bayesian layers (IVON already learns a Gaussian
  posterior over the plain weights; a second one in the layers would double it);
* :func:`build_ivon` turns the ``ivon`` config section into a :class:`bayescale.IVON`, with
  ``ess`` defaulting to the training-set size (the loss is the mean over the batch) and the
  Hessian estimate all-reduced under data-parallel training;
* :func:`draws` is what the loop runs each forward and backward pass in: ``mc_samples`` posterior
  draws per step, each rank with its own noise (seed + rank), so W workers give W·mc_samples
  Monte Carlo samples per step while m and h stay identical;
* :func:`save_posterior` / :func:`load_posterior`: ``RUN/posterior.pt``, the exported N(m, σ²)
  that ``bayescale evaluate`` and pruning draw from (read with ``weights_only=True``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from ..ivon.optimizer import IVON
from ..nn.posterior import ParamPosterior
from ..nn.sampling import bayesian_layers
from .config import IVONConfig

__all__ = ["POSTERIOR_FILE", "check_model", "build_ivon", "draws",
           "save_posterior", "load_posterior"]

POSTERIOR_FILE = "posterior.pt"


def check_model(model: nn.Module, name: str = "this model") -> None:
    """IVON learns the posterior of a deterministic network; refuse Bayesian layers."""
    if bayesian_layers(model):
        raise ValueError(f"optim.name=ivon learns a Gaussian posterior over the weights of a "
                         f"deterministic network; {name} has Bayesian layers, so its posterior "
                         "would be doubled: use its deterministic twin (model.bayesian=false, "
                         "e.g. model.name=CNN_conv) or another optimizer")


def build_ivon(params: Iterable[nn.Parameter], lr: float, cfg: IVONConfig, num_train: int,
               distributed: bool) -> IVON:
    """The optimizer of the ``ivon`` section; ``ess`` = ``num_train`` unless set."""
    return IVON(params, lr=lr, ess=float(cfg.ess if cfg.ess is not None else num_train),
                hess_init=cfg.hess_init, beta1=cfg.beta1, beta2=cfg.beta2,
                weight_decay=cfg.weight_decay, mc_samples=cfg.mc_samples,
                clip_radius=cfg.clip_radius, rescale_lr=cfg.rescale_lr, distributed=distributed)


def draws(opt: torch.optim.Optimizer, layer_draws: int = 1
          ) -> list[contextlib.AbstractContextManager[None]]:
    """The contexts of one step's forward/backward passes: ``mc_samples`` IVON draws, or
    ``layer_draws`` no-ops for the other optimizers (each forward then draws the Bayesian
    layers' own noise: ``train.mc_samples``). Scale each pass's loss by 1/len(...)."""
    if isinstance(opt, IVON):
        return [opt.sampled_params(train=True) for _ in range(opt.mc_samples)]
    return [contextlib.nullcontext() for _ in range(layer_draws)]


def save_posterior(opt: IVON, model: nn.Module, run_dir: Path) -> Path:
    """Write the exported posterior (mean + σ, names) to ``run_dir/posterior.pt``."""
    path = Path(run_dir) / POSTERIOR_FILE
    opt.posterior(model).save(path)
    return path


def load_posterior(run_dir: Path, model: nn.Module) -> ParamPosterior | None:
    """The posterior an IVON run saved, bound to ``model``'s parameters (None if none)."""
    path = Path(run_dir) / POSTERIOR_FILE
    if not path.is_file():
        return None
    return ParamPosterior.load(path, model)
