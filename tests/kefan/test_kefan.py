"""Ke & Fan's SGHMC with spike-and-slab groups: the update against a direct implementation of
the spec's formulas, the posterior it samples (Bayesian linear regression, closed form), pruning
invariants, checkpoints, sample collection and ``bayescale train`` integration."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from torch import nn

from bayescale.kefan.optimizer import (
    PRESETS,
    SGHMCSpikeSlab,
    layer_sparsity,
    posterior_temperature,
    resolve_hparams,
    sparsity,
    untempered_temperature,
)
from bayescale.train.config import load_config
from bayescale.train.engine import train
from bayescale.train.schedules import (
    cycle_sample_steps,
    cyclical_cosine,
    cyclical_cosine_kefan,
)
from bayescale.train.sghmc import (
    KeFanTraining,
    SampleCollector,
    load_samples,
    plot_sparsity,
    read_sparsity,
)

F64 = torch.float64


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ----------------------------------------------------------------- the spec, written out directly
def _spec_estep(w, soft_mask, hard_mask, policy, soft, hard):
    """Spec §4.4, per element, as the authors' three files write it."""
    if policy == "fc" and w.dim() == 2:
        ms = w.pow(2).mean(0)
        soft_mask[:, ms < soft] = 0
        soft_mask[:, ms >= soft] = 1
        hard_mask[:, ms < hard] = 0
    elif policy == "gnn" and w.dim() == 2:
        ms = w.pow(2).mean(1)
        soft_mask[ms < soft, :] = 0
        soft_mask[ms >= soft, :] = 1
        hard_mask[ms < hard, :] = 0
    elif policy == "cnn" and w.dim() == 4:
        ink = w.pow(2).mean((-2, -1)) < soft
        soft_mask[ink] = 0
        soft_mask[~ink] = 1
        hard_mask[:, (w.amax([0, 2, 3]) - w.amin([0, 2, 3])) < hard] = 0
        hard_mask[(w.amax([1, 2, 3]) - w.amin([1, 2, 3])) < hard] = 0


def _spec_run(ws, grads, hs, eb, *, n, t, eta, betas, eps1, eps0, soft, hard, warm_up, policy,
              seed):
    """Spec §4.3 step by step: per-element masks, E-step inside the parameter loop."""
    gen = torch.Generator().manual_seed(seed)
    b1, b2 = betas
    ws = [w.clone() for w in ws]
    st = [dict(rho=torch.zeros_like(w), tau=torch.full_like(w, 0.5),
               r=1e-3 * torch.randn(w.shape, generator=gen, dtype=w.dtype),
               xi=torch.randn(w.shape, generator=gen, dtype=w.dtype),
               soft=torch.ones_like(w), hard=torch.ones_like(w)) for w in ws]
    for k, ((epoch, batch), h) in enumerate(zip(eb, hs, strict=True)):
        c = math.sqrt(h)
        for i, (w, s) in enumerate(zip(ws, st, strict=True)):
            g = grads[k][i]
            if epoch > warm_up and batch == 0:
                _spec_estep(w, s["soft"], s["hard"], policy, soft, hard)
            eps = torch.full_like(w, eps1)
            eps[s["soft"] == 0] = eps0
            s["rho"] = s["rho"] - eta * (t**2 * c**3 * eps * s["tau"] + t * c**1.5 * s["xi"] * g
                                         - 1 / (s["tau"] * n))
            s["tau"] = torch.sigmoid(s["rho"])
            s["xi"] = torch.randn(w.shape, generator=gen, dtype=w.dtype)
            s["r"] = (b1 * s["r"] - c**2 * b2 * (g + eps * w)
                      + math.sqrt(2 + 2 * b1**2) * c**1.5 * t * s["xi"])
            ws[i] = (w + s["tau"] * s["r"]) * s["hard"]
    return ws, st


def _mixed_scale(shape, policy):
    """Random weights whose groups have mixed scales, so that the E-step puts some groups under
    the spike and prunes some."""
    w = torch.randn(shape, dtype=F64)
    if len(shape) < 2:
        return w
    rest = [1] * (len(shape) - 2)
    cols = torch.rand(shape[1], dtype=F64).pow(3).view(1, -1, *rest)
    rows = torch.rand(shape[0], dtype=F64).pow(3).view(-1, 1, *rest)
    return w * {"fc": cols, "gnn": rows}.get(policy, cols * rows)


