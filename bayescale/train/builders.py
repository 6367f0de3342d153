"""Builders the training engine uses: data, loader, optimizer, run directory, sharded eval."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.catalogue import load_dataset
from ..data.datasets import Dataset, TensorSplit
from ..data.loader import CropFlip, TensorLoader
from ..uncertainty.predict import mc_predict
from . import distributed as D
from .config import Config, IVONConfig, OptimConfig, SGHMCConfig

__all__ = ["load_data", "build_loader", "build_optimizer", "make_run_dir", "eval_sharded"]


def _first(ds: Dataset, n: int | None) -> Dataset:
    if n is None or n >= len(ds):
        return ds
    if n < 1:
        raise ValueError(f"data.limit_* must be >= 1, got {n}")
    return Dataset(ds.x[:n], ds.y[:n], ds.name, ds.num_classes)


def load_data(cfg: Config, input_shape: tuple[int, ...]) -> TensorSplit:
    """The data set of ``cfg.data`` (generated sets take the model's input shape)."""
    d = cfg.data
    kwargs: dict[str, Any] = {}
    name = d.name.lower().replace("_", "-")
    if name == "synthetic":
        kwargs = {"n": d.size, "shape": tuple(input_shape), "seed": cfg.train.seed}
    elif name.startswith("cifar"):
        kwargs = {"subtract_pixel_mean": d.subtract_pixel_mean}
    elif d.subtract_pixel_mean:
        raise ValueError(f"data.subtract_pixel_mean applies to CIFAR only, not {d.name!r}")
    if name in ("synthetic", "digits", "diabetes", "heteroscedastic-1d", "mnist-small"):
        split = load_dataset(d.name, **kwargs)
    else:
        split = load_dataset(d.name, root=d.root, download=d.download, **kwargs)
    if split.num_classes is None:
        raise ValueError(f"data set {d.name!r} is a regression set; `bayescale train` trains "
                         "classifiers (use the library's elbo_loss with likelihood='gaussian')")
    return TensorSplit(_first(split.train, d.limit_train), _first(split.test, d.limit_test),
                       split.name, split.num_classes, split.classes, split.stats)


def build_loader(cfg: Config, train: Dataset, rank: int, world: int,
                 device: torch.device) -> TensorLoader:
    """This rank's training loader: a disjoint shard, or (``data.shard=false``, the seed) the
    whole set in a rank-specific order."""
    x, y = train.x, train.y
    if device.type == "cuda":  # keep the data resident on the GPU
        x, y = x.to(device), y.to(device)
    aug = CropFlip() if cfg.data.augment else None
    seed = cfg.train.seed
    if cfg.data.shard:
        return TensorLoader(x, y, cfg.train.batch_size, seed=seed, augment=aug, rank=rank,
                            world_size=world)
    return TensorLoader(x, y, cfg.train.batch_size, seed=seed + 1_000_003 * rank, augment=aug)


def build_optimizer(o: OptimConfig, params: Iterable[nn.Parameter], lr: float, *,
                    sghmc: SGHMCConfig | None = None, ivon: IVONConfig | None = None,
                    num_train: int | None = None, seed: int = 0) -> torch.optim.Optimizer:
    """Adam (the seed's), AdamW, SGD with momentum, Ke & Fan's SGHMC (``sghmc`` settings,
    ``num_train`` = N and the noise ``seed``, the same on every rank) or IVON (``ivon``
    settings; ``ess`` defaults to ``num_train``)."""
    params = list(params)
    if o.name == "ivon":
        from .ivon import build_ivon

        if num_train is None:
            raise ValueError("optim.name=ivon needs num_train (the training-set size N)")
        return build_ivon(params, lr, ivon or IVONConfig(), num_train,
                          distributed=D.world_size() > 1)
    if o.name == "sghmc":
        from ..kefan.optimizer import SGHMCSpikeSlab

        if num_train is None:
            raise ValueError("optim.name=sghmc needs num_train (the training-set size N)")
        k = sghmc or SGHMCConfig()
        conv_thresholds = {n: v for n, v in (("soft_threshold", k.conv_soft_threshold),
                                             ("hard_threshold", k.conv_hard_threshold))
                           if v is not None}
        if conv_thresholds:  # conv weights (dim >= 3) in a group of their own
            groups = [{"params": [p for p in params if p.dim() >= 3], **conv_thresholds},
                      {"params": [p for p in params if p.dim() < 3]}]
            params = [g for g in groups if g["params"]]
        return SGHMCSpikeSlab(params, num_train, lr, preset=k.preset, temperature=k.temperature,
                              eta=k.eta, betas=tuple(k.betas) if k.betas else None, eps1=k.eps1,
                              eps0=k.eps0, soft_threshold=k.soft_threshold,
                              hard_threshold=k.hard_threshold, warm_up=k.warm_up, group=k.group,
                              seed=seed, spike_clip=k.spike_clip,
                              probation_rel=k.probation_rel, probation=k.probation)
    if o.name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=tuple(o.betas), eps=o.eps,
                                weight_decay=o.weight_decay)
    if o.name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=tuple(o.betas), eps=o.eps,
                                 weight_decay=o.weight_decay)
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=o.momentum, nesterov=o.nesterov,
                               weight_decay=o.weight_decay)
    raise ValueError(f"unknown optimizer {o.name!r}")  # pragma: no cover - schema checks it


