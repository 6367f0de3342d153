"""Open what ``bayescale train`` wrote: the model, its config and its data, for evaluation,
prediction, pruning and reports.

    run = bayescale.train.runs.load_run("runs/BNN_conv_flip-mnist")   # or ".../checkpoint.pt"
    probs = bayescale.mc_predict(run.model, run.data().test.x[:512], 100)

The model is rebuilt from the run's ``config.yaml`` (or the checkpoint's copy of it) and its
weights are loaded with ``weights_only=True``; ``model.pt`` (the final weights) is preferred over
``checkpoint.pt``. Nothing is ever written here.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from ..data.datasets import TensorSplit
from ..models import get_model, model_spec
from ..nn.posterior import ParamPosterior
from ..nn.priors import GaussianPrior
from .checkpoint import CheckpointError, load_checkpoint
from .config import Config, config_from_dict

__all__ = ["Run", "load_run", "build_model"]


def build_model(cfg: Config, num_classes: int | None = None) -> nn.Module:
    """The (untrained) model a config describes, exactly as :func:`bayescale.train` builds it."""
    m = cfg.model
    extra: dict[str, Any] = {}
    if m.dropout:
        if "dropout" not in inspect.signature(model_spec(m.name).builder).parameters:
            raise ValueError(f"model.dropout applies to the seed models (BNN_*, CNN_*, "
                             f"CIFAR10_BNN_model), not {m.name!r}; set model.dropout=0")
        extra["dropout"] = m.dropout
    return get_model(m.name, bayesian=m.bayesian, estimator=m.estimator, init=m.init,
                     layers=m.bayesian_layers, prior=GaussianPrior(0.0, m.prior_std),
                     num_classes=num_classes or 10, **extra)


@dataclass
class Run:
    """A trained run: ``model`` (eval mode, on CPU unless asked), ``config``, where it lives."""

    model: nn.Module
    config: Config
    run_dir: Path
    weights: Path
    step: int | None = None
    _data: TensorSplit | None = field(default=None, repr=False)
    posterior: ParamPosterior | None = field(default=None, repr=False)  # IVON runs

    def data(self) -> TensorSplit:
        """The run's data set (loaded on first use, with the run's ``data.*`` settings)."""
        if self._data is None:
            from .builders import load_data

            self._data = load_data(self.config, model_spec(self.config.model.name).input_shape)
        return self._data


def _find(path: Path) -> tuple[Path, Path]:
    """(run directory, weights file) for a run directory, model.pt or checkpoint.pt."""
    if path.is_dir():
        for name in ("model.pt", "checkpoint.pt"):
            if (path / name).is_file():
                return path, path / name
        raise CheckpointError(f"{str(path)!r} holds no model.pt or checkpoint.pt; pass a run "
                              "directory written by `bayescale train` (or a .pt file in one)")
    if path.is_file():
        return path.parent, path
    raise CheckpointError(f"no run or checkpoint at {str(path)!r}; check the path (runs are "
                          "written under output.dir, default runs/)")


def load_run(path: str | Path, map_location: str | torch.device = "cpu",
             num_classes: int | None = None) -> Run:
    """Rebuild the model of a run directory (or a ``model.pt``/``checkpoint.pt`` inside one).

    Raises:
        CheckpointError: nothing loadable there, a corrupt file, or weights that do not fit the
            model the config describes.
    """
    run_dir, weights = _find(Path(path))
    cfg_file = run_dir / "config.yaml"
    state: dict[str, Any]
    step = None
    if weights.name == "model.pt":
        try:
            state = torch.load(weights, map_location=map_location, weights_only=True)
        except Exception as err:
            raise CheckpointError(f"{str(weights)!r} is unreadable ({type(err).__name__}: {err});"
                                  " it is corrupt - use checkpoint.pt from the same run") from err
        if not cfg_file.is_file():
            raise CheckpointError(f"{str(weights)!r} has no config.yaml beside it; the model "
                                  "cannot be rebuilt without the run's config")
        cfg_dict = yaml.safe_load(cfg_file.read_text())
    else:
        ckpt = load_checkpoint(weights, map_location)
        state, cfg_dict, step = ckpt["model"], ckpt["config"], ckpt.get("step")
    cfg = config_from_dict(cfg_dict)
    if num_classes is None:  # the classifier's width is the last bias/weight in the state
        last = [v for k, v in state.items() if k.endswith(("bias", "bias_mu"))]
        num_classes = int(last[-1].shape[0]) if last else None
    model = build_model(cfg, num_classes)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(f"the weights in {str(weights)!r} do not fit model "
                              f"{cfg.model.name!r} of its config: {err}") from err
    model.to(map_location).eval()
    posterior = None
    if weights.name == "model.pt":  # an IVON run's N(m, sigma^2), saved beside the final mean
        from .ivon import load_posterior

        posterior = load_posterior(run_dir, model)
    return Run(model=model, config=cfg, run_dir=run_dir, weights=weights, step=step,
               posterior=posterior)
