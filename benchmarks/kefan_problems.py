"""Generated sparse-selection problems of the Ke & Fan family, and the three ways the robustness
study (``kefan_bench.py robustness``) fits them: Ke & Fan's SGHMC with spike-and-slab input
groups, the oracle (the same net, Adam, the true inputs only) and an L1 baseline (scikit-learn).

Every problem draws ``x = (r_0 + r_j) / sqrt(2)`` with ``r ~ N(0, 1)`` (pairwise correlation 0.5,
as the authors' ``data_generator1.py``); a few inputs enter the truth, the rest are noise.
``example1`` is the spec's Example 1 exactly (its fixed data seed, scipy ``truncnorm``); the
others draw new data for every seed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from bayescale.kefan.optimizer import (
    SGHMCSpikeSlab,
    resolve_hparams,
    schedule_hparams,
    sparsity,
)
from bayescale.kefan.stability import (
    inclusion_frequency,
    pruned_signal,
    support_stability,
    warmup_stall,
)
from bayescale.train.schedules import cycle_sample_steps, cyclical_cosine

Truth = Callable[[np.ndarray], np.ndarray]
SCORE_REL = 8.0  # the score test's cut (pruned_signal): noise columns reach 3-5


def _ex1(x: np.ndarray) -> np.ndarray:
    return (np.tanh(2 * np.tanh(2 * x[:, 0] - x[:, 1]))
            + 2 * np.tanh(np.tanh(x[:, 2] - 2 * x[:, 3])) - np.tanh(2 * x[:, 4]))


def _deep(x: np.ndarray) -> np.ndarray:
    return (2 * np.tanh(x[:, 0] - 2 * x[:, 1]) + np.tanh(2 * x[:, 2]) - 1.5 * np.tanh(x[:, 3])
            + np.maximum(x[:, 4], 0) - np.maximum(x[:, 5], 0))


def _interaction(x: np.ndarray) -> np.ndarray:
    return 2 * np.sin(x[:, 0] * x[:, 1]) + np.tanh(2 * x[:, 2] - x[:, 3]) + np.tanh(2 * x[:, 4])


def _logit(x: np.ndarray) -> np.ndarray:  # with an interaction: tanh(x3 x4)
    return 3 * (np.tanh(2 * x[:, 0] - x[:, 1]) + np.tanh(x[:, 2] * x[:, 3]) - np.tanh(2 * x[:, 4]))


def _logit_add(x: np.ndarray) -> np.ndarray:  # additive, as Example 1
    return 2 * (np.tanh(2 * x[:, 0] - x[:, 1]) + 2 * np.tanh(x[:, 2] - 2 * x[:, 3])
                - np.tanh(2 * x[:, 4]))


@dataclass(frozen=True)
class Problem:
    """One problem type: ``p`` inputs, the true ones at ``true_inputs`` (0-based), a ReLU MLP
    ``p-widths-1``, loss ``"mse"`` (y = truth + N(0, 1)) or ``"bce"`` (y ~ Bernoulli(sigmoid))."""

    name: str
    p: int
    true_inputs: tuple[int, ...]
    widths: tuple[int, ...]
    loss: str
    truth: Truth
    n_train: int = 10240
    n_test: int = 1024
    fixed_data: bool = False  # the spec's Example 1: one data set, seeds vary the chain only

    def data(self, seed: int) -> tuple[torch.Tensor, ...]:
        """(x_train, y_train, x_test, y_test) as float32 tensors, y of shape (n, 1)."""
        if self.fixed_data:
            return (*_example1(self.n_train, self.p), *_example1(self.n_test, self.p))
        rs = np.random.RandomState(1000 + seed)
        out = []
        for n in (self.n_train, self.n_test):
            r = rs.randn(n, self.p + 1)
            x = (r[:, :1] + r[:, 1:]) / math.sqrt(2)
            f = self.truth(x[:, list(self.true_inputs)])
            y = (f + rs.randn(n) if self.loss == "mse"
                 else (rs.rand(n) < 1 / (1 + np.exp(-f))).astype(np.float64))
            out += [torch.from_numpy(x).float(), torch.from_numpy(y).float()[:, None]]
        return tuple(out)


def _example1(n: int, p: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The spec's Example 1 generator (``np.random.seed(5041294)`` on every call)."""
    from scipy.stats import truncnorm

    np.random.seed(5041294)
    error = np.random.randn(n, 1)
    r = truncnorm.rvs(-10, 10, size=(n, p + 1))
    x = (r[:, 0:1] + r[:, 1:]) / 2**0.5
    y = _ex1(x)[:, None] + error
    return torch.from_numpy(x).float(), torch.from_numpy(y).float()


