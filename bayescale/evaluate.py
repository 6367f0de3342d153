"""Evaluate and use a trained run: MC predictive metrics, uncertainty, OOD detection, predictions.

``evaluate_run`` (``bayescale evaluate``) draws T weight samples once for the test set (and an
out-of-distribution set), then computes everything from those samples with the pure functions of
:mod:`bayescale.uncertainty.metrics` and :mod:`bayescale.uncertainty`:

* accuracy, NLL, Brier, ECE of the MC-averaged probabilities; the mean single-sample accuracy and
  held-out log-likelihood ("held-out nats") of BPrune; MC inference time;
* per input: predictive entropy (total) = expected entropy (aleatoric) + mutual information
  (epistemic), Depeweg et al. 2018 (arXiv:1710.07283);
* with an OOD set: AUROC / AUPR / FPR95 with OOD as positive, scored by entropy and by mutual
  information (Hendrycks & Gimpel 2017, arXiv:1610.02136). A deterministic network has MI = 0 for
  every input, so its MI scores carry no information (AUROC 0.5).

It writes ``RUN/eval/metrics.json`` and ``RUN/eval/predictions.npz`` (the arrays every plot
needs; see :data:`PREDICTION_KEYS`), replacing only its own earlier outputs. ``predict_run``
(``bayescale predict``) writes one CSV row per input to a NEW file. Only rank 0 writes.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .data.datasets import Dataset
from .models import model_spec
from .nn.sampling import bayesian_layers
from .train.distributed import detect_env
from .train.runs import Run, load_run
from .uncertainty.summary import (
    EVAL_DIR,
    PREDICTION_KEYS,
    decompose_draws,
    first_index_per_class,
    load_predictions,
    mc_sample_probs,
    ood_summary,
    summarize,
)

__all__ = ["EvaluationError", "EVAL_DIR", "PREDICTION_KEYS", "evaluate_run", "predict_run",
           "load_inputs", "load_predictions", "mc_sample_probs", "summarize", "ood_summary",
           "decompose_draws", "first_index_per_class"]

class EvaluationError(ValueError):
    """Bad input to evaluate/predict (the message names the problem and the fix)."""


# ------------------------------------------------------------------------------ inputs
def _fit_shape(x: Tensor, input_shape: tuple[int, ...], where: str) -> Tensor:
    """``x`` as (N, *input_shape); also accepts (N, H, W) for one channel and flat (N, D)."""
    shape = tuple(input_shape)
    if tuple(x.shape[1:]) == shape:
        return x
    if tuple(x.shape) == shape:  # one example
        return x.unsqueeze(0)
    if shape[0] == 1 and tuple(x.shape[1:]) == shape[1:]:
        return x.unsqueeze(1)
    if x.dim() == 2 and x.shape[1] == math.prod(shape):
        return x.reshape(-1, *shape)
    flat = f", (N, {math.prod(shape)})" + (f", (N, {', '.join(map(str, shape[1:]))})"
                                           if shape[0] == 1 else "")
    raise EvaluationError(f"{where} has shape {tuple(x.shape)}, but the model takes "
                          f"(N, {', '.join(map(str, shape))}){flat}; reshape the inputs to match")


def load_inputs(path: str | Path, input_shape: tuple[int, ...]) -> Tensor:
    """Inputs from a ``.npy``, ``.npz`` (array ``x``, or its only array) or ``.pt`` file.

    uint8 arrays are scaled to [0, 1]; other numbers become float32. ``.pt`` files are read with
    ``weights_only=True`` (a tensor, or a dict holding ``"x"``); ``.np*`` without pickles.

    Raises:
        EvaluationError: missing file, unknown format, no usable array, wrong shape, NaN/Inf.
    """
    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f"input file {str(path)!r} does not exist; check the path")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            arr: Any = np.load(path, allow_pickle=False)
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                keys = list(z.keys())
                if "x" not in keys and len(keys) != 1:
                    raise EvaluationError(f"{path} holds arrays {keys}; name the inputs 'x' "
                                          "(np.savez(path, x=inputs))")
                arr = z["x" if "x" in keys else keys[0]]
        elif suffix == ".pt":
            arr = torch.load(path, map_location="cpu", weights_only=True)
            arr = arr.get("x") if isinstance(arr, dict) else arr
        else:
            raise EvaluationError(f"{path}: unknown input format {suffix!r}; use .npy, .npz "
                                  "or .pt")
    except EvaluationError:
        raise
    except Exception as err:  # corrupt zip/pickle/npy: numpy and torch raise many types
        raise EvaluationError(f"{path} is not a readable {suffix} array file ({err}); save the "
                              "inputs with numpy.save / numpy.savez / torch.save") from err
    x = torch.as_tensor(arr) if isinstance(arr, np.ndarray | Tensor) else None
    if x is None or x.dtype == torch.bool or x.is_complex():
        raise EvaluationError(f"{path} holds no numeric array (got {type(arr).__name__}); "
                              "save a float or uint8 array of inputs")
    x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
    if not torch.isfinite(x).all():
        raise EvaluationError(f"{path} contains NaN/Inf; clean the inputs first")
    return _fit_shape(x, input_shape, str(path))


def _load_split(name: str, split: str, root: str | None, input_shape: tuple[int, ...]
                ) -> Dataset:
    """Split ``split`` of data set ``name`` (or the inputs of a .npy/.npz/.pt file)."""
    if Path(name).suffix.lower() in (".npy", ".npz", ".pt"):
        x = load_inputs(name, input_shape)
        return Dataset(x, torch.zeros(len(x), dtype=torch.int64), Path(name).name)
    from .data.catalogue import load_dataset

    if split not in ("train", "test"):
        raise EvaluationError(f"unknown split {split!r}; use 'test' or 'train'")
    try:
        data = load_dataset(name, root=root)
    except ValueError as err:  # unknown name: the message lists the valid ones
        raise EvaluationError(str(err)) from err
    ds = getattr(data, split)
    if len(ds) == 0:
        raise EvaluationError(f"data set {name!r} has an empty {split} split; use the other one")
    _fit_shape(ds.x[:1], input_shape, f"data set {name!r}")
    return Dataset(_fit_shape(ds.x, input_shape, name), ds.y, ds.name, ds.num_classes)


def _run_or_named_split(run: Run, name: str, split: str, data_root: str | None,
                        shape: tuple[int, ...]) -> Dataset:
    """The run's own data (as it was trained: generated sets, limits) or a named data set."""
    same = name.lower().replace("_", "-") == run.config.data.name.lower().replace("_", "-")
    if same and split in ("train", "test"):
        return getattr(run.data(), split)
    root = data_root if data_root is not None else run.config.data.root
    return _load_split(name, split, root, shape)


