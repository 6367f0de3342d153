"""Run configuration: a typed schema, YAML files, dotted ``key=value`` overrides.

One nested dataclass tree (:class:`Config`) is the only source of option names, defaults, types
and help text: the CLI's ``--help`` is generated from it, unknown keys are rejected with the
closest valid key suggested, and wrong value types are rejected with the expected type named.
The resolved config is written to every run directory (``config.yaml``).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

__all__ = [
    "Config", "ConfigError", "load_config", "config_from_dict", "config_to_dict",
    "apply_overrides", "config_keys", "describe_options", "shipped_configs", "resolve_config_path",
]


class ConfigError(ValueError):
    """A config file or override that does not match the schema."""


def _opt(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class ModelConfig:
    name: str = _opt("BNN_conv_flip", "registered model name (bayescale.list_models())")
    bayesian: bool | None = _opt(None, "override the model's default (false = CNN twin)")
    estimator: Literal["flipout", "reparam", "local"] | None = _opt(
        None, "Bayesian-layer estimator (default: the model's)")
    init: str | None = _opt(None, "posterior init preset: tutorial | tfp_vgg (default: model's)")
    prior_std: float = _opt(1.0, "std of the N(0, s^2) weight prior")
    bayesian_layers: str | list[str] | None = _opt(
        None, "which layers are Bayesian: all | last (the classifier only) | a list of layer "
              "names (default: the model's, e.g. BNN_conv_flip: conv)")
    dropout: float = _opt(0.0, "dropout rate before the classifier layer (seed models); sample "
                               "it at test time for MC dropout (bayescale.uncertainty.mc_dropout)")


@dataclass
class DataConfig:
    name: str = _opt("mnist", "data set (bayescale.data.list_datasets())")
    root: str | None = _opt(None, "data directory (default: $BAYESCALE_DATA or ~/.cache)")
    download: bool = _opt(False, "download missing files (checksum-verified)")
    subtract_pixel_mean: bool = _opt(False, "subtract the per-pixel training mean (seed CIFAR)")
    augment: bool = _opt(False, "random crop (pad 4) + horizontal flip on training batches")
    shard: bool = _opt(True, "each rank sees a disjoint shard (false: full set, own order, "
                             "as the seed)")
    limit_train: int | None = _opt(None, "use only the first N training examples")
    limit_test: int | None = _opt(None, "use only the first N test examples")
    size: int = _opt(2000, "examples of generated sets (synthetic)")


@dataclass
class TrainConfig:
    batch_size: int = _opt(64, "per-rank batch size (global batch = world_size x this)")
    epochs: float = _opt(5.0, "training budget in epochs of a single worker")
    steps: int | None = _opt(None, "training budget in optimizer steps of a single worker "
                                   "(overrides epochs)")
    scaling: Literal["strong", "weak"] = _opt(
        "strong", "strong: steps per rank = budget / world_size (seed); weak: = budget")
    seed: int = _opt(0, "seed of init, data order and (plus rank) weight noise")
    device: Literal["auto", "cpu", "cuda"] = _opt("auto", "auto = cuda if available")
    precision: Literal["fp32", "bf16"] = _opt("fp32", "bf16 = torch.autocast(bfloat16)")
    compile: bool = _opt(False, "torch.compile the model")
    threads: int | None = _opt(None, "torch threads per worker (default: cores / local workers)")
    malloc_tuning: bool = _opt(True, "glibc: keep freed memory for reuse (large CPU tensors "
                                     "otherwise cost page faults on every step)")
    mc_samples: int = _opt(1, "ELBO Monte Carlo draws per step (Bayesian layers or dropout; "
                              "each its own forward and backward; IVON: ivon.mc_samples)")
    log_every: int = _opt(10, "steps between training-metric rows")
    checkpoint_every: int = _opt(0, "steps between checkpoints (0: at each epoch end only)")
    keep_checkpoints: int = _opt(2, "checkpoints kept (checkpoint.pt, checkpoint.1.pt, ...); a "
                                    "corrupt newest one falls back to the previous")
    posterior_every: int = _opt(0, "steps between posterior-statistics snapshots (0: epochs)")
    progress: bool = _opt(True, "progress bar on rank 0")


@dataclass
class OptimConfig:
    name: Literal["adam", "adamw", "sgd", "sghmc", "ivon"] = _opt(
        "adam", "optimizer (the seed uses adam; sghmc = Ke & Fan, settings in section sghmc; "
                "ivon = IVON, settings in section ivon)")
    lr: float = _opt(1e-3, "base learning rate (sghmc: h0 = C^2 at the start of each cycle; "
                           "ivon: alpha, SGD-like with ivon.rescale_lr, e.g. 0.1)")
    momentum: float = _opt(0.9, "sgd momentum")
    nesterov: bool = _opt(False, "sgd Nesterov momentum")
    betas: list[float] = _opt([0.9, 0.999], "adam betas")
    eps: float = _opt(1e-8, "adam epsilon")
    weight_decay: float = _opt(0.0, "weight decay (mu and rho alike; the prior is the ELBO's)")
    scale_lr_by_world_size: bool = _opt(False, "lr x world_size (Horovod recipe, seed)")
    clip_grad_norm: float | None = _opt(None, "clip the global gradient norm to this value")


@dataclass
class ScheduleConfig:
    name: Literal["constant", "cosine", "step"] = _opt("constant", "learning-rate schedule")
    warmup_steps: int = _opt(0, "linear warm-up steps from 0 to the base lr")
    min_lr_ratio: float = _opt(0.0, "cosine: final lr / base lr")
    step_size: int = _opt(1000, "step: steps between decays")
    gamma: float = _opt(0.1, "step: decay factor")


@dataclass
class SGHMCConfig:
    """Ke & Fan's SGHMC with spike-and-slab groups (optim.name=sghmc; bayescale.kefan).
    Settings left null take the preset's value (Ke & Fan)."""

    preset: Literal["robust", "notebook", "fc_default", "cifar_script"] = _opt(
        "robust", "default set: robust (bayescale's: warm-up of one cycle, strong spike, "
                  "E-step threshold relative to the input layer's noise floor, ramped "
                  "restarts), notebook (SGHMC_SPL.md / notebooks), fc_default (FC/GNN "
                  "constructor), cifar_script (CNN constructor + main_cifar T = 1/N)")
    temperature: float | Literal["1/N", "1/sqrt(N)", "untempered"] | None = _opt(
        None, "the update's T: a number, 1/N, 1/sqrt(N), or untempered (targets p(w|D))")
    eta: float | None = _opt(None, "step size of the preconditioner (rho) update")
    betas: list[float] | None = _opt(None, "(beta1, beta2): 1 - friction, gradient scale")
    eps1: float | None = _opt(None, "slab weight decay delta1/N (per weight, mean-loss units)")
    eps0: float | None = _opt(None, "spike weight decay delta0/N")
    soft_threshold: float | None = _opt(None, "E-step: group mean w^2 below this -> spike")
    hard_threshold: float | None = _opt(None, "prune a group for good below this (mean w^2; "
                                              "conv channels/filters: max - min)")
    conv_soft_threshold: float | None = _opt(None, "soft_threshold of conv weights (default: "
                                                   "soft_threshold; their statistics differ)")
    conv_hard_threshold: float | None = _opt(None, "hard_threshold (range) of conv weights "
                                                   "(default: hard_threshold)")
    warm_up: int | None = _opt(None, "epochs before the E-step and pruning start")
    spike_clip: float | None = _opt(None, "clip the gradient norm to this many times its "
                                          "running average (robust: 3; 0: off)")
    probation_rel: float | None = _opt(None, "first E-step: inputs above this many times the "
                                             "noise floor stay in the slab on probation "
                                             "(robust: 4; 0: off)")
    probation: int | None = _opt(None, "epochs of that probation (robust: 100)")
    group: Literal["none", "cnn", "fc", "gnn", "cnn_fc"] | None = _opt(
        None, "groups: cnn (kernel slices; channels/filters), fc (input columns), gnn (output "
              "rows), cnn_fc (conv as cnn + linear as fc), none (dense)")
    cycles: int | None = _opt(None, "M, cycles of the cyclical cosine step size")
    samples_per_cycle: int = _opt(3, "weight samples kept at the last epoch ends of each "
                                     "cycle (RUN/samples/), averaged at the end")


