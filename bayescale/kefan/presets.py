"""Named settings of Ke & Fan's optimizer (:class:`bayescale.kefan.optimizer.SGHMCSpikeSlab`)
and what they imply: the preset table, the training schedule a preset asks for, and the
temperature formulas (the update's ``T`` against the posterior temperature it samples).

The authors' three default sets (:data:`PRESETS`) disagree, so each is named by its origin:
``"cifar_script"`` is the ``SGHMC_SPL_CNN.py`` constructor with T = 1/N as ``main_cifar*.py`` pass
it (group policy ``"cnn"``, M = 4 cycles); ``"fc_default"`` the ``SGHMC_SPL_FC.py``/``_GNN.py``
constructor and ``SGHMC_SPL.md`` signature (step default T = 1/50000, policy ``"fc"``, M = 6);
``"notebook"`` the ``SGHMC_SPL.md`` example and sparse-regression notebooks (eps1 2e-4 as in
Example 1, T = N^-1/2, warm-up 50, policy ``"fc"``, M = 6). Learning rates: notebooks h0 = 0.01,
CIFAR scripts h0 = 1.

``"robust"`` is bayescale's default, derived and measured in docs/kefan.md (the robustness
study).

Reference:
    Ke & Fan, "On the optimization and pruning for Bayesian deep learning", arXiv:2210.12957.
"""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

__all__ = ["PRESETS", "DEFAULT_PRESET", "SCHEDULE_KEYS", "resolve_hparams", "schedule_hparams",
           "untempered_temperature", "posterior_temperature"]

PRESETS: dict[str, dict[str, Any]] = {
    # SGHMC_SPL_CNN.py constructor; T = 1/N as main_cifar10.py / main_cifar100.py pass it (h0 = 1)
    "cifar_script": dict(betas=(0.1, 1.0), eps1=5e-4, eps0=1e-3, soft_threshold=1e-4,
                         hard_threshold=1e-2, warm_up=300, temperature="1/N", eta=0.1,
                         group="cnn", cycles=4),
    # SGHMC_SPL_FC.py / SGHMC_SPL_GNN.py constructor and the SGHMC_SPL.md signature
    "fc_default": dict(betas=(0.1, 1.0), eps1=5e-4, eps0=1e-1, soft_threshold=1e-2,
                       hard_threshold=1e-3, warm_up=3000, temperature=1 / 50000, eta=0.1,
                       group="fc", cycles=6),
    # SGHMC_SPL.md example and the sparse-regression notebooks (Example 1: eps1 = 2e-4, h0 = 0.01)
    "notebook": dict(betas=(0.1, 1.0), eps1=2e-4, eps0=1e-2, soft_threshold=1e-2,
                     hard_threshold=1e-3, warm_up=50, temperature="1/sqrt(N)", eta=0.1,
                     group="fc", cycles=6),
    # bayescale's default: the notebook set with the E-step and pruning held back until the
    # first cycle has ended, a spike strong enough to empty a group within a cycle, a larger
    # step size that climbs back at each restart, and the gradient's norm clipped to 3x its
    # running average, so that one loss spike at the peak step size cannot kill a narrow
    # layer's units; the first E-step keeps inputs between 2x and 8x the noise floor under the
    # slab for 100 more epochs, so that a half-learned interaction can rise once the noise
    # inputs are gone (docs/kefan.md, the robustness study)
    "robust": dict(betas=(0.1, 1.0), eps1=2e-4, eps0=1.0, soft_threshold=1e-3,
                   rel_threshold=8.0, probation_rel=2.0, probation=100, hard_threshold=1e-3,
                   warm_up=50,
                   temperature="1/sqrt(N)", eta=0.1, group="fc", cycles=4, h0=0.03, h0_bce=0.3,
                   ramp=0.1, warm_up_cycles=1.0, after_factor=4.0, spike_clip=3.0),
}
DEFAULT_PRESET = "robust"
# preset keys that belong to the training schedule, not to the optimizer
SCHEDULE_KEYS = ("cycles", "h0", "h0_bce", "ramp", "warm_up_cycles", "after_factor")


def untempered_temperature(num_train: int, lr: float, betas: tuple[float, float] = (0.1, 1.0),
                           tau: float | Tensor = 0.5) -> float | Tensor:
    """The spec's ``T`` at which the update samples the untempered posterior (module docstring)."""
    b1, b2 = betas
    return ((1 - b1) * b2 / ((1 + b1**2) * tau * num_train * math.sqrt(lr))) ** 0.5


def posterior_temperature(temperature: float, num_train: int, lr: float,
                          betas: tuple[float, float] = (0.1, 1.0), tau: float = 0.5) -> float:
    """``T_post`` sampled at the spec's ``T`` (1 = untempered, < 1 cold)."""
    b1, b2 = betas
    return (1 + b1**2) * tau * num_train * math.sqrt(lr) * temperature**2 / ((1 - b1) * b2)


def resolve_hparams(preset: str | None = DEFAULT_PRESET, **overrides: Any) -> dict[str, Any]:
    """A preset's hyper-parameters with the non-None ``overrides`` on top (None: the default
    preset, :data:`DEFAULT_PRESET`)."""
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown Ke & Fan preset {preset!r}; choose one of {sorted(PRESETS)}")
    out = dict(PRESETS[preset or DEFAULT_PRESET])
    out.update({k: v for k, v in overrides.items() if v is not None})
    out["betas"] = tuple(out["betas"])
    return out


def schedule_hparams(hp: dict[str, Any], epochs: int, h0: float | None = None,
                     loss: str = "mse") -> dict[str, Any]:
    """The training schedule a resolved preset ``hp`` asks for over ``epochs`` epochs:
    ``cycles``, ``h0`` (the argument, else the preset's - ``h0_bce`` for ``loss="bce"``, whose
    curvature in the logit is at most 1/4 against 2 for a mean squared error - else 0.01 as
    the notebooks), ``ramp``
    (0 unless the preset sets one), ``warm_up`` in epochs: ``warm_up_cycles`` cycles' worth of
    epochs when the preset sets that (``"robust"``: the whole first cycle), else its fixed
    ``warm_up``; and ``after_factor``, the factor on h in the epochs after the warm-up (1 unless
    the preset sets one: once the input layer is down to the selected inputs, the stiff
    direction that the correlated inputs gave it is gone and a larger step is stable)."""
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    cycles = int(hp["cycles"])
    wuc = hp.get("warm_up_cycles")
    warm_up = int(round(wuc * epochs / cycles)) if wuc is not None else int(hp["warm_up"])
    if h0 is None:
        h0 = hp.get("h0_bce", hp.get("h0")) if loss == "bce" else hp.get("h0")
    return {"cycles": cycles, "h0": float(h0 if h0 is not None else 0.01),
            "ramp": float(hp.get("ramp", 0.0)), "warm_up": warm_up,
            "after_factor": float(hp.get("after_factor", 1.0))}
