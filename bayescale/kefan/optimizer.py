"""Ke & Fan's optimizer: adaptive variational Bayes as preconditioned SGHMC, with a spike-and-slab
group prior whose E-step switches weight decays and prunes groups for good (Ke & Fan).

One :class:`torch.optim.Optimizer`, :class:`SGHMCSpikeSlab` (the authors' ``SGHMC_SPL``). Per
weight ``w`` with ``g`` = gradient of the **mean** minibatch loss, ``N`` = training-set size,
``h = C^2`` the learning rate, ``T`` the temperature, ``eps`` = eps1 (slab) or eps0 (spike):

    rho <- rho - eta * (T^2 C^3 eps tau + T C^1.5 xi_prev g - 1 / (tau N))   # preconditioner
    tau <- sigmoid(rho);  xi ~ N(0, I)
    r   <- beta1 r - C^2 beta2 (g + eps w) + sqrt(2 + 2 beta1^2) C^1.5 T xi    # momentum + noise
    w   <- (w + tau r) * hard_mask

The prior is only in the weight decays, ``eps = delta / N`` (prior N(0, 1/delta) per weight), so
train on the mean NLL alone. No mean or variance tensors exist: the weights *are* the samples.
State per weight: ``rho``, ``tau``, ``momentum``, ``noise`` (4 floats; with the weight 5, against
6 for a mean-field layer trained with Adam); the spike-and-slab masks are kept per group (bools).

**Which T targets the untempered posterior.** With ``tau`` frozen, put ``v = tau r``:
``v <- beta1 v - eta_s grad U + noise``, ``w <- w + v``, where ``U = -log p(D|w) - log p(w)`` and
``eta_s = tau h beta2 / N`` (since ``g + eps w = grad U / N`` for a mean loss). That is SGHMC
(Chen et al. 2014, eq. 15) with friction ``alpha = 1 - beta1``, which samples ``p(w|D)^(1/T_post)``
when the noise variance is ``2 alpha eta_s T_post``. The update injects ``tau^2 (2 + 2 beta1^2)
h^1.5 T^2``, hence

    T_post = (1 + beta1^2) tau N sqrt(h) T^2 / ((1 - beta1) beta2)
    T_post = 1  <=>  T = sqrt((1 - beta1) beta2 / ((1 + beta1^2) tau N sqrt(h)))

(:func:`untempered_temperature`). So the notebooks' ``T = N^-1/2`` has the right ``N``-scaling but
is untempered only where ``tau sqrt(h) = 0.89`` (beta = (0.1, 1)); at ``h = 0.01`` and ``tau`` in
[0.5, 1] it samples at T_post = 0.06-0.11, colder still as ``h`` anneals; the CIFAR scripts'
``T = 1/N`` is close to plain SGD with momentum. "The posterior" is that of the likelihood whose
mean NLL gives ``g``: a mean MSE is the NLL of Gaussian noise of variance 1/2, not 1.
``temperature="untempered"`` applies the formula per weight and step (with the current ``tau``),
so the chain targets ``p(w|D)`` at every ``h`` (tested on Bayesian linear regression);
neglected, as in Chen et al.'s practical form: minibatch-gradient noise, the O(h) discretisation
error, and the drift of ``tau`` when ``eta > 0``.

**Presets**: :mod:`bayescale.kefan.presets` (the authors' three sets, named by origin, and
bayescale's ``"robust"`` default).

**Groups** (Ke & Fan; :mod:`bayescale.kefan.groups` does the maths): ``"cnn"`` conv weights, E-step
per
k x k kernel slice, input channels and filters pruned when their range ``max - min`` is below the
hard threshold; ``"fc"`` 2-D weights by input column; ``"gnn"`` 2-D weights by output row (both
pruned by mean square); ``"cnn_fc"`` conv weights as ``"cnn"`` and linear weights as ``"fc"``;
``"none"`` dense. Everything else (biases, norms) keeps eps1 and is never pruned.

**Data-parallel**: gradients arrive all-reduced, and the noise comes from the optimizer's own
generator, seeded alike on every rank and saved in ``state_dict``, so ranks stay bit-identical.

Training with it (cyclical schedule, samples, BMA, sparsity log): :mod:`bayescale.train.sghmc`.

References:
    Ke & Fan, "On the optimization and pruning for Bayesian deep learning", arXiv:2210.12957.
    Chen, Fox & Guestrin, "Stochastic Gradient Hamiltonian Monte Carlo", ICML 2014.
    Zhang et al., "Cyclical Stochastic Gradient MCMC for Bayesian Deep Learning", ICLR 2020.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .groups import (
    expand_group_mask,
    group_mean_square,
    hard_prune_groups,
    layer_sparsity,
    noise_floor_threshold,
    sparsity,
    spike_slab_estep,
)
from .presets import (
    DEFAULT_PRESET,
    PRESETS,
    SCHEDULE_KEYS,
    posterior_temperature,
    resolve_hparams,
    schedule_hparams,
    untempered_temperature,
)

__all__ = ["SGHMCSpikeSlab", "PRESETS", "DEFAULT_PRESET", "GROUP_POLICIES", "TEMPERATURES",
           "resolve_hparams", "schedule_hparams", "untempered_temperature",
           "posterior_temperature", "sparsity", "layer_sparsity"]

GROUP_POLICIES = ("none", "cnn", "fc", "gnn", "cnn_fc")
TEMPERATURES = ("1/N", "1/sqrt(N)", "untempered")

SPIKE_CLIP_BETA = 0.98  # the running average of the gradient norm forgets over ~50 steps


@dataclass(frozen=True)
class _Rule:
    estep: str                           # grouping of the E-step (groups.GROUPINGS)
    prune: tuple[tuple[str, str], ...]   # (grouping, rule) pairs of the hard pruning


_CNN = _Rule("kernel", (("in", "range"), ("out", "range")))
_FC = _Rule("in", (("in", "mean_square"),))
_GNN = _Rule("out", (("out", "mean_square"),))


def _rule(policy: str, p: Tensor) -> _Rule | None:
    """Which spike-and-slab rule (Ke & Fan) parameter ``p`` follows under ``policy``."""
    if p.dim() >= 3 and policy in ("cnn", "cnn_fc"):
        return _CNN
    if p.dim() == 2 and policy in ("fc", "cnn_fc"):
        return _FC
    if p.dim() == 2 and policy == "gnn":
        return _GNN
    return None


def _check(ok: bool, msg: str) -> None:
    if not ok:
        raise ValueError(msg)


PROBATION_BAR = 2.0  # a group on probation must clear this many times the E-step threshold
PROBATION_SPREAD = 5.0  # ... and this many times the probation set's median, when it has
PROBATION_MIN_SET = 20  # at least this many groups (then mostly noise: a noise floor of its own)


def probation_bar(w: Tensor, probation: Tensor, threshold: float, grouping: str) -> float:
    """The mean square a group on probation must reach when the probation ends:
    ``PROBATION_BAR * threshold``, and ``PROBATION_SPREAD`` times the median over the groups on
    probation if there are ``PROBATION_MIN_SET`` or more (held in the slab, the noise groups
    among them have grown too; this is their own floor)."""
    bar = PROBATION_BAR * threshold
    if int(probation.sum()) >= PROBATION_MIN_SET:
        ms = group_mean_square(w, grouping)[probation]
        bar = max(bar, PROBATION_SPREAD * float(ms.median()))
    return bar


class SGHMCSpikeSlab(torch.optim.Optimizer):
    """Ke & Fan's SGHMC with spike-and-slab group prior (``SGHMC_SPL``; see the module docstring).

    Args:
        params: parameters or param groups (a group may set its own ``group`` policy etc.).
        num_train: N, the training-set size (the gradient is of a mean loss).
        lr: h = C^2, the step size (set it every step from the cyclical schedule).
        temperature: the spec's T: a number, ``"1/N"``, ``"1/sqrt(N)"`` or ``"untempered"``
            (T per weight and step such that the chain targets p(w|D)).
        eta: step size of the preconditioner update (0 freezes tau at 1/2).
        betas: (beta1, beta2) = (1 - friction, gradient scale).
        eps1: slab weight decay delta1 / N; eps0: spike weight decay delta0 / N.
        soft_threshold: E-step threshold on a group's mean w^2 (below: spike).
        rel_threshold: if > 0, the input layer's E-step threshold is
            ``max(soft_threshold, rel_threshold * median group mean w^2)``
            (:func:`bayescale.kefan.groups.noise_floor_threshold`), never lowered from one
            E-step to the next (kept as ``state[p]["threshold"]``), with hysteresis: after the
            first E-step a group already under the slab stays there until its mean w^2 falls
            below ``soft_threshold``; the input layer is the first 2-D weight under an
            ``"fc"``/``"cnn_fc"`` rule, in parameter order. 0: off.
        probation_rel, probation: with ``rel_threshold``, the first E-step also keeps under
            the slab, for ``probation`` E-steps (epochs, the first included), the groups
            between ``probation_rel`` and ``rel_threshold`` times the median: an input whose
            signal the dense warm-up has only half learned (an interaction) gets a chance to
            rise once the noise groups are gone. When the probation ends, a group stays in the
            slab only if it clears :func:`probation_bar` - twice the stored threshold, and five
            times the median of the groups on probation when there are 20 or more: a noise input
            held in the slab creeps up, a half-learned signal grows several-fold - and is
            otherwise held under the spike until it does. ``probation_rel = 0``: off.
        hard_threshold: pruning threshold (mean w^2, or range for conv weights).
        warm_up: ``step(epoch=e, batch=0)`` runs the E-step and pruning when ``e > warm_up``.
        group: spike-and-slab group policy, one of ``GROUP_POLICIES``.
        seed: seed of the noise generator (the same on every data-parallel rank).
        momentum_init_std: the momentum starts as ``momentum_init_std * N(0, 1)``
            (the authors' 0.001).
        spike_clip: if > 0, before each update the gradient (all parameters together, pruned
            weights left out) is rescaled to norm at most ``spike_clip`` times the running
            average of its clipped norm (decay ``SPIKE_CLIP_BETA``; the first step sets it), as
            AutoClip's history-relative clipping (Seetharaman et al. 2020). It acts on loss
            spikes only; ``clipped_steps`` counts the steps it rescaled. 0 / None: off (the
            authors' presets).
        preset: a name in ``PRESETS`` supplying every argument left as None.
    """

    def __init__(self, params: Iterable[Tensor] | Iterable[dict], num_train: int,
                 lr: float = 0.01, *, preset: str | None = DEFAULT_PRESET,
                 temperature: float | str | None = None, eta: float | None = None,
                 betas: tuple[float, float] | None = None, eps1: float | None = None,
                 eps0: float | None = None, soft_threshold: float | None = None,
                 rel_threshold: float | None = None,
                 hard_threshold: float | None = None, warm_up: int | None = None,
                 group: str | None = None, seed: int = 0, momentum_init_std: float = 1e-3,
                 spike_clip: float | None = None, probation_rel: float | None = None,
                 probation: int | None = None) -> None:
        hp = resolve_hparams(preset, temperature=temperature, eta=eta, betas=betas, eps1=eps1,
                             eps0=eps0, soft_threshold=soft_threshold,
                             rel_threshold=rel_threshold, hard_threshold=hard_threshold,
                             warm_up=warm_up, group=group, spike_clip=spike_clip,
                             probation_rel=probation_rel, probation=probation)
        for k in SCHEDULE_KEYS:
            hp.pop(k, None)
        clip = float(hp.pop("spike_clip", 0.0) or 0.0)
        _check(math.isfinite(clip) and clip >= 0,
               f"spike_clip is a factor on the gradient norm's running average (> 0; 0 or None "
               f"turns it off), got {spike_clip!r}")
        hp.setdefault("rel_threshold", 0.0)  # the authors' presets: a fixed E-step threshold
        hp.setdefault("probation_rel", 0.0)
        hp.setdefault("probation", 0)
        defaults = dict(lr=lr, num_train=num_train, **hp)
        self._validate(defaults)
        super().__init__(params, defaults)
        for g in self.param_groups:
            self._validate(g)
        self.seed, self.momentum_init_std = int(seed), float(momentum_init_std)
        self.spike_clip = clip
        self.grad_norm_avg: float | None = None  # the running average spike_clip refers to
        self.clipped_steps = 0
        self._gens: dict[str, torch.Generator] = {}
        self._pending_gen_states: dict[str, Tensor] = {}

    @staticmethod
    def _validate(g: dict[str, Any]) -> None:
        b1, b2 = g["betas"]
        t = g["temperature"]
        _check(isinstance(g["num_train"], int) and g["num_train"] >= 1,
               f"num_train must be the training-set size (an int >= 1), got {g['num_train']!r}")
        _check(g["lr"] >= 0, f"lr (h = C^2) must be >= 0, got {g['lr']}")
        _check(0 <= b1 < 1 and 0 < b2 <= 1, f"need 0 <= beta1 < 1 and 0 < beta2 <= 1, got "
               f"betas={g['betas']} (the spec's defaults are (0.1, 1))")
        for k in ("eta", "eps1", "eps0", "soft_threshold", "rel_threshold", "hard_threshold",
                  "probation_rel"):
            _check(g[k] >= 0, f"{k} must be >= 0, got {g[k]}")
        _check(isinstance(g["probation"], int) and g["probation"] >= 0,
               f"probation is a number of E-steps (an int >= 0), got {g['probation']!r}")
        _check(g["probation_rel"] == 0 or (g["rel_threshold"] > 0 and g["probation"] > 0
                                           and g["probation_rel"] < g["rel_threshold"]),
               f"probation_rel needs rel_threshold > probation_rel > 0 and probation >= 1, got "
               f"{g['probation_rel']}, {g['rel_threshold']}, {g['probation']}")
        _check(isinstance(g["warm_up"], int) and g["warm_up"] >= 0,
               f"warm_up is a number of epochs (an int >= 0), got {g['warm_up']!r}")
        _check(t in TEMPERATURES or (isinstance(t, int | float) and t > 0),
               f"temperature must be > 0 or one of {TEMPERATURES}, got {t!r}")
        _check(g["group"] in GROUP_POLICIES,
               f"unknown group policy {g['group']!r}; choose one of {GROUP_POLICIES}")

    # -- noise generator (identical on every rank, checkpointed) -----------------------------
    def _gen(self, device: torch.device) -> torch.Generator:
        key = str(device)
        if key not in self._gens:
            gen = torch.Generator(device=device)
            gen.manual_seed(self.seed)
            if key in self._pending_gen_states:
                gen.set_state(self._pending_gen_states.pop(key))
            self._gens[key] = gen
        return self._gens[key]

    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        states = {k: g.get_state() for k, g in self._gens.items()}
        sd["generators"] = {**self._pending_gen_states, **states}
        sd["spike_clip"] = {"grad_norm_avg": self.grad_norm_avg,
                            "clipped_steps": self.clipped_steps}
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        gens = state_dict.pop("generators", {})
        clip = state_dict.pop("spike_clip", {})
        self.grad_norm_avg = clip.get("grad_norm_avg")
        self.clipped_steps = int(clip.get("clipped_steps", 0))
        super().load_state_dict(state_dict)
        for st in self.state.values():  # torch casts every state tensor to the param's dtype
            for k in st:
                if k in ("slab", "probation") or k.startswith("keep_"):
                    st[k] = st[k].bool()
        self._gens, self._pending_gen_states = {}, {k: v.cpu() for k, v in gens.items()}

    # -- state -------------------------------------------------------------------------------
    def _init_states(self) -> None:
        """Create missing state, parameter by parameter in order (the noise stream's order)."""
        for g in self.param_groups:
            for p in g["params"]:
                if p not in self.state or not self.state[p]:
                    self._new_state(p, g["group"])

    def _new_state(self, p: Tensor, policy: str) -> None:
        st = self.state[p]
        if not st:
            gen = self._gen(p.device)
            st["step"] = 0
            st["rho"] = torch.zeros_like(p)
            st["tau"] = torch.full_like(p, 0.5)
            st["momentum"] = torch.randn(p.shape, generator=gen, device=p.device,
                                         dtype=p.dtype).mul_(self.momentum_init_std)
            st["noise"] = torch.randn(p.shape, generator=gen, device=p.device, dtype=p.dtype)
            rule = _rule(policy, p)
            if rule is not None:  # masks per group, True = slab / kept
                st["any_spike"], st["any_pruned"] = False, False
                st["slab"] = torch.ones(_num(p, rule.estep), dtype=torch.bool, device=p.device)
                for grouping, _ in rule.prune:
                    st[f"keep_{grouping}"] = torch.ones(_num(p, grouping), dtype=torch.bool,
                                                        device=p.device)

    def hard_mask(self, p: Tensor) -> Tensor | None:
        """Boolean mask of ``p``'s surviving weights (None: nothing of ``p`` is pruned)."""
        st = self.state.get(p, {})
        if not st.get("any_pruned", False):
            return None
        masks = [expand_group_mask(st[k], p.shape, k[5:]) for k in st if k.startswith("keep_")]
        out = masks[0]
        for m in masks[1:]:
            out = out & m
        return out

    def spike_mask(self, p: Tensor) -> Tensor | None:
        """True where ``p``'s weights are under the spike (None: all under the slab)."""
        policy = next(g["group"] for g in self.param_groups if any(q is p for q in g["params"]))
        return self._spike(p, _rule(policy, p), torch.bool)

    def _spike(self, p: Tensor, rule: _Rule | None, dtype: torch.dtype) -> Tensor | None:
        """The spike indicator broadcast (a view, no copy) to ``p``'s shape, as ``dtype``."""
        st = self.state.get(p, {})
        if rule is None or not st.get("any_spike", False):
            return None
        return expand_group_mask((~st["slab"]).to(dtype), p.shape, rule.estep)

    def input_weight(self) -> Tensor | None:
        """The input layer's weight: the first 2-D parameter under the ``"fc"`` rule (None if
        none); ``rel_threshold`` applies to it alone, since only in a layer of many, mostly
        useless groups is the median a noise floor."""
        for g in self.param_groups:
            for p in g["params"]:
                if _rule(g["group"], p) is _FC:
                    return p
        return None

    # -- E-step and pruning ------------------------------------------------------------------
    @torch.no_grad()
    def em_step(self, groups: list[dict[str, Any]] | None = None) -> None:
        """Spike-and-slab E-step and permanent group pruning (Ke & Fan) of every parameter with
        a rule, in ``groups`` (default all); the pure functions of :mod:`bayescale.kefan.groups`
        decide, on the current weights. As in the spec, the next update zeroes what was pruned
        (``w <- (w + tau r) * hard_mask``) and keeps it zero."""
        self._init_states()
        first = self.input_weight()
        for g in self.param_groups if groups is None else groups:
            for p in g["params"]:
                rule = _rule(g["group"], p)
                if rule is None:
                    continue
                st = self.state[p]
                thr = g["soft_threshold"]
                if p is first and g["rel_threshold"] > 0:  # the floor only rises: pruning the
                    # noise groups must not lower the bar for the ones still decaying
                    thr = max(st.get("threshold", 0.0), noise_floor_threshold(
                        p, rule.estep, g["soft_threshold"], g["rel_threshold"]))
                    # hysteresis: a group the slab holds already stays there until it falls
                    # below soft_threshold; one under the spike must clear thr to come back
                    slab = spike_slab_estep(p, rule.estep, thr)
                    if "threshold" in st:  # (groups on probation have not earned hysteresis)
                        held = st["slab"] & ~st.get("probation", torch.zeros_like(slab))
                        slab |= held & spike_slab_estep(p, rule.estep, g["soft_threshold"])
                    elif g["probation_rel"] > 0:
                        st["probation"] = ~slab & spike_slab_estep(p, rule.estep, max(
                            g["soft_threshold"], thr * g["probation_rel"] / g["rel_threshold"]))
                        st["probation_left"] = g["probation"] + 1
                    if "probation" in st:  # held in the slab for the probation; from its
                        # end on, under the spike until it clears the bar
                        pro = st["probation"]
                        st["probation_left"] = max(0, st["probation_left"] - 1)
                        if st["probation_left"] > 0:
                            slab = slab | pro
                        else:
                            pro &= ~spike_slab_estep(p, rule.estep, probation_bar(p, pro, thr,
                                                                                  rule.estep))
                            slab = slab & ~pro
                    st["slab"] = slab
                else:
                    st["slab"] = spike_slab_estep(p, rule.estep, thr)
                st["threshold"] = thr
                st["any_spike"] = not bool(st["slab"].all())
                cuts = [(grouping, hard_prune_groups(p, grouping, g["hard_threshold"], how))
                        for grouping, how in rule.prune]  # all decided on the same w
                for grouping, cut in cuts:
                    st[f"keep_{grouping}"] &= ~cut
                st["any_pruned"] = not all(bool(st[f"keep_{k}"].all()) for k, _ in rule.prune)

    # -- the update --------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None, *, epoch: int | None = None,
             batch: int | None = None) -> Tensor | None:
        """One update. With ``epoch``/``batch`` given, the E-step and pruning run first when
        ``epoch > warm_up and batch == 0`` (the spec's once-per-epoch rule, 0-based epochs)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._init_states()
        if epoch is not None and batch == 0:
            due = [g for g in self.param_groups if epoch > g["warm_up"]]
            if due:
                self.em_step(due)
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is not None and p.grad.is_sparse:
                    raise RuntimeError("SGHMCSpikeSlab does not support sparse gradients")
        masks = {p: self.hard_mask(p) for g in self.param_groups for p in g["params"]
                 if p.grad is not None}  # fixed until the next E-step: computed once per step
        if self.spike_clip > 0:
            self._clip_spike(masks)
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is not None:
                    self._update(p, g, masks[p])
        return loss

    def _clip_spike(self, masks: dict[Tensor, Tensor | None]) -> None:
        """Rescale the gradient to norm <= ``spike_clip`` x its running average (the
        ``spike_clip`` argument); pruned weights are left out of the norm. Under
        data-parallel training the gradients are all-reduced already, so every rank decides
        alike."""
        norms = [torch.linalg.vector_norm((p.grad if m is None else p.grad * m).float())
                 for p, m in masks.items()]
        if not norms:
            return
        dev = norms[0].device  # one host sync for the whole norm
        norm = float(torch.linalg.vector_norm(torch.stack([n.to(dev) for n in norms])))
        avg = self.grad_norm_avg
        if not math.isfinite(norm):
            return  # left to the update (a NaN loss is the training loop's to report)
        if avg is not None and norm > self.spike_clip * avg:
            scale = self.spike_clip * avg / norm
            for g in self.param_groups:
                for p in g["params"]:
                    if p.grad is not None:
                        p.grad.mul_(scale)
            norm = self.spike_clip * avg
            self.clipped_steps += 1
        self.grad_norm_avg = norm if avg is None else (
            SPIKE_CLIP_BETA * avg + (1 - SPIKE_CLIP_BETA) * norm)

    def _update(self, p: Tensor, g: dict[str, Any], mask: Tensor | None) -> None:
        """The spec's update, in place on the state (no weight-sized temporaries except the
        1/sqrt(tau) of ``"untempered"``): xi_prev and tau serve as scratch before they are
        redrawn / recomputed."""
        st = self.state[p]
        st["step"] += 1
        h, n, (b1, b2), eta = g["lr"], g["num_train"], g["betas"], g["eta"]
        eps1, d_eps = g["eps1"], g["eps0"] - g["eps1"]
        grad, rho, tau, r, xi = p.grad, st["rho"], st["tau"], st["momentum"], st["noise"]
        spike = self._spike(p, _rule(g["group"], p), p.dtype)  # 0/1 view: eps = eps1 + spike d
        untempered = g["temperature"] == "untempered"
        # rho <- rho - eta (T^2 C^3 eps tau + T C^1.5 xi_prev g - 1 / (tau N))
        xi.mul_(grad)
        if untempered:  # T^2 = k / (tau sqrt(h)): T^2 C^3 eps tau = k h eps, T C^1.5 = sqrt(kh/tau)
            k = (1 - b1) * b2 / ((1 + b1**2) * n)
            tau.rsqrt_()
            xi.mul_(tau)
            rho.add_(xi, alpha=-eta * math.sqrt(k * h)).sub_(eta * k * h * eps1)
            if spike is not None:
                rho.sub_(spike * (eta * k * h * d_eps))
            tau.square_()  # 1 / tau
        else:
            t = _spec_t(g["temperature"], n)
            rho.add_(xi, alpha=-eta * t * h**0.75).add_(tau, alpha=-eta * t * t * h**1.5 * eps1)
            if spike is not None:
                rho.addcmul_(tau, spike, value=-eta * t * t * h**1.5 * d_eps)
            tau.reciprocal_()
        rho.add_(tau, alpha=eta / n)
        torch.sigmoid(rho, out=tau)
        xi.normal_(generator=self._gen(p.device))
        # r <- beta1 r - C^2 beta2 (g + eps w) + sqrt(2 + 2 beta1^2) C^1.5 T xi
        r.mul_(b1).add_(grad, alpha=-h * b2).add_(p, alpha=-h * b2 * eps1)
        if spike is not None:
            r.addcmul_(spike, p, value=-h * b2 * d_eps)
        if untempered:  # sqrt(2 + 2 beta1^2) C^1.5 T = sqrt(2 (1 - beta1) beta2 h / (tau N))
            r.addcmul_(xi, tau.rsqrt(), value=math.sqrt(2 * (1 - b1) * b2 * h / n))
        else:
            r.add_(xi, alpha=math.sqrt(2 + 2 * b1**2) * h**0.75 * _spec_t(g["temperature"], n))
        p.addcmul_(tau, r)
        if mask is not None:  # this step's hard mask (step() computes it once)
            p.mul_(mask)


def _num(p: Tensor, grouping: str) -> int:
    return {"out": p.shape[0], "in": p.shape[1], "kernel": p.shape[0] * p.shape[1]}[grouping]


def _spec_t(temperature: float | str, n: int) -> float:
    return {"1/N": 1 / n, "1/sqrt(N)": n**-0.5}.get(temperature, temperature)  # type: ignore
