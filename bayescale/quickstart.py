"""The main job: ``bayescale quickstart`` runs the whole pipeline on data shipped in the package.

:func:`run_pipeline` trains the seed's ``BNN_conv_flip`` (shipped config ``quickstart``) on the
real MNIST subset ``mnist-small``, evaluates it with T Monte Carlo weight draws and the real
Fashion-MNIST subset ``fashion-mnist-small`` as the out-of-distribution set
(:func:`bayescale.evaluate.evaluate_run`), and writes the HTML report
(:func:`bayescale.uncertainty.report.write_report`): train -> evaluate with uncertainty -> report,
a few minutes on 2 CPU cores, every stage through the same library functions as the CLI.

:func:`run_digits` is the earlier, smaller example (``bayescale quickstart --digits``): a Bayesian
CNN on scikit-learn's 8x8 digits written directly against the layers, the ELBO and
``mc_predict``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .data.catalogue import load_digits_dataset
from .data.loader import TensorLoader
from .nn.convert import bayesianize
from .nn.elbo import elbo_terms
from .nn.sampling import mean_weights
from .uncertainty.metrics import accuracy, nll
from .uncertainty.predict import mc_predict

__all__ = ["run_pipeline", "digits_net", "run_digits"]


def run_pipeline(*, config: str = "quickstart", overrides: Sequence[str] = (),
                 epochs: float | None = None, num_samples: int | str = "auto",
                 ood: str | None = "fashion-mnist-small", out_dir: str | Path = "runs",
                 seed: int = 0, progress: bool = True, log: Any = print) -> dict[str, Any]:
    """Train, evaluate with uncertainty (and an OOD set), and write the report of one run.

    Args:
        config: a shipped config name or YAML file (default ``quickstart``: ``BNN_conv_flip``
            on ``mnist-small``, 3 epochs).
        overrides: dotted config overrides, e.g. ``["optim.lr=3e-3"]``.
        epochs: training epochs (default: the config's).
        num_samples: MC weight draws T of the evaluation, or ``"auto"`` (default): draw until
            the predictive has converged (MC standard error below 5e-3, at most 300 draws).
        ood: the out-of-distribution data set (None: skip OOD detection).
        out_dir: parent of the run directory (a new one is made per run).
        seed: training seed (``train.seed``); the MC draws use seed 0.
        progress: progress bars.
        log: where the stage messages go (``print``; ``None`` for silence).

    Returns:
        ``{"run_dir", "report", "metrics" (as in eval/metrics.json), "train" (train's summary),
        "seconds": {"train", "evaluate", "report", "total"}}``; on ranks other than 0 of a
        data-parallel launch only ``"run_dir"`` and ``"train"`` (rank 0 evaluates and writes).
    """
    from .evaluate import evaluate_run
    from .train.config import load_config
    from .train.engine import train
    from .uncertainty.report import write_report

    say = log or (lambda *a, **k: None)
    extra = [f"output.dir={out_dir}", f"train.seed={seed}", f"train.progress={progress}"]
    cfg = load_config(config, [*overrides, *extra,
                               *([f"train.epochs={epochs}"] if epochs is not None else [])])
    t0 = time.perf_counter()
    say(f"[1/3] training {cfg.model.name} on {cfg.data.name} ({cfg.train.epochs:g} epochs)")
    result = train(cfg)
    t1 = time.perf_counter()
    out: dict[str, Any] = {"run_dir": result["run_dir"], "train": result}
    if result["rank"] != 0:
        return out
    say("[2/3] evaluating with " + ("MC weight draws until the predictive converges"
                                    if num_samples == "auto" else f"{num_samples} MC weight draws")
        + (f", out-of-distribution set {ood}" if ood else ""))
    metrics = evaluate_run(result["run_dir"], num_samples, ood=ood, progress=progress)
    t2 = time.perf_counter()
    say("[3/3] writing the report")
    report = write_report(result["run_dir"])
    t3 = time.perf_counter()
    out.update(report=str(report), metrics=metrics,
               seconds={"train": t1 - t0, "evaluate": t2 - t1, "report": t3 - t2,
                        "total": t3 - t0})
    return out


def digits_net(num_classes: int = 10) -> nn.Module:
    """A small deterministic CNN for 1x8x8 inputs (made Bayesian by ``bayesianize``)."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, num_classes),
    )


def run_digits(
    *, epochs: int = 40, estimator: str = "flipout", batch_size: int = 64, lr: float = 3e-3,
    num_samples: int = 100, seed: int = 0, progress: bool = True,
) -> dict[str, float]:
    """Train a Bayesian CNN on digits with the ELBO; return test metrics from MC prediction.

    Returns:
        A dict with test accuracy and NLL (MC-averaged probabilities over ``num_samples``
        draws), the accuracy of the posterior-mean network, the final KL and the wall time.
    """
    torch.manual_seed(seed)
    data = load_digits_dataset(seed=seed)
    train, test = data.train, data.test
    model = bayesianize(digits_net(), estimator=estimator)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loader = TensorLoader(train.x, train.y, batch_size, shuffle=True, seed=seed)
    num_train = len(train)
    start = time.perf_counter()
    bar = tqdm(range(epochs), desc=f"digits BNN ({estimator})", disable=not progress)
    for epoch in bar:
        loader.set_epoch(epoch)
        for xb, yb in loader:
            terms = elbo_terms(model(xb), yb, model, num_train)
            opt.zero_grad(set_to_none=True)
            terms.loss.backward()
            opt.step()
        bar.set_postfix(loss=f"{terms.loss.item():.3f}", nll=f"{terms.nll.item():.3f}")
    probs = mc_predict(model, test.x, num_samples)
    with torch.no_grad(), mean_weights(model):
        mean_probs = torch.softmax(model(test.x), -1)
    return {
        "test_accuracy": accuracy(probs, test.y),
        "test_nll": nll(probs, test.y),
        "mean_weights_accuracy": accuracy(mean_probs, test.y),
        "kl": terms.kl.detach().item(),
        "num_train": num_train,
        "num_test": len(test),
        "mc_samples": num_samples,
        "epochs": epochs,
        "train_seconds": time.perf_counter() - start,
    }