PROBLEMS = {
    "example1": Problem("example1", 1000, (0, 1, 2, 3, 4), (5, 3), "mse", _ex1, fixed_data=True),
    "deep_p2000": Problem("deep_p2000", 2000, (7, 150, 600, 1111, 1500, 1999), (8, 6, 4), "mse",
                          _deep),
    "interaction": Problem("interaction", 2000, (0, 1, 2, 3, 4), (6, 4, 3), "mse", _interaction),
    "classification": Problem("classification", 1000, (10, 20, 30, 40, 50), (5, 3), "bce",
                              _logit_add),
    "classification_interaction": Problem("classification_interaction", 1000,
                                          (10, 20, 30, 40, 50), (5, 3), "bce", _logit),
}
STUDY = tuple(PROBLEMS)  # the problem types of the robustness study, in its order


def _wide(x: np.ndarray) -> np.ndarray:
    return 1.5 * np.sin(x[:, 0] * x[:, 1]) + np.tanh(x[:, 2]) - np.tanh(2 * x[:, 3] - x[:, 4])


def _deep_interaction(x: np.ndarray) -> np.ndarray:
    return (2 * np.sin(x[:, 0] * x[:, 1]) + np.tanh(x[:, 2] * x[:, 3]) + np.tanh(2 * x[:, 4])
            - np.maximum(x[:, 5], 0))


def _logit_p2000(x: np.ndarray) -> np.ndarray:
    return 3 * (np.tanh(x[:, 0] * x[:, 1]) + np.tanh(2 * x[:, 2] - x[:, 3]) - np.tanh(x[:, 4]))


# Problems of the same family written after the robust preset was fixed, to check that it was
# not tuned to the study's five: other widths, depths, P, positions and nonlinearities
# (``kefan_bench.py robustness --problems ... --tag _heldout``).
HELDOUT = {
    "heldout_wide_p3000": Problem("heldout_wide_p3000", 3000, (3, 77, 1500, 2222, 2999),
                                  (10, 5), "mse", _wide),
    "heldout_deep_interaction": Problem("heldout_deep_interaction", 2000,
                                        (5, 10, 400, 800, 1200, 1600), (8, 6, 4), "mse",
                                        _deep_interaction),
    "heldout_classification_p2000": Problem("heldout_classification_p2000", 2000,
                                            (100, 200, 300, 400, 500), (6, 4, 3), "bce",
                                            _logit_p2000),
}
PROBLEMS.update(HELDOUT)


def _logit_p3000(x: np.ndarray) -> np.ndarray:
    return 2.5 * (np.tanh(x[:, 0] * x[:, 1]) + np.tanh(2 * x[:, 2]) - np.tanh(x[:, 3] - x[:, 4]))


def _two_products(x: np.ndarray) -> np.ndarray:
    return np.sin(x[:, 0] * x[:, 1]) + 1.5 * np.tanh(x[:, 2] * x[:, 3]) + np.tanh(2 * x[:, 4])


def _relu_p2500(x: np.ndarray) -> np.ndarray:
    return (np.maximum(2 * x[:, 0] - x[:, 1], 0) - np.maximum(x[:, 2], 0)
            + np.tanh(x[:, 3] + x[:, 4]))


# A second set, written after the first one had been used to change the preset (the E-step's
# probation band) and before that version was run on it.
HELDOUT2 = {
    "heldout2_logit_p3000": Problem("heldout2_logit_p3000", 3000, (11, 999, 1500, 2500, 2998),
                                    (8, 4), "bce", _logit_p3000),
    "heldout2_two_products": Problem("heldout2_two_products", 1500, (0, 300, 600, 900, 1200),
                                     (6, 4, 3), "mse", _two_products),
    "heldout2_relu_p2500": Problem("heldout2_relu_p2500", 2500, (50, 51, 52, 53, 54), (5, 3),
                                   "mse", _relu_p2500),
}
PROBLEMS.update(HELDOUT2)


def make_net(p: int, widths: tuple[int, ...]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip((p, *widths[:-1]), widths, strict=True):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(widths[-1], 1))


