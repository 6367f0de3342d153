"""IVON against closed forms (Bayesian linear regression, one step by hand) and its invariants:
accumulation equals one big batch, the mean survives an exception, resume is bit-identical, bad
input is refused with the state untouched, frozen parameters, groups of mixed dtypes, bf16.
"""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bayescale
from bayescale import IVON


@pytest.fixture
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _blr_problem():
    g = torch.Generator().manual_seed(0)
    n, d = 40, 3
    mix = torch.tensor([[1.0, 0.5, 0.0], [0.0, 1.0, 0.3], [0.0, 0.0, 0.7]])
    x = torch.randn(n, d, generator=g) @ mix  # correlated inputs: A is not diagonal
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.5 * torch.randn(n, generator=g)
    return x, y


def test_bayesian_linear_regression_mean_and_mean_field_std(float64):
    # Loss = mean over the batch of 1/2 (y - x.w)^2: the Gaussian NLL with unit noise variance
    # divided by N. With ess = N, lambda * loss is the full-data NLL and the prior is
    # N(0, 1/(ess * delta)), so the exact posterior has precision A = X^T X + ess*delta*I and mean
    # A^-1 X^T y; the mean-field optimum keeps that mean and has sigma_i = 1/sqrt(A_ii).
    x, y = _blr_problem()
    ess, wd = float(len(x)), 0.1
    a = x.T @ x + ess * wd * torch.eye(3)
    mean, sd = torch.linalg.solve(a, x.T @ y), a.diagonal().rsqrt()
    w = nn.Parameter(torch.zeros(3))
    opt = IVON([w], lr=0.05, ess=ess, hess_init=1.0, beta2=0.99, weight_decay=wd,
               rescale_lr=False)

    def run(steps: int) -> None:
        for _ in range(steps):
            w.grad = None
            with opt.sampled_params(train=True):
                (0.5 * (x @ w - y).pow(2).mean()).backward()
            opt.step()

    run(2000)  # converge with a short Hessian memory, then average over a long one
    opt.param_groups[0].update(beta2=0.9999, lr=0.005)
    run(12000)
    # Tolerances: h is an EMA of Price estimates with relative sd ~ sqrt(2 (1-b2)/2) = 1%, so
    # sigma ~ 0.5%; 3% is ~6 standard errors. The mean's step noise at lr 0.005 is ~0.02 sd.
    sigma = opt.posterior_std()[0]
    torch.testing.assert_close(sigma, sd, rtol=0.03, atol=0)
    assert ((w.detach() - mean).abs() / sd).max() < 0.1
    assert (sigma / sd - 1).abs().max() < 0.03


def _hand_step(m, h, mom, eps, t, *, a, b, lr, ess, h0, wd, b1, b2, clip=None):
    """Algorithm 1 written out for l(theta) = a/2 (theta - b)^2, with rescale_lr."""
    sigma = 1.0 / (ess * (h + wd)) ** 0.5
    theta = m + sigma * eps
    g_hat = a * (theta - b)
    h_hat = g_hat * eps / sigma
    mom = b1 * mom + (1 - b1) * g_hat
    h = b2 * h + (1 - b2) * h_hat + 0.5 * (1 - b2) ** 2 * (h - h_hat) ** 2 / (h + wd)
    upd = (mom / (1 - b1 ** t) + wd * m) / (h + wd)
    if clip is not None:
        upd = max(-clip, min(clip, upd))
    return m - lr * (h0 + wd) * upd, h, mom


@pytest.mark.parametrize("clip", [None, 0.05])
def test_two_steps_by_hand_on_a_scalar_quadratic(float64, clip):
    hp = {"a": 3.0, "b": 0.7, "lr": 0.2, "ess": 10.0, "h0": 0.5, "wd": 0.02, "b1": 0.8,
          "b2": 0.9}
    w = nn.Parameter(torch.tensor([-1.0]))
    gen = torch.Generator().manual_seed(5)
    opt = IVON([w], lr=hp["lr"], ess=hp["ess"], hess_init=hp["h0"], beta1=hp["b1"],
               beta2=hp["b2"], weight_decay=hp["wd"], clip_radius=clip, generator=gen)
    eps = torch.randn(2, generator=torch.Generator().manual_seed(5)).tolist()
    m, h, mom = -1.0, hp["h0"], 0.0
    for t in (1, 2):
        w.grad = None
        with opt.sampled_params(train=True):
            (0.5 * hp["a"] * (w - hp["b"]).pow(2)).sum().backward()
        opt.step()
        m, h, mom = _hand_step(m, h, mom, eps[t - 1], t, clip=clip, **hp)
        assert w.item() == pytest.approx(m, rel=1e-12, abs=1e-14)
        assert opt.state[w]["hess"].item() == pytest.approx(h, rel=1e-12)
        assert opt.state[w]["momentum"].item() == pytest.approx(mom, rel=1e-12, abs=1e-14)
    if clip is not None:  # the clip bound the first move: |dm| <= lr (h0 + wd) clip
        assert abs(m + 1.0) <= 2 * hp["lr"] * (hp["h0"] + hp["wd"]) * clip + 1e-12


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))


