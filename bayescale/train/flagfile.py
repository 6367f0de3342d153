"""Translate the seed tutorial's absl flagfiles into a bayescale config.

The seed scripts (``CNN_BNN_Model.py`` and ``CIFAR10_BNN.py`` of Himscipy/bnn_hvd, spec
§2.2/§2.3) read ``--flagfile=config.cfg``. :func:`translate_flagfile` reads such a file and
returns the nested config dict of the equivalent ``bayescale train`` run, plus notes on flags that
have no effect here (thread pinning, verbosity) and on the seed's quirks it reproduces (the
learning rate scaled by the number of workers, the strong-scaling step budget, unsharded data).
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

__all__ = ["parse_flagfile", "translate_flags", "translate_flagfile", "SEED_FLAGS"]

_MNIST = {"data_dir", "model_data", "batch_size", "print_step", "iteration", "epochs", "UseEpoch",
          "learning_rate", "verbose", "model_type", "cnnConv", "bnnConv", "num_intra",
          "num_inter", "kmp_blocktime", "kmp_affinity"}
_CIFAR = {"learning_rate", "subtract_pixel_mean", "epochs", "batch_size", "model_dir",
          "num_monte_carlo", "print_step", "iterations", "DATA_PATH", "USE_EPOCH", "num_intra",
          "num_inter", "kmp_blocktime", "kmp_affinity", "verbose", "plotting", "kl_regularizer",
          "eval_freq", "DATA_NAME"}
SEED_FLAGS = frozenset(_MNIST | _CIFAR)
_IGNORED = {"num_inter", "kmp_blocktime", "kmp_affinity", "verbose", "eval_freq"}
_CNN_NAMES = {"cnn_conv": "CNN_conv", "cnn_fc": "CNN_FC"}
_BNN_NAMES = {n.lower(): n for n in ("BNN_conv_flip", "BNN_conv_nonflip", "BNN_FC_flip",
                                     "BNN_FC_nonflip")}


def parse_flagfile(path: str | Path, _depth: int = 0) -> dict[str, str]:
    """Read ``--name=value`` lines (absl syntax: ``#`` comments, ``--noflag``, nested flagfiles)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"flagfile {str(path)!r} does not exist; pass the seed's "
                                "config.cfg, e.g. --flagfile=src/RUN_ScriptBNN/config.cfg")
    if _depth > 8:
        raise ValueError(f"{path}: flagfiles nest more than 8 deep (a cycle?)")
    flags: dict[str, str] = {}
    for lineno, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", "//")):
            continue
        if not line.startswith("-"):
            raise ValueError(f"{path}:{lineno}: expected --name=value, got {raw!r}")
        body = line.lstrip("-")
        name, sep, value = body.partition("=")
        if not sep:  # boolean --flag / --noflag
            if name in SEED_FLAGS:
                name, value = name, "true"
            elif name.startswith("no") and name[2:] in SEED_FLAGS:
                name, value = name[2:], "false"
            else:
                value = "true"
        if name == "flagfile":
            flags.update(parse_flagfile((path.parent / value).resolve()
                                        if not os.path.isabs(value) else value, _depth + 1))
            continue
        flags[name] = value.strip().strip("'\"")
    return flags


def _bool(name: str, v: str) -> bool:
    low = v.lower()
    if low in ("true", "1", "yes", "t"):
        return True
    if low in ("false", "0", "no", "f"):
        return False
    raise ValueError(f"seed flag --{name} expects True/False, got {v!r}")


def _num(name: str, v: str, kind: type) -> Any:
    try:
        return kind(float(v)) if kind is int else kind(v)
    except ValueError as err:
        raise ValueError(f"seed flag --{name} expects a {kind.__name__}, got {v!r}") from err