@pytest.mark.parametrize("policy, shapes", [
    ("fc", [(6, 8), (8,), (3, 6)]),
    ("gnn", [(6, 8), (3, 6)]),
    ("cnn", [(5, 4, 3, 3), (5,), (2, 20)]),
])
@pytest.mark.parametrize("temperature", ["1/sqrt(N)", 0.02])
def test_update_matches_the_spec_step_by_step(policy, shapes, temperature):
    torch.manual_seed(1)
    n, steps, seed = 200, 9, 7
    ws = [_mixed_scale(s, policy) for s in shapes]
    grads = [[torch.randn(s, dtype=F64) * 0.1 for s in shapes] for _ in range(steps)]
    hs = [0.05 * (k + 1) / steps for k in range(steps)]
    eb = [(k // 3, k % 3) for k in range(steps)]  # 3 batches per epoch: E-step at epochs 1, 2
    hp = dict(betas=(0.1, 0.9), eps1=5e-3, eps0=0.5, soft=0.05, hard=0.01, warm_up=0, eta=0.1)
    if policy == "cnn":
        hp.update(soft=0.05, hard=0.5)
    t = n**-0.5 if temperature == "1/sqrt(N)" else temperature
    want, want_state = _spec_run(ws, grads, hs, eb, n=n, t=t, policy=policy, seed=seed, **hp)

    params = [nn.Parameter(w.clone()) for w in ws]
    opt = SGHMCSpikeSlab(params, n, temperature=temperature, eta=hp["eta"], betas=hp["betas"],
                         eps1=hp["eps1"], eps0=hp["eps0"], soft_threshold=hp["soft"],
                         hard_threshold=hp["hard"], warm_up=hp["warm_up"], group=policy,
                         seed=seed)
    for k in range(steps):
        for p, g in zip(params, grads[k], strict=True):
            p.grad = g.clone()
        opt.param_groups[0]["lr"] = hs[k]
        opt.step(epoch=eb[k][0], batch=eb[k][1])
        # (the reference is run in full first; compare at the end and on the state)
    pruned = 0
    for p, w, s in zip(params, want, want_state, strict=True):
        torch.testing.assert_close(p.detach(), w, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(opt.state[p]["rho"], s["rho"], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(opt.state[p]["tau"], s["tau"], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(opt.state[p]["momentum"], s["r"], rtol=1e-10, atol=1e-12)
        mask = opt.hard_mask(p)
        assert torch.equal(mask if mask is not None else torch.ones_like(p, dtype=torch.bool),
                           s["hard"].bool())
        spike = opt.spike_mask(p)
        assert torch.equal(spike if spike is not None else torch.zeros_like(p, dtype=torch.bool),
                           s["soft"] == 0)
        pruned += int((s["hard"] == 0).sum())
    assert pruned > 0  # the case exercises pruning (and the spike, checked above)
    assert any(bool((s["soft"] == 0).any()) for s in want_state)


def test_presets_and_validation():
    assert set(PRESETS) == {"notebook", "fc_default", "cifar_script", "robust"}
    assert PRESETS["cifar_script"]["temperature"] == "1/N"
    assert PRESETS["fc_default"]["temperature"] == pytest.approx(1 / 50000)
    hp = resolve_hparams("notebook", eps1=1e-3, eta=None)
    assert hp["eps1"] == 1e-3 and hp["eta"] == 0.1 and hp["eps0"] == 1e-2
    p = [nn.Parameter(torch.zeros(3))]
    for bad, match in [(dict(betas=(1.0, 1.0)), "beta1"), (dict(eta=-1.0), "eta"),
                       (dict(temperature="hot"), "temperature"), (dict(group="rows"), "group"),
                       (dict(warm_up=1.5), "warm_up"), (dict(preset="cifar"), "preset")]:
        with pytest.raises(ValueError, match=match):
            SGHMCSpikeSlab(p, 100, **bad)
    with pytest.raises(ValueError, match="num_train"):
        SGHMCSpikeSlab(p, 0)


def test_temperature_formulas_agree():
    n, h, betas = 5000, 0.03, (0.2, 0.8)
    t = untempered_temperature(n, h, betas, tau=0.7)
    assert posterior_temperature(t, n, h, betas, tau=0.7) == pytest.approx(1.0)
    # "untempered" = the spec's update with that T, while tau stays 1/2 (eta = 0)
    torch.manual_seed(0)
    w0, grads = torch.randn(4, 5, dtype=F64), [torch.randn(4, 5, dtype=F64) for _ in range(5)]
    out = []
    for temp in ("untempered", untempered_temperature(n, h, betas, tau=0.5)):
        p = nn.Parameter(w0.clone())
        opt = SGHMCSpikeSlab([p], n, lr=h, temperature=temp, betas=betas, eta=0.0, seed=3)
        for g in grads:
            p.grad = g.clone()
            opt.step()
        out.append(p.detach())
    torch.testing.assert_close(out[0], out[1], rtol=1e-12, atol=1e-14)


# ----------------------------------------- the posterior it samples: Bayesian linear regression
def _blr(n=50, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.tensor([[1.0, 0, 0], [0.5, 1.0, 0], [0.2, -0.3, 0.8]], dtype=F64)
    x = torch.randn(n, d, generator=g, dtype=F64) @ mix.T
    y = x @ torch.tensor([1.0, -0.5, 0.25], dtype=F64) + torch.randn(n, generator=g, dtype=F64)
    prec = x.T @ x + torch.eye(d, dtype=F64)  # noise sd 1, prior N(0, 1): delta = 1
    return x, y, torch.linalg.solve(prec, x.T @ y), torch.linalg.inv(prec).diagonal()


class _Chains(nn.Module):
    """C independent chains of the d regression weights (one row each)."""

    def __init__(self, chains: int, d: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(chains, d, dtype=F64))


def _sample_blr(temperature, eta, h, steps, cycles, chains=4000, per_cycle=2):
    x, y, mean, var = _blr()
    n = len(y)
    model = _Chains(chains, x.shape[1])
    opt = SGHMCSpikeSlab(model.parameters(), n, lr=h, temperature=temperature, eta=eta,
                         eps1=1.0 / n, group="none", seed=11)  # eps = delta / N
    collect = SampleCollector.for_cycles(steps, cycles, per_cycle, gap=50)
    for s in range(steps):
        opt.param_groups[0]["lr"] = cyclical_cosine(s, steps, cycles, h)
        model.w.grad = (model.w.detach() @ x.T - y) @ x / n  # gradient of the mean NLL
        opt.step()
        collect(s + 1, model)
    assert collect.taken == cycle_sample_steps(steps, cycles, per_cycle, 50)
    return [c["w"] for c in collect.samples], mean, var


@pytest.mark.parametrize("eta", [0.0, 0.1])
def test_untempered_samples_match_the_blr_posterior(eta, one_thread):
    """Each collected sample holds C = 4000 independent chains: per coordinate, the sample mean
    is within z * sd / sqrt(C) of the posterior mean and the sample variance within
    z * var * sqrt(2 / (C - 1)) of the posterior variance (z = 4.5 covers the 4 x 3 x 2 checks;
    the O(h) discretisation bias, ~1% at the cycle ends, is well inside)."""
    samples, mean, var = _sample_blr("untempered", eta, h=0.1, steps=2000, cycles=2)
    assert len(samples) == 4
    z, c = 4.5, samples[0].shape[0]
    for w in samples:
        assert ((w.mean(0) - mean).abs() <= z * (var / c).sqrt()).all(), (w.mean(0), mean)
        assert ((w.var(0) - var).abs() <= z * var * math.sqrt(2 / (c - 1))).all(), (w.var(0), var)


def test_spec_temperature_samples_the_predicted_tempered_posterior(one_thread):
    """At the notebooks' T = N^-1/2 (constant h, tau = 1/2 frozen) the chain samples the
    posterior tempered at T_post = :func:`posterior_temperature`: variance = T_post x posterior
    variance (T_post = 0.125 here, so the spec's T is far from untempered)."""
    x, y, mean, var = _blr()
    n, h, c = len(y), 0.05, 4000
    model = _Chains(c, x.shape[1])
    opt = SGHMCSpikeSlab(model.parameters(), n, lr=h, temperature="1/sqrt(N)", eta=0.0,
                         eps1=1.0 / n, group="none", seed=5)
    for _ in range(1500):
        model.w.grad = (model.w.detach() @ x.T - y) @ x / n
        opt.step()
    w = model.w.detach()
    t_post = posterior_temperature(n**-0.5, n, h, tau=0.5)
    assert t_post == pytest.approx(0.1254, abs=1e-4)
    tol = 4.5 * math.sqrt(2 / (c - 1)) + 0.02  # sampling error + the O(h) discretisation bias
    assert ((w.var(0) / (t_post * var) - 1).abs() <= tol).all(), w.var(0) / (t_post * var)
    assert ((w.mean(0) - mean).abs() <= 4.5 * (t_post * var / c).sqrt()).all()


# ----------------------------------------------------------------- pruning, checkpoints, helpers
def _pruning_setup(seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(10, 6), nn.ReLU(), nn.Linear(6, 2))
    with torch.no_grad():
        net[0].weight[:, :4] *= 1e-3  # four input columns far below the hard threshold
    opt = SGHMCSpikeSlab(net.parameters(), 500, lr=0.01, group="fc", warm_up=0,
                         soft_threshold=1e-2, hard_threshold=1e-4, seed=4)
    return net, opt


def _steps(net, opt, k, start_epoch, seed):
    g = torch.Generator().manual_seed(seed)
    for i in range(k):
        x, y = torch.randn(16, 10, generator=g), torch.randn(16, 2, generator=g)
        opt.zero_grad()
        nn.functional.mse_loss(net(x), y).backward()
        opt.step(epoch=start_epoch + i, batch=0)  # an E-step before every update


def test_hard_pruned_weights_stay_zero_through_steps_and_save_load(tmp_path):
    net, opt = _pruning_setup()
    _steps(net, opt, 1, 1, seed=1)
    w = net[0].weight
    assert (w[:, :4] == 0).all() and (w[:, 4:] != 0).all()  # pruned in one shot
    assert sparsity(net) == pytest.approx(24 / (60 + 6 + 12 + 2))
    assert layer_sparsity(net) == pytest.approx({"0": 24 / 66, "2": 0.0})
    opt.param_groups[0]["hard_threshold"] = 0.0  # pruning is permanent, not re-decided
    _steps(net, opt, 5, 2, seed=2)
    assert (w[:, :4] == 0).all()
    assert net[0].weight.grad[:, :4].abs().sum() > 0  # although their gradient is not zero

    torch.save({"model": net.state_dict(), "opt": opt.state_dict()}, tmp_path / "ck.pt")
    ck = torch.load(tmp_path / "ck.pt", weights_only=True)
    net2, opt2 = _pruning_setup(seed=9)
    net2.load_state_dict(ck["model"])
    opt2.load_state_dict(ck["opt"])
    assert (net2[0].weight[:, :4] == 0).all()
    _steps(net, opt, 4, 7, seed=3)
    _steps(net2, opt2, 4, 7, seed=3)
    for a, b in zip(net.parameters(), net2.parameters(), strict=True):
        assert torch.equal(a, b)  # the noise generator resumes exactly
    assert (net2[0].weight[:, :4] == 0).all()


def test_estep_switches_weight_decay_and_is_reversible():
    p = nn.Parameter(torch.tensor([[1.0, 0.05], [1.0, 0.05]]))  # column 1: mean w^2 = 0.0025
    opt = SGHMCSpikeSlab([p], 100, preset="notebook", group="fc", soft_threshold=0.01,
                         hard_threshold=0.0)
    opt.em_step()
    assert opt.spike_mask(p).tolist() == [[False, True], [False, True]]
    assert opt.hard_mask(p) is None
    with torch.no_grad():
        p[:, 1] = 0.5  # the group grew back: the next E-step returns it to the slab
    opt.em_step()
    assert opt.spike_mask(p) is None


def test_cyclical_schedules():
    h = [cyclical_cosine(s, 100, 4, 0.5) for s in range(100)]
    assert h[0] == h[25] == h[50] == h[75] == 0.5
    assert h[12] == pytest.approx(0.5 * 0.5 * (math.cos(math.pi * 12 / 25) + 1))
    assert max(h[20:25]) < 0.05 and min(h[20:25]) > 0
    # spec §4.6 / notebook Example 1: N = 10240, B = 1024 -> num_batch = 11, P = 33000 // 6
    n, b, epochs = 10240, 1024, 3000
    r = 3 * 11 + 4
    assert cyclical_cosine_kefan(3, 4, n, b, epochs, 6, 0.01) == pytest.approx(
        0.01 * 0.5 * (math.cos(math.pi * r / 5500) + 1))
    assert cyclical_cosine_kefan(500, 0, n, b, epochs, 6, 0.01) == pytest.approx(0.01)
    assert cycle_sample_steps(100, 4, 3, 10) == [5, 15, 25, 30, 40, 50, 55, 65, 75, 80, 90, 100]
    assert cycle_sample_steps(12, 3, 5, 3) == [1, 4, 5, 8, 9, 12]


# ----------------------------------------------------------------- `bayescale train`
RUN = ["data.name=synthetic", "data.size=400", "train.batch_size=32", "train.progress=false",
       "train.threads=1", "train.log_every=5", "optim.name=sghmc", "optim.lr=0.05",
       "sghmc.preset=notebook", "sghmc.warm_up=0", "sghmc.cycles=2", "sghmc.samples_per_cycle=2",
       "sghmc.soft_threshold=2.3e-3", "sghmc.hard_threshold=2e-3"]


def _rows(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_train_cli_sghmc_prunes_samples_and_resumes_exactly(tmp_path, monkeypatch):
    straight = train(load_config("mnist_cnn_fc", [*RUN, "train.epochs=4", f"output.dir={tmp_path}",
                                                  "output.name=a"]))
    run = tmp_path / "a"
    rows = read_sparsity(run)
    assert [r["step"] for r in rows] == [0, 10, 20, 30, 40]  # initial + every epoch end
    assert rows[0]["sparsity"] < 0.01  # zero-initialised biases only
    assert rows[1]["sparsity"] == 0  # first E-step at the first batch of epoch 1 (> warm_up 0)
    assert 0.02 < rows[2]["sparsity"] <= rows[3]["sparsity"] <= rows[4]["sparsity"]
    assert {"sparsity.fc1", "sparsity.fc2", "spike"} <= set(rows[0])
    lrs = [float(r["lr"]) for r in _rows(run / "train.csv")]
    assert lrs[0] == pytest.approx(0.05 * 0.5 * (math.cos(math.pi * 4 / 20) + 1))  # step 4
    bma = json.loads((run / "bma.json").read_text())
    assert bma["sample_steps"] == [10, 20, 30, 40] and bma["bma_samples"] == 4
    assert isinstance(bma["clipped_steps"], int) and bma["clipped_steps"] >= 0
    assert straight["bma_eval"]["test_acc"] == bma["test_acc"]
    samples = load_samples(run)
    assert len(samples) == 4
    final = torch.load(run / "model.pt", weights_only=True)
    assert all(torch.equal(final[k], v) for k, v in samples[-1].state_dict().items())
    w = samples[0].fc1.weight
    assert ((w == 0).all(0) | (w != 0).all(0)).all()  # whole input columns pruned
    assert plot_sparsity(run).is_file()

    # a crash at step 25 (last checkpoint: step 20), then --resume: the same run, bit for bit
    cfg_b = load_config("mnist_cnn_fc", [*RUN, "train.epochs=4", f"output.dir={tmp_path}",
                                         "output.name=b"])
    after_step = KeFanTraining.after_step

    def crash_at_25(self, step, loss=None):
        if step == 25:
            raise KeyboardInterrupt("simulated crash")
        after_step(self, step, loss)

    monkeypatch.setattr(KeFanTraining, "after_step", crash_at_25)
    with pytest.raises(KeyboardInterrupt):
        train(cfg_b)
    monkeypatch.setattr(KeFanTraining, "after_step", after_step)
    assert [r["step"] for r in read_sparsity(tmp_path / "b")] == [0, 10, 20]
    train(cfg_b, resume=tmp_path / "b")
    a = torch.load(run / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit-identical: noise generator resumed
    assert read_sparsity(tmp_path / "b") == rows
    assert json.loads((tmp_path / "b" / "bma.json").read_text()) == bma


def test_train_rejects_a_bayesian_model_for_sghmc(tmp_path):
    with pytest.raises(ValueError, match="model.bayesian=false"):
        train(load_config("mnist_bnn_fc_flip", [*RUN, "train.steps=2",
                                                f"output.dir={tmp_path}"]))


# ----------------------------------------------------------------- data-parallel: 2 gloo processes
def _ddp_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import os

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        out = {}
        for name, seed in (("same_seed", 3), ("rank_seed", 3 + rank)):  # the second: a control
            model = DDP(_ddp_net())
            opt = SGHMCSpikeSlab(model.parameters(), 64, lr=0.05, group="cnn_fc", warm_up=0,
                                 soft_threshold=2e-2, hard_threshold=5e-3, seed=seed)
            g = torch.Generator().manual_seed(100 + rank)  # each rank its own data
            for step in range(8):
                x, y = torch.randn(8, 2, 6, 6, generator=g), torch.randint(0, 3, (8,), generator=g)
                opt.zero_grad()
                nn.functional.cross_entropy(model(x), y).backward()
                opt.step(epoch=step // 4, batch=step % 4)  # E-step + pruning at step 4
            out[name] = [p.detach().clone() for p in model.parameters()]
        torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.barrier()
        dist.destroy_process_group()


@pytest.mark.dist
def test_two_gloo_ranks_keep_bit_identical_parameters(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for a, b in zip(r0["same_seed"], r1["same_seed"], strict=True):
        assert torch.equal(a, b)
    assert any((a == 0).any() for a in r0["same_seed"])  # pruning ran (on both ranks alike)
    # with a rank-dependent noise seed the ranks drift apart: the check above can fail
    assert not all(torch.equal(a, b) for a, b in zip(r0["rank_seed"], r1["rank_seed"],
                                                     strict=True))


def test_build_optimizer_gives_conv_weights_their_own_thresholds():
    from bayescale.train.builders import build_optimizer

    cfg = load_config("mnist_sghmc_sparse")
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 3))
    opt = build_optimizer(cfg.optim, net.parameters(), 1.0, sghmc=cfg.sghmc, num_train=100)
    conv, rest = opt.param_groups
    assert [p.dim() for p in conv["params"]] == [4]
    assert (conv["soft_threshold"], conv["hard_threshold"]) == (0.06, 0.1)
    assert (rest["soft_threshold"], rest["hard_threshold"]) == (0.017, 1e-3)
    assert rest["group"] == conv["group"] == "cnn_fc" and rest["eps0"] == 0.1
    assert rest["temperature"] == "untempered" and rest["num_train"] == 100


@pytest.mark.dist
def test_torchrun_two_workers_train_with_sghmc(tmp_path):
    """The engine under DDP (2 gloo workers): pruning, samples and BMA; the engine's checkpoint
    refuses to write when the ranks' parameter checksums differ."""
    import os
    import subprocess
    import sys

    from bayescale.train.checkpoint import load_checkpoint

    env = dict(os.environ, OMP_NUM_THREADS="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           "-m", "bayescale", "train", "mnist_cnn_fc", *RUN, "train.epochs=3",
           "train.scaling=weak", f"output.dir={tmp_path}", "output.name=ddp"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    run = tmp_path / "ddp"
    ckpt = load_checkpoint(run / "checkpoint.pt")
    assert ckpt["world_size"] == 2 and ckpt["param_checksums"][0] == ckpt["param_checksums"][1]
    assert read_sparsity(run)[-1]["sparsity"] > 0.02
    assert len(list((run / "samples").glob("sample_*.pt"))) == 4  # only rank 0 writes
    assert json.loads((run / "bma.json").read_text())["test_count"] == 80