def _loss(kind: str) -> nn.Module:
    return nn.MSELoss() if kind == "mse" else nn.BCEWithLogitsLoss()


@torch.no_grad()
def metric(prob: Problem, pred: torch.Tensor, y: torch.Tensor) -> float:
    """Test MSE, or accuracy for ``bce`` (``pred``: mean prediction / mean probability)."""
    if prob.loss == "mse":
        return float((pred - y).pow(2).mean())
    return float(((pred > 0.5).float() == y).float().mean())


def _predict(prob: Problem, nets: list[nn.Module], x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        outs = torch.stack([m(x) for m in nets])
        return (outs if prob.loss == "mse" else torch.sigmoid(outs)).mean(0)


def fit_kefan(prob: Problem, seed: int, preset: str, epochs: int, cycles: int | None = None,
              h0: float | None = None, batch: int = 1024, per_cycle: int = 3,
              log: Callable[[str], None] = print, trace_every: int = 0,
              after_factor: float | None = None, **overrides: object) -> dict:
    """One Ke & Fan run with ``preset`` (its schedule - cycles, h0, ramp, warm-up - unless
    given); samples ``per_cycle`` epochs apart at each cycle end, BMA over the last cycle's
    samples (the ones with the final support), inclusion frequencies of the input columns over
    the samples taken after the warm-up (the cycles in which the E-step ran)."""
    hp = resolve_hparams(preset, **overrides)
    sched = schedule_hparams(hp, epochs, h0, prob.loss)
    cycles = cycles or sched["cycles"]
    if overrides.get("warm_up") is None:  # the preset's (with cycles possibly overridden)
        overrides["warm_up"] = (int(round(hp["warm_up_cycles"] * epochs / cycles))
                                if hp.get("warm_up_cycles") is not None else hp["warm_up"])
    h0, ramp = sched["h0"], sched["ramp"]
    boost = after_factor if after_factor is not None else sched["after_factor"]
    xtr, ytr, xte, yte = prob.data(seed)
    n, nb = len(ytr), math.ceil(len(ytr) / batch)
    torch.manual_seed(seed)
    net = make_net(prob.p, prob.widths)
    opt = SGHMCSpikeSlab(net.parameters(), n, preset=preset, seed=seed, **overrides)
    first = net[0].weight
    order, loss_fn = torch.Generator().manual_seed(seed), _loss(prob.loss)
    total = epochs * nb
    sample_at = set(cycle_sample_steps(total, cycles, per_cycle, nb))
    samples: list[dict] = []
    sample_epochs: list[int] = []
    pruned_epoch: dict[int, int] = {}
    true = set(prob.true_inputs)
    t0, step, trace, epoch_loss = time.perf_counter(), 0, [], []
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=order)
        live, xlive = _live_inputs(opt, first, xtr)
        loss_sum = torch.zeros((), dtype=torch.float64)
        for b in range(nb):
            idx = perm[b * batch:(b + 1) * batch]
            opt.param_groups[0]["lr"] = cyclical_cosine(step, total, cycles, h0, ramp) * (
                boost if epoch > overrides["warm_up"] else 1.0)
            opt.zero_grad()
            if live is None:
                out = net(xtr[idx])
            else:  # pruned input columns are exactly 0: multiply by the live ones only
                out = net[1:](nn.functional.linear(xlive[idx], first[:, live], net[0].bias))
            loss = loss_fn(out, ytr[idx])
            loss.backward()
            loss_sum += loss.detach().double()
            opt.step(epoch=epoch, batch=b)
            step += 1
            if step in sample_at:
                samples.append({k: v.detach().clone() for k, v in net.state_dict().items()})
                sample_epochs.append(epoch)
        epoch_loss.append(float(loss_sum) / nb)
        keep = opt.state[first].get("keep_in")
        if keep is not None:
            for j in true:
                if j not in pruned_epoch and not bool(keep[j]):
                    pruned_epoch[j] = epoch
                    log(f"    epoch {epoch}: true input {j} pruned")
        if trace_every and (epoch % trace_every == 0 or epoch == epochs - 1):
            trace.append(_trace(epoch, net, opt, xtr[:2048], ytr[:2048], prob))
            log(f"    {trace[-1]}")
    seconds = time.perf_counter() - t0
    last = [s for s in samples[-per_cycle:]]
    nets = []
    for s in last:
        m = make_net(prob.p, prob.widths)
        m.load_state_dict(s)
        nets.append(m.eval())
    selected = [int(j) for j in torch.nonzero(first.detach().abs().sum(0)).flatten()]
    g0, warm_up = opt.param_groups[0], opt.param_groups[0]["warm_up"]
    after = [s["0.weight"] for s, e in zip(samples, sample_epochs, strict=True) if e > warm_up]
    thr = opt.state[first].get("threshold", g0["soft_threshold"])  # the last E-step's
    freq = inclusion_frequency(after or [first.detach()], "in", thr)
    stab = support_stability(freq)
    keep = opt.state[first].get("keep_in")
    if keep is not None:  # the score test of the pruned inputs, one pass over the training set
        net.zero_grad()
        loss_fn(net(xtr), ytr).backward()
        stab["score_test"] = pruned_signal(first.grad, keep, SCORE_REL)
        stab["score_test"]["pruned_with_signal"] = stab["score_test"]["pruned_with_signal"][:20]
        stab["stable"] = stab["stable"] and not stab["score_test"]["pruned_with_signal"]
        net.zero_grad()
    stab["warmup"] = warmup_stall(epoch_loss[:warm_up + 1])  # epochs 0..warm_up run dense
    stab["stable"] = stab["stable"] and not stab["warmup"]["stalled"]
    log(f"    support: {stab['num_selected']} inputs in >= 1/2 of {len(after)} samples, "
        f"{stab['num_undecided']} undecided, pruned inputs with signal "
        f"{stab.get('score_test', {}).get('pruned_with_signal')}, warm-up stalled "
        f"{stab['warmup']['stalled']}, stable={stab['stable']}")
    return {"seed": seed, "metric": metric(prob, _predict(prob, nets, xte), yte),
            "metric_last": metric(prob, _predict(prob, [net.eval()], xte), yte),
            "exact_support": set(selected) == true, "selected": selected,
            "num_selected": len(selected), "missed": sorted(true - set(selected)),
            "spurious": len(set(selected) - true), "sparsity": sparsity(net),
            "pruned_epoch": {str(j): pruned_epoch.get(j) for j in sorted(true)},
            "stability": stab, "epochs": epochs, "steps": total, "seconds": seconds,
            "preset": preset, "samples": len(samples), "h0": h0, "cycles": cycles, "ramp": ramp,
            "clipped_steps": opt.clipped_steps,
            "after_factor": boost,
            "warm_up": warm_up, "inclusion_frequency_true": [round(float(freq[j]), 3)
                                                            for j in prob.true_inputs],
            **({"trace": trace} if trace else {})}