def translate_flags(flags: dict[str, str]) -> tuple[dict[str, Any], list[str]]:
    """Seed flags -> (nested bayescale config dict, notes for the user)."""
    for name in flags:
        if name not in SEED_FLAGS:
            close = difflib.get_close_matches(name, sorted(SEED_FLAGS), n=1)
            hint = f" (did you mean --{close[0]}?)" if close else ""
            raise ValueError(f"unknown seed flag --{name}{hint}; known flags: "
                             f"{', '.join(sorted(SEED_FLAGS))}")
    cifar = bool(flags.keys() & (_CIFAR - _MNIST))
    notes: list[str] = []
    cfg: dict[str, dict[str, Any]] = {k: {} for k in ("model", "data", "train", "optim", "kl",
                                                        "eval", "output")}
    # The seed's Horovod recipe: lr x size, rank-0 broadcast, strong scaling, no data sharding.
    cfg["optim"].update(name="adam", scale_lr_by_world_size=True)
    cfg["train"]["scaling"] = "strong"
    cfg["data"]["shard"] = False
    if cifar:
        cfg["model"]["name"] = "CIFAR10_BNN_model"
        cfg["data"].update(name="cifar10", subtract_pixel_mean=True)
        defaults = {"learning_rate": "1e-4", "epochs": "700", "batch_size": "128",
                    "iterations": "100", "USE_EPOCH": "False", "print_step": "10",
                    "num_monte_carlo": "80", "kl_regularizer": "1"}
    else:
        defaults = {"learning_rate": "0.001", "epochs": "10", "batch_size": "64",
                    "iteration": "8000", "UseEpoch": "True", "print_step": "10",
                    "model_type": "BNN", "bnnConv": "BNN_conv_flip", "cnnConv": "CNN_conv"}
        cfg["data"]["name"] = "mnist"
    f = {**defaults, **flags}
    if not cifar:
        kind = f["model_type"].upper()
        if kind == "BNN":
            key = f["bnnConv"].lower()
            if key not in _BNN_NAMES:
                raise ValueError(f"--bnnConv={f['bnnConv']!r} is not one of "
                                 f"{sorted(_BNN_NAMES.values())}")
            cfg["model"]["name"] = _BNN_NAMES[key]
        elif kind == "CNN":
            key = f["cnnConv"].lower()
            if key not in _CNN_NAMES:
                raise ValueError(f"--cnnConv={f['cnnConv']!r} is not one of CNN_conv, CNN_FC")
            if f["cnnConv"] != _CNN_NAMES[key]:
                notes.append(f"--cnnConv={f['cnnConv']} read as {_CNN_NAMES[key]} (the seed "
                             "compares case-sensitively and would match no model)")
            cfg["model"]["name"] = _CNN_NAMES[key]
        else:
            raise ValueError(f"--model_type={f['model_type']!r} must be BNN or CNN")
        if kind == "BNN" and "learning_rate" in flags and float(flags["learning_rate"]) != 1e-3:
            notes.append("the seed's BNN branch ignores --learning_rate (hard-coded 0.001); "
                         f"bayescale uses the flag's {flags['learning_rate']}")
    use_epoch = _bool("UseEpoch", f["USE_EPOCH" if cifar else "UseEpoch"])
    cfg["train"]["batch_size"] = _num("batch_size", f["batch_size"], int)
    cfg["train"]["log_every"] = _num("print_step", f["print_step"], int)
    cfg["optim"]["lr"] = _num("learning_rate", f["learning_rate"], float)
    if use_epoch:
        cfg["train"]["epochs"] = _num("epochs", f["epochs"], float)
    else:
        cfg["train"]["steps"] = _num("iteration", f["iterations" if cifar else "iteration"], int)
    if cifar:
        beta = _num("kl_regularizer", f["kl_regularizer"], float)
        cfg["kl"]["weight"] = min(1.0, beta)  # the seed uses min(1, beta)
        cfg["eval"]["samples"] = _num("num_monte_carlo", f["num_monte_carlo"], int)
        if "subtract_pixel_mean" in flags:
            cfg["data"]["subtract_pixel_mean"] = _bool("subtract_pixel_mean",
                                                       flags["subtract_pixel_mean"])
        if "DATA_PATH" in flags:
            cfg["data"]["root"] = str(Path(flags["DATA_PATH"]).parent)
        if "model_dir" in flags:
            cfg["output"]["dir"] = flags["model_dir"]
        if "plotting" in flags and _bool("plotting", flags["plotting"]):
            cfg["train"]["posterior_every"] = cfg["train"]["log_every"]
        if flags.get("DATA_NAME", "CIFAR-10").upper() not in ("CIFAR-10", "CIFAR10"):
            raise ValueError(f"--DATA_NAME={flags['DATA_NAME']!r}: the seed implements CIFAR-10 "
                             "only")
    else:
        if "data_dir" in flags:
            cfg["data"]["root"] = flags["data_dir"]
        if "model_data" in flags:
            cfg["output"]["dir"] = flags["model_data"]
    if "num_intra" in flags:
        notes.append(f"--num_intra={flags['num_intra']} not copied: bayescale sets threads per "
                     "worker from the cores available (override with train.threads=N)")
    ignored = sorted(flags.keys() & _IGNORED)
    if ignored:
        notes.append(f"ignored (no effect in PyTorch): {', '.join('--' + n for n in ignored)}")
    return {k: v for k, v in cfg.items() if v}, notes


def translate_flagfile(path: str | Path) -> tuple[dict[str, Any], list[str]]:
    """Read a seed flagfile and translate it (see :func:`translate_flags`)."""
    return translate_flags(parse_flagfile(path))