def _data(n: int = 24):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


def test_k_micro_batches_in_one_draw_equal_one_big_batch(float64):
    x, y = _data()
    runs = []
    for k in (1, 4):
        net = _net()
        opt = IVON(net.parameters(), lr=0.1, ess=100.0, generator=torch.Generator()
                   .manual_seed(3))
        for _ in range(3):
            opt.zero_grad(set_to_none=True)
            with opt.sampled_params(train=True):
                for xb, yb in zip(x.chunk(k), y.chunk(k), strict=True):
                    (F.cross_entropy(net(xb), yb) / k).backward()
            opt.step()
        runs.append((list(net.parameters()), [opt.state[p]["hess"] for p in net.parameters()]))
    for a, b in zip(runs[0][0] + runs[0][1], runs[1][0] + runs[1][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_closure_with_mc_samples_equals_blocks_by_hand(float64):
    x, y = _data()
    out = []
    for by_hand in (False, True):
        net = _net()
        opt = IVON(net.parameters(), lr=0.1, ess=100.0, mc_samples=3,
                   generator=torch.Generator().manual_seed(4))
        if by_hand:
            opt.zero_grad(set_to_none=True)
            for _ in range(3):
                with opt.sampled_params(train=True):
                    (F.cross_entropy(net(x), y) / 3).backward()
            opt.step()
        else:
            def closure(net=net):
                loss = F.cross_entropy(net(x), y)
                loss.backward()
                return loss
            assert torch.isfinite(opt.step(closure))
        out.append([p.detach().clone() for p in net.parameters()]
                   + [opt.state[p]["hess"] for p in net.parameters()])
    for a, b in zip(*out, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_mean_restored_after_an_exception_and_nothing_recorded():
    net = _net()
    opt = IVON(net.parameters(), lr=0.1, ess=100.0)
    before = [p.detach().clone() for p in net.parameters()]
    with pytest.raises(ValueError, match="boom"), opt.sampled_params(train=True):
        assert not torch.equal(before[0], net[0].weight)  # the draw is in place
        raise ValueError("boom")
    assert all(torch.equal(a, p) for a, p in zip(before, net.parameters(), strict=True))
    with pytest.raises(RuntimeError, match="sampled_params"):
        opt.step()


def _train(net, opt, x, y, steps):
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        with opt.sampled_params(train=True):
            F.cross_entropy(net(x), y).backward()
        opt.step()


def test_resume_from_state_dict_is_bit_identical():
    x, y = _data()
    net = _net()
    opt = IVON(net.parameters(), lr=0.1, ess=100.0, beta2=0.99)
    _train(net, opt, x, y, 4)
    buf = io.BytesIO()
    torch.save({"model": net.state_dict(), "opt": opt.state_dict(),
                "rng": torch.get_rng_state()}, buf)
    _train(net, opt, x, y, 4)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    net2 = _net()
    net2.load_state_dict(ckpt["model"])
    opt2 = IVON(net2.parameters(), lr=0.1, ess=100.0, beta2=0.99)
    opt2.load_state_dict(ckpt["opt"])
    torch.set_rng_state(ckpt["rng"])
    _train(net2, opt2, x, y, 4)
    for a, b in zip(net.parameters(), net2.parameters(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(opt.posterior_std(), opt2.posterior_std(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kwargs, key", [
    ({"lr": 0.0}, "lr"), ({"lr": -1.0}, "lr"), ({"ess": 0}, "ess"),
    ({"hess_init": 0.0}, "hess_init"), ({"beta1": 1.0}, "beta1"), ({"beta2": -0.1}, "beta2"),
    ({"beta2": 1.0}, "beta2"), ({"weight_decay": -1e-3}, "weight_decay"),
    ({"mc_samples": 0}, "mc_samples"), ({"clip_radius": 0.0}, "clip_radius")])
def test_bad_hyperparameters_are_refused_by_name(kwargs, key):
    args = {"lr": 0.1, "ess": 10.0, **kwargs}
    with pytest.raises(ValueError, match=key):
        IVON(_net().parameters(), **args)


def test_bad_group_hyperparameter_is_refused():
    net = _net()
    with pytest.raises(ValueError, match="beta2"):
        IVON([{"params": net[0].parameters(), "beta2": 1.5}], lr=0.1, ess=10.0)


def test_step_without_a_draw_raises_and_leaves_the_state_untouched():
    x, y = _data()
    net = _net()
    opt = IVON(net.parameters(), lr=0.1, ess=100.0)
    _train(net, opt, x, y, 2)
    F.cross_entropy(net(x), y).backward()  # a gradient at the mean, not at a draw
    params = [p.detach().clone() for p in net.parameters()]
    state = {k: (v.clone() if torch.is_tensor(v) else v) for p in net.parameters()
             for k, v in opt.state[p].items()}
    with pytest.raises(RuntimeError, match="sampled_params"):
        opt.step()
    assert all(torch.equal(a, p) for a, p in zip(params, net.parameters(), strict=True))
    after = {k: v for p in net.parameters() for k, v in opt.state[p].items()}
    assert all(torch.equal(state[k], after[k]) if torch.is_tensor(state[k])
               else state[k] == after[k] for k in state)


def test_frozen_parameters_are_skipped():
    x, y = _data()
    net = _net()
    net[0].weight.requires_grad_(False)
    frozen = net[0].weight.detach().clone()
    opt = IVON(net.parameters(), lr=0.1, ess=100.0)
    with opt.sampled_params(train=True):
        assert torch.equal(net[0].weight, frozen)  # no draw for a frozen parameter
        F.cross_entropy(net(x), y).backward()
    opt.step()
    assert torch.equal(net[0].weight, frozen) and net[0].weight not in opt.state
    assert torch.count_nonzero(opt.posterior_std()[0]) == 0


def test_groups_of_different_dtypes_and_bf16_autocast():
    x, y = _data()
    net = _net()
    net[0].double()
    net[2].bfloat16()
    opt = IVON([{"params": net[0].parameters()}, {"params": net[2].parameters(), "lr": 0.05}],
               lr=0.1, ess=100.0)
    losses = []
    for _ in range(30):
        opt.zero_grad(set_to_none=True)
        with opt.sampled_params(train=True):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = net[2](net[1](net[0](x.double())).bfloat16())
            loss = F.cross_entropy(out.float(), y)
            loss.backward()
        losses.append(loss.item())
        opt.step()
    assert net[0].weight.dtype == torch.float64 and net[2].weight.dtype == torch.bfloat16
    assert opt.state[net[2].weight]["hess"].dtype == torch.float32  # fp32 state for bf16
    assert all(torch.isfinite(s).all() for s in opt.posterior_std())
    assert sum(losses[-5:]) < sum(losses[:5])
    sd = opt.state_dict()
    opt2 = IVON([{"params": net[0].parameters()}, {"params": net[2].parameters()}], lr=0.1,
                ess=100.0)
    opt2.load_state_dict(sd)
    assert opt2.state[net[2].weight]["hess"].dtype == torch.float32
    assert torch.equal(opt2.state[net[2].weight]["hess"], opt.state[net[2].weight]["hess"])


@pytest.mark.gpu
def test_groups_on_two_devices():
    x, y = _data()
    net = _net()
    net[2].cuda()
    opt = IVON(net.parameters(), lr=0.1, ess=100.0)
    with opt.sampled_params(train=True):
        F.cross_entropy(net[2](net[1](net[0](x)).cuda()), y.cuda()).backward()
    opt.step()
    assert opt.state[net[2].weight]["hess"].is_cuda and not opt.state[net[0].weight]["hess"].is_cuda


def test_gradient_clipping_between_draw_and_step_changes_the_update():
    x, y = _data()
    moved = []
    for clip in (None, 1e-3):
        net = _net()
        opt = IVON(net.parameters(), lr=0.1, ess=100.0, generator=torch.Generator()
                   .manual_seed(0))
        with opt.sampled_params(train=True):
            F.cross_entropy(net(x), y).backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
        before = [p.detach().clone() for p in net.parameters()]
        opt.step()
        moved.append(sum((p - b).norm() for p, b in zip(net.parameters(), before, strict=True)))
    assert moved[1] < 0.1 * moved[0]


def test_exported_posterior_is_a_detached_copy_with_the_optimizers_std(tmp_path):
    x, y = _data()
    net = _net()
    opt = IVON(net.parameters(), lr=0.1, ess=50.0, beta2=0.9)
    _train(net, opt, x, y, 3)
    post = opt.posterior(net)
    assert post.names == [n for n, _ in net.named_parameters()]
    for s, t in zip(post.std, opt.posterior_std(), strict=True):
        assert torch.equal(s, t)
    _train(net, opt, x, y, 1)
    assert not torch.equal(post.mean[0], net[0].weight)  # later steps do not leak in
    post.save(tmp_path / "posterior.pt")
    back = bayescale.ParamPosterior.load(tmp_path / "posterior.pt", net)
    assert all(torch.equal(a, b) for a, b in zip(post.std, back.std, strict=True))
    with back.sample(generator=torch.Generator().manual_seed(0)):
        drawn = net[0].weight.detach().clone()
    z = (drawn - back.mean[0]) / back.std[0]
    assert abs(z.mean().item()) < 5 / z.numel() ** 0.5 and abs(z.std().item() - 1) < 0.3