def make_run_dir(cfg: Config, run_dir: Path | None, resuming: bool) -> Path:
    """Rank 0 picks (and creates) the run directory; every rank gets the same path.

    Without an explicit ``output.name`` the name is ``<model>-<data>``, with ``-2``, ``-3``, ...
    appended if taken, so a new run never overwrites an old one.
    """
    path = None
    if D.is_main():
        if run_dir is None:
            base = cfg.output.name or f"{cfg.model.name}-{cfg.data.name}"
            parent = Path(cfg.output.dir)
            run_dir = parent / base
            if not resuming and cfg.output.name is None:
                k = 2
                while run_dir.exists():
                    run_dir, k = parent / f"{base}-{k}", k + 1
        if not resuming and (run_dir / "checkpoint.pt").exists():
            path = FileExistsError(
                f"{run_dir} already holds a run (checkpoint.pt); continue it with "
                f"`--resume {run_dir}` or choose another output.name")
        else:
            run_dir.mkdir(parents=True, exist_ok=True)
            path = run_dir
    path = D.broadcast_object(path)
    if isinstance(path, Exception):
        raise path
    return Path(path)


@torch.no_grad()
def eval_sharded(model: nn.Module, test: Dataset, samples: int, batch_size: int,
                 device: torch.device, precision: str = "fp32", posterior: Any = None
                 ) -> dict[str, float]:
    """MC held-out accuracy and NLL; each rank takes a contiguous shard, sums are all-reduced.

    Predictive probabilities average ``samples`` weight draws (one draw per sample shared by the
    whole shard; from ``posterior``, e.g. the IVON optimizer, when given); ``test_nll`` is the
    mean of -log p(y|x) under that average ("held-out nats").
    """
    idx = torch.tensor_split(torch.arange(len(test)), D.world_size())[D.rank()]
    x, y = test.x[idx].to(device), test.y[idx].to(device)
    dtype = torch.bfloat16 if precision == "bf16" else None
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        probs = (mc_predict(model, x, samples, batch_size=batch_size, posterior=posterior)
                 if len(y) else None)
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    if len(y):
        picked = probs.gather(1, y.view(-1, 1)).squeeze(1).clamp_min(1e-12)
        sums += torch.stack([(probs.argmax(-1) == y).sum().double(),
                             -picked.log().sum().double(), torch.tensor(len(y), device=device,
                                                                        dtype=torch.float64)])
    D.all_reduce_sum(sums)
    n = max(1.0, sums[2].item())
    return {"test_acc": sums[0].item() / n, "test_nll": sums[1].item() / n,
            "test_count": int(sums[2].item()), "eval_samples": samples}