def _live_inputs(opt: SGHMCSpikeSlab, first: torch.Tensor, x: torch.Tensor
                 ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The input columns not pruned yet and ``x`` restricted to them (None, None while fewer
    than a quarter are pruned). A pruned column is zero for good, so the forward pass over the
    live ones gives the same output and the same gradient on every live weight; the pruned
    weights' gradient is then 0 instead of a value the hard mask discards. This is a speed-up
    of the benchmark only (the cost of a run after pruning drops with the live inputs)."""
    keep = opt.state.get(first, {}).get("keep_in")
    if keep is None or int(keep.sum()) > 0.75 * len(keep):
        return None, None
    live = torch.nonzero(keep).flatten()
    return live, x[:, live].contiguous()


@torch.no_grad()
def _trace(epoch: int, net: nn.Sequential, opt: SGHMCSpikeSlab, x: torch.Tensor,
           y: torch.Tensor, prob: Problem) -> dict:
    """A diagnostic row: first-layer columns kept / under the slab, the true columns' mean
    square, the dead hidden units (ReLU output 0 on every one of ``x``), the step size."""
    w = net[0].weight
    ms = w.pow(2).mean(0)
    st = opt.state.get(w, {})
    dead, h = [], x
    for m in net:
        h = m(h)
        if isinstance(m, nn.ReLU):
            dead.append(int((h.amax(0) <= 0).sum()))
    true = list(prob.true_inputs)
    noise = torch.ones(prob.p, dtype=torch.bool)
    noise[true] = False
    return {"epoch": epoch, "lr": opt.param_groups[0]["lr"],
            "train_loss": round(float(_loss(prob.loss)(h, y)), 4),
            "kept": int((ms > 0).sum()), "slab": int(st["slab"].sum()) if "slab" in st else None,
            "true_ms": [round(float(v), 5) for v in ms[true]],
            "noise_ms_max": round(float(ms[noise].max()), 5),
            "noise_ms_med": float(ms[noise].median()), "dead": dead}


def fit_oracle(prob: Problem, seed: int, epochs: int = 300, lr: float = 1e-2,
               batch: int = 1024) -> dict:
    """The same net on the true inputs only, Adam with a cosine-decayed step size."""
    xtr, ytr, xte, yte = prob.data(seed)
    cols = list(prob.true_inputs)
    xtr, xte = xtr[:, cols], xte[:, cols]
    torch.manual_seed(seed)
    net = make_net(len(cols), prob.widths)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    order, loss_fn, n = torch.Generator().manual_seed(seed), _loss(prob.loss), len(ytr)
    t0 = time.perf_counter()
    for _ in range(epochs):
        perm = torch.randperm(n, generator=order)
        for b in range(0, n, batch):
            idx = perm[b:b + batch]
            opt.zero_grad()
            loss_fn(net(xtr[idx]), ytr[idx]).backward()
            opt.step()
        sched.step()
    return {"seed": seed, "metric": metric(prob, _predict(prob, [net.eval()], xte), yte),
            "epochs": epochs, "seconds": time.perf_counter() - t0}


def fit_lasso(prob: Problem, seed: int) -> dict:
    """L1 selection: the lasso with its penalty chosen by BIC along the LARS path
    (``LassoLarsIC``; one fit, where ``LassoCV`` on 10240 x 2000 costs minutes a run here, and
    BIC selects more sparsely than cross-validation) for regression, L1 logistic regression
    with the penalty chosen by 3-fold CV (``LogisticRegressionCV``, liblinear, 5 penalties)
    for classification; selected = the non-zero coefficients."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LassoLarsIC, LogisticRegressionCV

    xtr, ytr, xte, yte = (t.numpy().astype(np.float64) for t in prob.data(seed))
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        if prob.loss == "mse":
            model = LassoLarsIC(criterion="bic", max_iter=200).fit(xtr, ytr[:, 0])
            coef, pred = model.coef_, model.predict(xte)[:, None]
        else:
            model = LogisticRegressionCV(Cs=5, cv=3, penalty="l1", solver="liblinear", tol=1e-3,
                                         random_state=seed).fit(xtr, ytr[:, 0])
            coef, pred = model.coef_[0], model.predict_proba(xte)[:, 1:]
    selected = [int(j) for j in np.nonzero(coef)[0]]
    return {"seed": seed, "metric": metric(prob, torch.from_numpy(pred), torch.from_numpy(yte)),
            "selected": selected, "num_selected": len(selected),
            "exact_support": set(selected) == set(prob.true_inputs),
            "true_kept": len(set(selected) & set(prob.true_inputs)),
            "seconds": time.perf_counter() - t0}


def _logit_two_products(x: np.ndarray) -> np.ndarray:
    return 3 * (np.tanh(x[:, 0] * x[:, 1]) - np.tanh(x[:, 2] * x[:, 3]) + np.tanh(x[:, 4]))


def _mixed_p4000(x: np.ndarray) -> np.ndarray:
    return (1.5 * np.sin(x[:, 0] * x[:, 1]) + np.tanh(2 * x[:, 2]) - np.maximum(x[:, 3], 0)
            + 0.5 * x[:, 4])


def _deep_p1500(x: np.ndarray) -> np.ndarray:
    return (2 * np.tanh(x[:, 0] + x[:, 1]) - np.tanh(x[:, 2] * x[:, 3])
            + np.maximum(x[:, 4] - x[:, 5], 0))


# A third set, written after the second one had been used to widen the probation band (2x) and
# to add the probation set's own floor, and before that version was run on it.
HELDOUT3 = {
    "heldout3_logit_two_products": Problem("heldout3_logit_two_products", 2000,
                                           (7, 700, 1400, 1401, 1999), (6, 4), "bce",
                                           _logit_two_products),
    "heldout3_mixed_p4000": Problem("heldout3_mixed_p4000", 4000, (0, 1000, 2000, 3000, 3999),
                                    (8, 4), "mse", _mixed_p4000),
    "heldout3_deep_p1500": Problem("heldout3_deep_p1500", 1500, (20, 40, 60, 80, 100, 120),
                                   (10, 6, 4), "mse", _deep_p1500),
}
PROBLEMS.update(HELDOUT3)