@dataclass
class IVONConfig:
    """IVON, natural-gradient variational learning of a deterministic net (optim.name=ivon;
    bayescale.ivon; Shen et al. 2024). The learning rate is optim.lr."""

    ess: float | None = _opt(None, "effective sample size lambda (default: the training-set "
                                   "size); sigma = 1/sqrt(ess (h + weight_decay))")
    hess_init: float = _opt(1.0, "h0, the initial Hessian estimate (sets the initial sigma)")
    beta1: float = _opt(0.9, "momentum of the gradient average")
    beta2: float = _opt(0.99999, "momentum of the Hessian estimate h")
    weight_decay: float = _opt(1e-4, "delta, the prior precision per example (prior "
                                     "N(0, 1/(ess delta)))")
    mc_samples: int = _opt(1, "weight draws per step (each its own forward and backward)")
    clip_radius: float | None = _opt(None, "clip the preconditioned update elementwise to "
                                           "[-r, r] (null: no clipping)")
    rescale_lr: bool = _opt(True, "multiply optim.lr by hess_init + weight_decay (the "
                                  "paper's optional step-size rescaling)")


@dataclass
class KLConfig:
    weight: float = _opt(1.0, "beta: loss = NLL + beta * KL / N_train")
    schedule: Literal["constant", "linear", "cyclical", "blundell"] = _opt(
        "constant", "KL-weight schedule: linear annealing (TFP), cyclical (Fu et al. 2019), "
                    "blundell (per-minibatch 2^-i weights)")
    anneal_steps: int = _opt(0, "linear: steps from 0 to beta")
    cycles: int = _opt(4, "cyclical: number of cycles over the run")
    ratio: float = _opt(0.5, "cyclical: fraction of each cycle spent increasing")