# ------------------------------------------------------------------------------ files
def _is_writer() -> bool:
    return detect_env().rank == 0


def _atomic_write(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def _new_file(path: str | Path, what: str) -> Path:
    path = Path(path)
    if path.exists():
        raise EvaluationError(f"{what} {str(path)!r} already exists; choose a new file name "
                              "(nothing is overwritten)")
    if not path.parent.is_dir():
        raise EvaluationError(f"the folder of {what} {str(path)!r} does not exist; create it")
    return path


def _savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as fh:  # a file object: numpy appends no ".npz" to the temp name
        np.savez_compressed(fh, **arrays)


def _np(t: Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


# ------------------------------------------------------------------------------ evaluate
def _check_samples(num_samples: int | str, max_samples: int) -> None:
    if num_samples == "auto":
        if isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 20:
            raise EvaluationError(f"--max-samples must be an integer >= 20, got {max_samples!r}")
    elif isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise EvaluationError(f"--samples must be 'auto' or an integer >= 1, got {num_samples!r}")


def evaluate_run(run: str | Path | Run, num_samples: int | str = "auto", *,
                 ood: str | None = None, num_bins: int = 15, out_dir: str | Path | None = None,
                 out_file: str | Path | None = None, batch_size: int = 1000, seed: int = 0,
                 data_root: str | None = None, progress: bool = True, tol: float | None = None,
                 max_samples: int = 300) -> dict[str, Any]:
    """MC-evaluate a trained run on its test set (and an OOD set); save metrics and arrays.

    Args:
        run: a run directory, a ``model.pt``/``checkpoint.pt`` in one, or a loaded :class:`Run`.
        num_samples: weight draws T (one pass for a deterministic network), or ``"auto"``
            (default): draw in rounds until the MC standard error of the predictive
            probabilities is below ``tol`` (default 5e-3), at most ``max_samples``; the T used
            is ``metrics["num_samples"]`` and the OOD set gets the same T.
        ood: an out-of-distribution data set name (e.g. ``"fashion-mnist-small"``) or a
            .npy/.npz/.pt file of inputs; its test split is used.
        num_bins: ECE / reliability bins.
        out_dir: where metrics.json and predictions.npz go (default ``RUN/eval``).
        out_file: also write the metrics JSON here (must not exist yet).
        batch_size: inputs per forward.
        seed: torch seed of the weight draws (the global RNG state is restored afterwards).
        data_root: root of file-based data sets (default: the run's ``data.root``).
        progress: show progress bars.

    Returns:
        The metrics dict that was written to ``metrics.json``.

    Raises:
        CheckpointError: no loadable run at ``run``.
        EvaluationError: unknown OOD set, inputs of the wrong shape, an existing ``out_file``.
    """
    _check_samples(num_samples, max_samples)
    if isinstance(num_bins, bool) or not isinstance(num_bins, int) or num_bins < 1:
        raise EvaluationError(f"--bins must be an integer >= 1, got {num_bins!r}")
    run = run if isinstance(run, Run) else load_run(run)
    out_dir = Path(out_dir) if out_dir is not None else run.run_dir / EVAL_DIR
    if out_file is not None:
        out_file = _new_file(out_file, "--out file")
    shape = tuple(model_spec(run.config.model.name).input_shape)
    test = run.data().test
    root = data_root if data_root is not None else run.config.data.root
    ood_set = _load_split(ood, "test", root, shape) if ood else None  # validated before work
    # a run of the Ke & Fan optimizer that collected weight samples is averaged over them
    collected = sorted((run.run_dir / "samples").glob("sample_*.pt"))
    predictor: Any = run.model
    if collected:
        from .train.sghmc import load_samples

        predictor = load_samples(run.run_dir)
        num_samples = len(predictor)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        samples, seconds, info = mc_sample_probs(
            predictor, test.x, num_samples, batch_size=batch_size, desc=f"MC test ({len(test)})",
            progress=progress, posterior=run.posterior, tol=tol, max_samples=max_samples,
            return_info=True)
        res = summarize(samples, test.y, num_bins)
        requested, num_samples = num_samples, info.num_samples
        if ood_set is not None:
            ood_samples, ood_seconds = mc_sample_probs(
                predictor, ood_set.x, num_samples, batch_size=batch_size,
                desc=f"MC OOD ({len(ood_set)})", progress=progress, posterior=run.posterior)
    arrays = res["arrays"]
    arrays["class_images"] = test.x[arrays["class_index"]]
    # an IVON run (RUN/posterior.pt) draws the plain net's weights from N(m, sigma^2)
    bayesian = (bool(bayesian_layers(run.model)) or len(collected) > 1
                or run.posterior is not None)
    metrics: dict[str, Any] = {
        "collected_samples": len(collected),
        "run": str(run.run_dir), "weights": str(run.weights), "model": run.config.model.name,
        "bayesian": bayesian, "data": run.config.data.name, "num_test": len(test),
        "num_samples": num_samples, "mc_passes": info.passes,
        "mc": {"requested": requested, "tol": tol if requested == "auto" else None,
               "standard_error": info.standard_error, "converged": info.converged,
               "draws_per_pass": info.draws_per_pass},
        "num_bins": num_bins, "seed": seed, **res["metrics"],
        "mc_inference_s": seconds, "threads": torch.get_num_threads(),
    }
    if ood_set is not None:
        parts = decompose_draws(ood_samples)
        arrays.update({"ood_probs": ood_samples.double().mean(0).float(),
                       **{f"ood_{k}": v for k, v in parts.items()}})
        metrics["ood"] = {"dataset": ood, "num": len(ood_set), **ood_summary(arrays, parts),
                          "mc_inference_s": ood_seconds}
        if not bayesian:
            metrics["ood"]["note"] = ("deterministic network: mutual information is 0 for "
                                      "every input, so it cannot separate OOD (AUROC 0.5)")
    metrics["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    metrics["files"] = {"metrics": str(out_dir / "metrics.json"),
                        "predictions": str(out_dir / "predictions.npz")}
    if _is_writer():
        out_dir.mkdir(parents=True, exist_ok=True)
        saved = {k: _np(v) for k, v in arrays.items()}
        saved.update(num_samples=np.array(num_samples), num_bins=np.array(num_bins))
        _atomic_write(out_dir / "predictions.npz", lambda p: _savez(p, saved))
        text = json.dumps(metrics, indent=2) + "\n"
        _atomic_write(out_dir / "metrics.json", lambda p: p.write_text(text))
        if out_file is not None:
            with open(out_file, "x") as fh:
                fh.write(text)
    return metrics


# ------------------------------------------------------------------------------ predict
def predict_run(run: str | Path | Run, out: str | Path, *, inputs: str | Path | None = None,
                data: str | None = None, split: str = "test", num_samples: int | str = "auto",
                batch_size: int = 1000, seed: int = 0, data_root: str | None = None,
                progress: bool = True, tol: float | None = None, max_samples: int = 300) -> Path:
    """Write one CSV row per input: predicted class, its probability and the uncertainties.

    Columns: ``index, predicted, probability, total, aleatoric, epistemic`` (nats), plus
    ``label, correct`` when the inputs come from a data set.

    Args:
        run: a run directory or checkpoint (see :func:`evaluate_run`).
        out: the CSV file to create (must not exist).
        inputs: a .npy/.npz/.pt file of inputs (N, *input shape); or give ``data``.
        data: a data set name; ``split`` picks ``"test"`` or ``"train"``.

    Raises:
        EvaluationError: both or neither of ``inputs``/``data``, a bad file, an existing ``out``.
    """
    if (inputs is None) == (data is None):
        raise EvaluationError("give exactly one of --input FILE or --data NAME")
    _check_samples(num_samples, max_samples)
    out = _new_file(out, "--out file")
    run = run if isinstance(run, Run) else load_run(run)
    shape = tuple(model_spec(run.config.model.name).input_shape)
    if inputs is not None:
        x, y = load_inputs(inputs, shape), None
    else:
        ds = _run_or_named_split(run, data, split, data_root, shape)
        x, y = ds.x, ds.y
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        samples, _ = mc_sample_probs(run.model, x, num_samples, batch_size=batch_size,
                                     desc=f"MC predict ({len(x)})", progress=progress,
                                     posterior=run.posterior, tol=tol, max_samples=max_samples)
    parts = decompose_draws(samples)
    prob, pred = samples.double().mean(0).max(-1)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["index", "predicted", "probability", "total", "aleatoric", "epistemic"]
               + (["label", "correct"] if y is not None else []))
    for i in range(len(x)):
        row = [i, int(pred[i]), f"{float(prob[i]):.6g}"] + [
            f"{float(parts[k][i]):.6g}" for k in ("total", "aleatoric", "epistemic")]
        w.writerow(row + ([int(y[i]), int(y[i] == pred[i])] if y is not None else []))
    if _is_writer():
        with open(out, "x") as fh:
            fh.write(buf.getvalue())
    return out
