"""The training engine: ``train(config)`` (what ``bayescale train`` calls).

One loop for one process and for many (``torch.distributed``, see
:mod:`bayescale.train.distributed`):

* loss = the ELBO of :mod:`bayescale.nn.elbo`, mean NLL + beta_t * KL / N_train with N_train the
  whole training set; DDP averages gradients over ranks, so the KL is counted once per step;
* every rank draws its own weight noise (seed + rank) while parameters stay identical (rank 0's
  initial state is broadcast, gradients are all-reduced);
* strong scaling (the seed's Horovod recipe: fixed total budget, steps per rank = budget /
  world_size) or weak scaling (fixed steps per rank); the lr optionally scaled by world_size;
* held-out evaluation with MC prediction, sharded over ranks and summed;
* rank 0 writes the run directory (:mod:`bayescale.train.runlog`) and atomic checkpoints;
  ``resume`` continues exactly (model, optimizer, step, every rank's RNG state);
* ``resume="auto"`` continues ``output.dir/output.name`` if it holds a checkpoint, else starts it:
  the same command line then survives ``torchrun --max-restarts=N`` restarts of the whole group
  after a worker dies (and requeued batch jobs); each resume is logged to ``resumes.jsonl``;
* a collective that times out (``dist.timeout_s``: a worker stopped responding) or loses a peer
  raises :class:`~bayescale.train.distributed.CollectiveError` naming the cause and the fix, and the
  process exits without waiting on the broken group;
* a non-finite loss or gradient stops the run with :class:`TrainingDiverged`; the last good
  checkpoint is left untouched.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..kefan.optimizer import resolve_hparams
from ..models import model_spec
from ..nn.elbo import elbo_terms
from ..nn.sampling import bayesian_layers
from . import distributed as D
from . import ivon as IV
from . import sghmc as KF
from .builders import build_loader, build_optimizer, eval_sharded, load_data, make_run_dir
from .checkpoint import (
    CheckpointError,
    checkpoint_files,
    load_latest,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .config import Config, config_from_dict, config_to_dict
from .runlog import RunLog
from .runs import build_model
from .schedules import kl_weight_at, lr_factor

__all__ = ["train", "TrainingDiverged", "run_paths"]

# Config keys that must not change when a run is resumed (they define the trajectory).
_IDENTITY = ("model", "data.name", "data.shard", "data.limit_train", "data.augment",
             "train.batch_size", "train.seed", "train.scaling", "optim.name")


class TrainingDiverged(RuntimeError):
    """The loss or the gradient became NaN/Inf."""


def run_paths(run_dir: str | Path) -> dict[str, Path]:
    """The files of a run directory."""
    d = Path(run_dir)
    return {k: d / v for k, v in {"config": "config.yaml", "checkpoint": "checkpoint.pt",
                                  "model": "model.pt", "summary": "summary.json",
                                  "timing": "timing.csv", "metrics": "metrics.jsonl"}.items()}


def _get(d: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        d = d.get(part, {}) if isinstance(d, dict) else None
    return d


def _check_resume(ckpt: dict, cfg: Config, world: int) -> None:
    old, new = ckpt["config"], config_to_dict(cfg)
    try:  # keys added to the config since the checkpoint was written take their defaults
        old = config_to_dict(config_from_dict(old))
    except Exception:  # noqa: BLE001 - an unreadable old config is compared as written
        pass
    changed = [k for k in _IDENTITY if _get(old, k) != _get(new, k)]
    if changed:
        diffs = "; ".join(f"{k}: {_get(old, k)!r} -> {_get(new, k)!r}" for k in changed)
        raise CheckpointError(f"cannot resume: the checkpoint was written by a different run "
                              f"({diffs}); start a new run or resume with the original config")
    if ckpt["world_size"] != world:
        raise CheckpointError(f"cannot resume: the checkpoint was written by {ckpt['world_size']} "
                              f"worker(s), this launch has {world}; an exact resume needs the "
                              "same number of workers (every rank's noise stream is saved)")


def _auto_resume(cfg: Config) -> Path | None:
    """``resume="auto"``: the run directory ``output.dir/output.name`` if rank 0 finds a
    checkpoint there (every rank follows rank 0's decision), else ``None`` (start the run)."""
    if not cfg.output.name:
        raise ValueError("--resume auto needs a fixed run directory so that a restarted launch "
                         "finds it: set output.name=NAME (and output.dir)")
    run = Path(cfg.output.dir) / cfg.output.name
    found = any(p.exists() for p in checkpoint_files(run / "checkpoint.pt"))
    return run if D.broadcast_object(found) else None


def _note_resume(run_dir: Path, path: Path, step: int) -> None:
    """Rank 0: say where the run continues and append it to ``resumes.jsonl``."""
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
    row = {"step": step, "checkpoint": path.name, "restart_count": restart, "time": time.time()}
    with (run_dir / "resumes.jsonl").open("a") as fh:
        fh.write(json.dumps(row) + "\n")
    print(f"bayescale train: resuming {run_dir} at step {step} from {path.name}"
          + (f" (torchrun restart {restart})" if restart else ""), file=sys.stderr, flush=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _gather_rng(device: torch.device) -> list[dict[str, Tensor]]:
    state = rng_state(device)
    if D.world_size() == 1:
        return [state]
    out: list[Any] = [None] * D.world_size()
    dist.all_gather_object(out, state)
    return out


@torch.no_grad()
def _param_checksums(model: nn.Module) -> list[float]:
    """A float64 checksum of the parameters on every rank (equal when ranks are in sync)."""
    flat = torch.cat([p.detach().double().flatten() for p in model.parameters()])
    local = (flat * torch.linspace(1.0, 2.0, flat.numel(), dtype=torch.float64,
                                   device=flat.device)).sum()
    out = torch.zeros(D.world_size(), dtype=torch.float64, device=flat.device)
    out[D.rank()] = local
    D.all_reduce_sum(out)
    return out.tolist()


class _Trainer:
    def __init__(self, cfg: Config, device: torch.device, resume: Path | None,
                 data: Any, run_dir: Path | None) -> None:
        self.cfg, self.device = cfg, device
        self.rank, self.world = D.rank(), D.world_size()
        self.main = self.rank == 0
        ckpt = None
        if resume is not None:
            # the newest intact checkpoint (a damaged newest one falls back, with a warning)
            ckpt_path, ckpt = load_latest(resume)
            _check_resume(ckpt, cfg, self.world)
            run_dir = ckpt_path.parent
        t, spec = cfg.train, model_spec(cfg.model.name)
        self.data = data if data is not None else load_data(cfg, spec.input_shape)
        x_shape = tuple(self.data.train.x.shape[1:])
        if tuple(spec.input_shape) != x_shape:
            raise ValueError(f"model {cfg.model.name} takes inputs {tuple(spec.input_shape)} but "
                             f"data {self.data.name} has {x_shape}; pick a matching model/data")
        self.num_train = len(self.data.train)
        torch.manual_seed(t.seed)  # identical init on every rank
        self.base = build_model(cfg, self.data.num_classes or 10).to(device)
        self.loader = build_loader(cfg, self.data.train, self.rank, self.world, device)
        self.per_epoch = len(self.loader)
        # The budget is counted in steps of a single worker (the seed's Num_iter); an epoch budget
        # ends on this rank's epoch boundary under strong scaling with sharded data.
        budget = t.steps if t.steps is not None else round(t.epochs * (self.num_train
                                                                       // t.batch_size))
        if t.scaling == "weak":
            self.total = budget
        elif t.steps is None and cfg.data.shard:
            self.total = round(t.epochs * self.per_epoch)
        else:
            self.total = budget // self.world
        if self.total < 1:
            raise ValueError(f"budget of {budget} steps leaves none for each of {self.world} "
                             "workers; raise train.steps/epochs or use train.scaling=weak")
        self.base_lr = cfg.optim.lr * (self.world if cfg.optim.scale_lr_by_world_size else 1)
        sghmc = cfg.optim.name == "sghmc"
        if sghmc:  # Ke & Fan: a deterministic net, mean NLL, noise seeded alike on every rank
            KF.check_model(self.base)
        if cfg.optim.name == "ivon":  # IVON's posterior is over plain weights
            IV.check_model(self.base, f"model {cfg.model.name}")
        if t.mc_samples > 1 and not (bayesian_layers(self.base) or cfg.model.dropout):
            raise ValueError(f"train.mc_samples={t.mc_samples} averages the ELBO over weight "
                             f"draws, but model {cfg.model.name} has no Bayesian layer or dropout "
                             "to draw: set train.mc_samples=1 (IVON: ivon.mc_samples)")
        self.opt = build_optimizer(cfg.optim, self.base.parameters(), self.base_lr,
                                   sghmc=cfg.sghmc, ivon=cfg.ivon, num_train=self.num_train,
                                   seed=t.seed)
        self.step, self.time_to_train = 0, 0.0
        if ckpt is not None:
            self.base.load_state_dict(ckpt["model"])
            self.opt.load_state_dict(ckpt["optimizer"])
            self.step, self.time_to_train = ckpt["step"], ckpt["time_to_train"]
        self.timer = D.AllReduceTimer()
        self.model: nn.Module = self.base
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP
            self.model = DDP(self.base, device_ids=[device] if device.type == "cuda" else None,
                             init_sync=cfg.dist.broadcast_init,
                             bucket_cap_mb=cfg.dist.bucket_cap_mb)
            self.model.register_comm_hook(None, self.timer.hook)
        self.forward = torch.compile(self.model) if t.compile else self.model
        if ckpt is not None:
            set_rng_state(ckpt["rng"][self.rank], device)
        else:  # per-rank weight-noise stream
            torch.manual_seed(t.seed * 1_000_003 + 7919 * (self.rank + 1))
        self.run_dir = make_run_dir(cfg, run_dir, resume is not None)
        # a fresh start drops the rows of an earlier attempt that died before its first
        # checkpoint (resume="auto" into an existing directory); a resume drops rows past its step
        self.log = RunLog(self.run_dir, self.main, ckpt["step"] if ckpt else -1,
                          cfg.output.tensorboard)
        if self.main and ckpt is not None:
            _note_resume(self.run_dir, ckpt_path, ckpt["step"])
        self.last_ckpt = (self.step, self.run_dir / "checkpoint.pt") if ckpt else None
        kf_hp = resolve_hparams(cfg.sghmc.preset, cycles=cfg.sghmc.cycles) if sghmc else {}
        self.kefan = KF.KeFanTraining(
            self.opt, self.base, self.base_lr, kf_hp["cycles"],
            cfg.sghmc.samples_per_cycle, self.per_epoch, self.total, self.run_dir,
            ckpt["step"] if ckpt else None, ramp=kf_hp.get("ramp", 0.0),
            after_factor=kf_hp.get("after_factor", 1.0),
            warm_up_cycles=kf_hp.get("warm_up_cycles") if cfg.sghmc.warm_up is None
            else None) if sghmc else None
        if self.main and ckpt is None:
            (self.run_dir / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg),
                                                                     sort_keys=False))

    # -- pieces ------------------------------------------------------------------------------
    def _lr_beta(self, batch_index: int) -> tuple[float, float]:
        s, c = self.cfg.schedule, self.cfg.kl
        lr = self.kefan.lr(self.step) if self.kefan else self.base_lr * lr_factor(
            self.step, self.total, s.name, s.warmup_steps, s.min_lr_ratio, s.step_size, s.gamma)
        beta = kl_weight_at(self.step, self.total, c.weight, c.schedule, c.anneal_steps,
                            c.cycles, c.ratio, batch_index, self.per_epoch)
        return lr, beta

    def checkpoint(self) -> None:
        rngs = _gather_rng(self.device)
        sums = _param_checksums(self.base)
        if len(set(sums)) != 1:
            raise RuntimeError(f"the ranks' parameters differ (checksums {sums}); data-parallel "
                               "training is out of sync - report this as a bug")
        self.log.flush()  # the step log up to this step is on disk before a checkpoint claims it
        if self.main:
            state = {
                "model": self.base.state_dict(), "optimizer": self.opt.state_dict(),
                "step": self.step, "epoch": self.step / self.per_epoch,
                "time_to_train": self.time_to_train, "rng": rngs, "world_size": self.world,
                "config": config_to_dict(self.cfg), "model_name": self.cfg.model.name,
                "num_train": self.num_train, "param_checksums": sums}
            path = save_checkpoint(self.run_dir / "checkpoint.pt", state,
                                   keep=self.cfg.train.keep_checkpoints)
            self.last_ckpt = (self.step, path)

    def evaluate(self, epoch: float, extra: dict[str, Any]) -> dict[str, Any]:
        e = self.cfg.eval
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(self.cfg.train.seed + 104_729 * (self.rank + 1) + self.step)
            self.base.eval()
            # a deterministic twin gives the same prediction every time: one pass suffices;
            # an IVON run draws its weights from the optimizer's posterior, like a BNN
            posterior = self.opt if self.cfg.optim.name == "ivon" else None
            samples = e.samples if bayesian_layers(self.base) or posterior else 1
            res = eval_sharded(self.base, self.data.test, samples, e.batch_size, self.device,
                               self.cfg.train.precision, posterior=posterior)
            self.base.train()
        row = {"step": self.step, "epoch": round(epoch, 4), **res, **extra,
               "time_to_train_s": self.time_to_train}
        self.log.record("eval", row)
        return row

    def _diverged(self, what: str, epoch: int) -> TrainingDiverged:
        self.log.flush()
        where = (f"the last good checkpoint is {self.last_ckpt[1]} (step {self.last_ckpt[0]}), "
                 "left untouched" if self.last_ckpt else "no checkpoint was written yet")
        return TrainingDiverged(
            f"{what} became NaN/Inf at step {self.step + 1} (epoch {epoch}); {where}. Lower "
            "optim.lr, set optim.clip_grad_norm, or warm up the KL (kl.schedule=linear), then "
            "resume with --resume or start again")

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        cfg, t = self.cfg, self.cfg.train
        dtype = torch.bfloat16 if t.precision == "bf16" else None
        params = [p for p in self.base.parameters() if p.requires_grad]
        clip = cfg.optim.clip_grad_norm
        post_every = t.posterior_every or self.per_epoch
        ckpt_every = t.checkpoint_every or self.per_epoch
        eval_every = cfg.eval.every_epochs * self.per_epoch
        if self.step == 0:
            self.log.posterior(0, self.base)
        window = torch.zeros(4, dtype=torch.float64, device=self.device)  # loss, nll, correct, n
        epoch_time, last_eval = 0.0, None
        bar = tqdm(total=self.total, initial=self.step, disable=not (self.main and t.progress),
                   desc=f"{cfg.model.name} x{self.world}", dynamic_ncols=True)
        self.base.train()
        while self.step < self.total:
            epoch, start = divmod(self.step, self.per_epoch)
            for b, (xb, yb) in enumerate(self.loader.batches(epoch, start), start):
                if self.step >= self.total:
                    break
                lr, beta = self._lr_beta(b)
                for g in self.opt.param_groups:
                    g["lr"] = lr
                _sync(self.device)
                wall0, t0 = time.time(), time.perf_counter()
                xb = xb.to(self.device, non_blocking=True)
                yb = yb.to(self.device, non_blocking=True)
                self.opt.zero_grad(set_to_none=True)
                passes = IV.draws(self.opt, t.mc_samples)  # IVON's draws, or the layers'
                n_draws = len(passes)
                for draw in passes:
                    with draw:
                        with torch.autocast(self.device.type, dtype=dtype,
                                            enabled=dtype is not None):
                            out = self.forward(xb)
                        terms = elbo_terms(out.float(), yb, self.base, self.num_train, beta)
                        (terms.loss / n_draws if n_draws > 1 else terms.loss).backward()
                grads = [p.grad for p in params if p.grad is not None]
                gnorm = torch.nn.utils.get_total_norm(grads)
                if not math.isfinite(gnorm.item()) or not math.isfinite(terms.loss.item()):
                    bar.close()
                    raise self._diverged("the loss" if not math.isfinite(terms.loss.item())
                                         else "the gradient", epoch)
                if clip is not None:
                    torch.nn.utils.clip_grads_with_norm_(grads, clip, gnorm)
                if self.kefan:  # E-step + pruning at the first batch of an epoch past warm-up
                    self.kefan.before_step(epoch, b)
                self.opt.step()
                _sync(self.device)
                dt = time.perf_counter() - t0
                self.time_to_train += dt
                epoch_time += dt
                self.step += 1
                if self.kefan:  # samples at cycle ends, sparsity.csv at epoch ends
                    self.kefan.after_step(self.step, terms.loss)
                self.log.timing(self.step, dt, self.world * xb.shape[0], wall0, wall0 + dt,
                                self.time_to_train, self.timer.pop(), self.world)
                with torch.no_grad():
                    window += torch.stack([terms.loss.detach() * len(yb), terms.nll.detach()
                                           * len(yb), (out.argmax(-1) == yb).sum(),
                                           torch.tensor(len(yb), device=self.device)]).double()
                bar.update(1)
                if self.step % t.log_every == 0 or self.step == self.total:
                    D.all_reduce_sum(window)
                    n = window[3].item()
                    row = {"step": self.step, "epoch": round(self.step / self.per_epoch, 4),
                           "loss": window[0].item() / n, "nll": window[1].item() / n,
                           "kl": terms.kl.item(), "kl_weight": beta, "lr": lr,
                           "train_acc": window[2].item() / n, "grad_norm": gnorm.item(),
                           "time_to_train_s": self.time_to_train}
                    self.log.record("train", row)
                    bar.set_postfix(loss=f"{row['loss']:.3f}", acc=f"{row['train_acc']:.3f}")
                    window.zero_()
                if self.step % post_every == 0:
                    self.log.posterior(self.step, self.base)
                if eval_every and self.step % eval_every == 0:
                    last_eval = self.evaluate(self.step / self.per_epoch,
                                              {"epoch_time_s": epoch_time})
                if self.step % self.per_epoch == 0:
                    epoch_time = 0.0
                if self.step % ckpt_every == 0 and self.step < self.total:
                    self.checkpoint()
        bar.close()
        self.checkpoint()
        if eval_every == 0 or last_eval is None or last_eval["step"] != self.step:
            last_eval = self.evaluate(self.step / self.per_epoch, {"epoch_time_s": epoch_time})
        if self.main:
            torch.save(self.base.state_dict(), self.run_dir / "model.pt")
            if cfg.optim.name == "ivon":  # N(m, sigma^2) for `bayescale evaluate` and pruning
                IV.save_posterior(self.opt, self.base, self.run_dir)
        bma = self.kefan.finish(lambda models: eval_sharded(
            models, self.data.test, len(models), cfg.eval.batch_size, self.device,
            t.precision)) if self.kefan else {}
        self.log.close()
        return {"run_dir": str(self.run_dir), "rank": self.rank, "world_size": self.world,
                "steps": self.step, "bma_eval": bma,
                "epochs": self.step / self.per_epoch, "time_to_train_s": self.time_to_train,
                "final_eval": last_eval, "model": cfg.model.name, "data": self.data.name}


def train(cfg: Config | dict, *, resume: str | Path | None = None, data: Any = None,
          run_dir: str | Path | None = None) -> dict[str, Any]:
    """Train ``cfg`` (a :class:`~bayescale.train.config.Config` or nested dict); return a summary.

    Launch with plain ``python``, ``torchrun``, ``srun`` or ``mpirun``: the process group is set
    up from the environment (and torn down again if this call created it).

    Args:
        cfg: the run configuration.
        resume: a run directory (or checkpoint file) to continue exactly, or ``"auto"``:
            continue ``output.dir/output.name`` from its newest intact checkpoint if it has one,
            else start it there (what ``torchrun --max-restarts=N`` restarts need).
        data: a :class:`~bayescale.data.datasets.TensorSplit` to use instead of ``cfg.data``.
        run_dir: write here instead of ``output.dir/output.name``.

    Raises:
        TrainingDiverged: the loss or gradient became NaN/Inf (last checkpoint kept).
        CheckpointError: ``resume`` points at a missing, corrupt or incompatible checkpoint.
        CollectiveError: a collective timed out (``dist.timeout_s``) or lost a peer worker.
    """
    if isinstance(cfg, dict):
        cfg = config_from_dict(cfg)
    created = not (dist.is_available() and dist.is_initialized())
    _, device = D.setup(cfg.dist.backend, cfg.train.device, cfg.train.threads,
                        cfg.dist.timeout_s, cfg.train.malloc_tuning)
    broken, trainer = False, None
    try:
        if isinstance(resume, str) and resume == "auto":
            resume = _auto_resume(cfg)
        trainer = _Trainer(cfg, device, Path(resume) if resume is not None else None, data,
                           Path(run_dir) if run_dir is not None else None)
        return trainer.run()
    except RuntimeError as err:
        where = f"at step {trainer.step + 1}" if trainer is not None else "while starting"
        clear = D.explain(err, cfg.dist.timeout_s, where)
        if clear is None:
            raise
        broken = True
        raise clear from err
    finally:
        if created:
            with contextlib.suppress(Exception):
                D.abandon() if broken else D.teardown()