@dataclass
class EvalConfig:
    samples: int = _opt(10, "MC weight samples for held-out evaluation")
    batch_size: int = _opt(1000, "evaluation batch size")
    every_epochs: int = _opt(1, "evaluate every N epochs (and at the end); 0 = end only")


@dataclass
class DistConfig:
    backend: Literal["auto", "gloo", "nccl"] = _opt("auto", "auto = nccl on CUDA, else gloo")
    broadcast_init: bool = _opt(True, "broadcast the initial state from rank 0 (Horovod hook)")
    timeout_s: int = _opt(1800, "collective timeout in seconds")
    bucket_cap_mb: float | None = _opt(None, "DDP gradient bucket size in MiB (smaller buckets "
                                             "start their all-reduce earlier in backward)")


@dataclass
class OutputConfig:
    dir: str = _opt("runs", "parent directory of run directories")
    name: str | None = _opt(None, "run directory name (default: <model>-<data>, made unique)")
    tensorboard: bool = _opt(True, "also write TensorBoard events when tensorboard is installed")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sghmc: SGHMCConfig = field(default_factory=SGHMCConfig)
    ivon: IVONConfig = field(default_factory=IVONConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    kl: KLConfig = field(default_factory=KLConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    output: OutputConfig = field(default_factory=OutputConfig)


_SECTIONS = [f.name for f in dataclasses.fields(Config)]


def _section_types() -> dict[str, type]:
    hints = typing.get_type_hints(Config)
    return {name: hints[name] for name in _SECTIONS}


def _leaf_fields() -> dict[str, tuple[Any, dataclasses.Field]]:
    out = {}
    for section, cls in _section_types().items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            out[f"{section}.{f.name}"] = (hints[f.name], f)
    return out


def config_keys() -> list[str]:
    """Every valid dotted key, e.g. ``optim.lr``."""
    return sorted(_leaf_fields())


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin is list:
        return f"list of {_type_name(get_args(tp)[0])}"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; returns the (possibly converted) value."""
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value in get_args(tp):
            return value
        close = difflib.get_close_matches(str(value), [str(a) for a in get_args(tp)], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{key}: {value!r} is not one of {_type_name(tp)}{hint}")
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
        return [_coerce(v, get_args(tp)[0], key) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {tp}")  # pragma: no cover


def _unknown(key: str) -> ConfigError:
    close = difflib.get_close_matches(key, config_keys(), n=1, cutoff=0.5)
    if not close:  # try the last part alone, e.g. "lr" -> "optim.lr"
        tail = key.rsplit(".", 1)[-1]
        close = [k for k in config_keys() if k.rsplit(".", 1)[-1] == tail][:1]
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"unknown config key {key!r}{hint} (see `bayescale train --help`)")


def config_from_dict(d: dict[str, Any] | None) -> Config:
    """Build a validated :class:`Config` from a nested dict (missing keys take defaults)."""
    d = d or {}
    if not isinstance(d, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(d).__name__}")
    leaves = _leaf_fields()
    sections = {}
    for section, cls in _section_types().items():
        given = d.get(section) or {}
        if not isinstance(given, dict):
            raise ConfigError(f"section {section!r} must be a mapping, got {given!r}")
        kwargs = {}
        for k, v in given.items():
            key = f"{section}.{k}"
            if key not in leaves:
                raise _unknown(key)
            kwargs[k] = _coerce(v, leaves[key][0], key)
        sections[section] = cls(**kwargs)
    for section in d:
        if section not in _SECTIONS:
            raise _unknown(str(section))
    cfg = Config(**sections)
    _check_values(cfg)
    return cfg


def _check_values(cfg: Config) -> None:
    name = cfg.output.name
    if name is not None and (name in ("", ".", "..") or "/" in name or "\\" in name
                             or "\0" in name):
        raise ConfigError(f"output.name must be a plain directory name (no '/', '..' or '\\'), "
                          f"got {name!r}; put the parent directory in output.dir")
    positive = {"train.batch_size": cfg.train.batch_size, "eval.samples": cfg.eval.samples,
                "eval.batch_size": cfg.eval.batch_size, "train.log_every": cfg.train.log_every,
                "train.mc_samples": cfg.train.mc_samples,
                "train.keep_checkpoints": cfg.train.keep_checkpoints}
    for key, v in positive.items():
        if v < 1:
            raise ConfigError(f"{key} must be >= 1, got {v}")
    if cfg.train.steps is None and not cfg.train.epochs > 0:
        raise ConfigError(f"train.epochs must be > 0 (or set train.steps), got {cfg.train.epochs}")
    if cfg.train.steps is not None and cfg.train.steps < 1:
        raise ConfigError(f"train.steps must be >= 1, got {cfg.train.steps}")
    if not cfg.optim.lr > 0:
        raise ConfigError(f"optim.lr must be > 0, got {cfg.optim.lr}")
    if cfg.kl.weight < 0:
        raise ConfigError(f"kl.weight must be >= 0, got {cfg.kl.weight}")
    if not 0.0 <= cfg.model.dropout < 1.0:
        raise ConfigError(f"model.dropout must be in [0, 1), got {cfg.model.dropout}")
    if cfg.train.mc_samples > 1 and cfg.optim.name == "ivon":
        raise ConfigError("train.mc_samples draws the Bayesian layers' noise; IVON draws its "
                          "own: set ivon.mc_samples instead (and train.mc_samples=1)")
    if isinstance(cfg.model.bayesian_layers, str) and cfg.model.bayesian_layers not in (
            "all", "last"):
        raise ConfigError(f"model.bayesian_layers must be all, last or a list of layer names, "
                          f"got {cfg.model.bayesian_layers!r}")
    if len(cfg.optim.betas) != 2:
        raise ConfigError(f"optim.betas needs two numbers, got {cfg.optim.betas}")
    k = cfg.sghmc
    if k.betas is not None and len(k.betas) != 2:
        raise ConfigError(f"sghmc.betas needs two numbers, got {k.betas}")
    if (k.cycles is not None and k.cycles < 1) or k.samples_per_cycle < 0:
        raise ConfigError(f"need sghmc.cycles >= 1 and sghmc.samples_per_cycle >= 0, got "
                          f"{k.cycles} and {k.samples_per_cycle}")
    _check_ivon(cfg.ivon)


def _check_ivon(v: IVONConfig) -> None:
    bad = [(key, val, need) for key, val, ok, need in [
        ("ess", v.ess, v.ess is None or v.ess > 0, "> 0 or null"),
        ("hess_init", v.hess_init, v.hess_init > 0, "> 0"),
        ("beta1", v.beta1, 0 <= v.beta1 < 1, "in [0, 1)"),
        ("beta2", v.beta2, 0 <= v.beta2 < 1, "in [0, 1)"),
        ("weight_decay", v.weight_decay, v.weight_decay >= 0, ">= 0"),
        ("mc_samples", v.mc_samples, v.mc_samples >= 1, ">= 1"),
        ("clip_radius", v.clip_radius, v.clip_radius is None or v.clip_radius > 0,
         "> 0 or null")] if not ok]
    if bad:
        key, val, need = bad[0]
        raise ConfigError(f"ivon.{key} must be {need}, got {val}")


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Nested plain dict (YAML/JSON-safe) of a config."""
    return dataclasses.asdict(cfg)


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(d: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings (values parsed as YAML) to a nested dict copy."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in (d or {}).items()}
    leaves = _leaf_fields()
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value, e.g. optim.lr=0.01")
        key, text = item.split("=", 1)
        key = key.strip()
        if key not in leaves:
            raise _unknown(key)
        section, name = key.split(".", 1)
        out.setdefault(section, {})
        if not isinstance(out[section], dict):
            raise ConfigError(f"section {section!r} must be a mapping")
        out[section][name] = _parse_value(text)
    return out


_SHIPPED = Path(__file__).resolve().parents[1] / "configs"


def shipped_configs() -> list[str]:
    """Names of the configs that ship with bayescale (``bayescale/configs/*.yaml``)."""
    return sorted(p.stem for p in _SHIPPED.glob("*.yaml"))


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A YAML path, or the name of a shipped config (``mnist_bnn_conv_flip``)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    shipped = _SHIPPED / f"{p.stem}.yaml"
    if p.suffix in ("", ".yaml") and p.parent == Path(".") and shipped.is_file():
        return shipped
    close = difflib.get_close_matches(p.stem, shipped_configs(), n=1)
    hint = f" (did you mean the shipped config {close[0]!r}?)" if close else ""
    raise FileNotFoundError(f"config {str(name_or_path)!r} is neither a file nor a shipped "
                            f"config{hint}; shipped: {', '.join(shipped_configs())}")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (path or shipped name; None = defaults) and apply overrides."""
    d: dict[str, Any] = {}
    if path is not None:
        p = resolve_config_path(path)
        try:
            d = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{p}: not valid YAML: {err}") from err
        if not isinstance(d, dict):
            raise ConfigError(f"{p}: a config must be a mapping of sections")
    return config_from_dict(apply_overrides(d, overrides or []))


def describe_options() -> str:
    """Every option with its type, default and help (for ``--help``)."""
    lines = []
    defaults = config_to_dict(Config())
    for key, (tp, f) in sorted(_leaf_fields().items(), key=lambda kv: kv[0]):
        section, name = key.split(".", 1)
        lines.append(f"  {key} ({_type_name(tp)}, default {defaults[section][name]!r}): "
                     f"{f.metadata['help']}")
    return "\n".join(lines)
