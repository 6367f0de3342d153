"""The robust preset's spike guard (``spike_clip``): the gradient is rescaled to at most
``spike_clip`` x the running average of its norm - closed-form values, pruned weights left out,
off in the authors' presets, checkpointed, validated, and reachable from a config."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bayescale.kefan.optimizer import SPIKE_CLIP_BETA, SGHMCSpikeSlab
from bayescale.train.config import SGHMCConfig, load_config


def _set_grad(p: nn.Parameter, norm: float) -> None:
    g = torch.ones_like(p)
    p.grad = g * (norm / float(g.norm()))


def test_spike_is_clipped_to_a_multiple_of_the_running_average():
    w = nn.Parameter(torch.zeros(4, 3))
    opt = SGHMCSpikeSlab([w], 100, lr=0.0)  # robust: spike_clip 3
    assert opt.spike_clip == 3.0
    for _ in range(3):
        _set_grad(w, 1.0)
        opt.step()
    assert opt.grad_norm_avg == pytest.approx(1.0) and opt.clipped_steps == 0
    _set_grad(w, 10.0)
    opt.step()
    assert float(w.grad.norm()) == pytest.approx(3.0)  # 3 x the average 1
    avg = SPIKE_CLIP_BETA * 1.0 + (1 - SPIKE_CLIP_BETA) * 3.0  # fed the clipped norm
    assert opt.grad_norm_avg == pytest.approx(avg) and opt.clipped_steps == 1
    _set_grad(w, 3.0 * avg - 1e-3)  # just under the bar: untouched
    opt.step()
    assert float(w.grad.norm()) == pytest.approx(3.0 * avg - 1e-3)
    assert opt.clipped_steps == 1


def test_the_clipped_gradient_is_the_one_the_update_uses():
    torch.manual_seed(0)
    w0 = torch.randn(5, 4)
    runs = {}
    for name, factor in (("clipped", None), ("scaled_by_hand", 0.0)):
        w = nn.Parameter(w0.clone())
        opt = SGHMCSpikeSlab([w], 100, lr=0.01, spike_clip=factor, seed=3)
        for k, norm in enumerate((1.0, 1.0, 50.0, 1.0)):
            scale = 3.0 if (name == "scaled_by_hand" and k == 2) else norm
            _set_grad(w, scale)
            opt.step()
        runs[name] = w.detach().clone()
    torch.testing.assert_close(runs["clipped"], runs["scaled_by_hand"], rtol=0, atol=1e-6)


def test_pruned_weights_are_left_out_of_the_norm():
    w = nn.Parameter(torch.ones(3, 4))
    with torch.no_grad():
        w[:, 0] = 0.0  # input column 0 is pruned at the first E-step (mean w^2 < 1e-3)
    opt = SGHMCSpikeSlab([w], 100, lr=0.0, warm_up=0)
    g = torch.zeros(3, 4)
    g[:, 1:] = 1.0 / 3.0
    w.grad = g.clone()
    opt.step(epoch=1, batch=0)
    assert not bool(opt.state[w]["keep_in"][0])
    assert opt.grad_norm_avg == pytest.approx(1.0)
    g[:, 0] = 100.0  # huge, but on weights that no longer exist
    w.grad = g.clone()
    opt.step(epoch=1, batch=1)
    assert opt.clipped_steps == 0 and float(w.grad[0, 0]) == 100.0


def test_off_in_the_authors_presets_and_when_zero():
    for kwargs in ({"preset": "notebook"}, {"preset": "cifar_script"}, {"spike_clip": 0.0}):
        w = nn.Parameter(torch.zeros(4))
        opt = SGHMCSpikeSlab([w], 100, lr=0.0, **kwargs)
        assert opt.spike_clip == 0.0
        for norm in (1.0, 1.0, 100.0):
            _set_grad(w, norm)
            opt.step()
        assert float(w.grad.norm()) == pytest.approx(100.0) and opt.clipped_steps == 0


def test_state_dict_round_trip_continues_bit_identically():
    torch.manual_seed(1)
    w0 = torch.randn(6, 3)
    grads = [torch.randn(6, 3) * (20.0 if k == 5 else 1.0) for k in range(9)]

    def run(split: int | None) -> torch.Tensor:
        w = nn.Parameter(w0.clone())
        opt = SGHMCSpikeSlab([w], 50, lr=0.01, seed=2)
        for k, g in enumerate(grads):
            if k == split:
                sd = opt.state_dict()
                w = nn.Parameter(w.detach().clone())
                opt = SGHMCSpikeSlab([w], 50, lr=0.01, seed=2)
                opt.load_state_dict(sd)
            w.grad = g.clone()
            opt.step()
        assert opt.clipped_steps == 1
        return w.detach()

    assert torch.equal(run(None), run(4))


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_bad_factor_is_refused(bad):
    with pytest.raises(ValueError, match="spike_clip"):
        SGHMCSpikeSlab([nn.Parameter(torch.zeros(2))], 10, spike_clip=bad)


def test_config_option_reaches_the_optimizer():
    from bayescale.train.builders import build_optimizer

    cfg = load_config("mnist_sghmc_sparse")
    net = nn.Linear(4, 2)
    opt = build_optimizer(cfg.optim, net.parameters(), 0.1, sghmc=cfg.sghmc, num_train=10)
    assert opt.spike_clip == (3.0 if cfg.sghmc.preset == "robust" else 0.0)
    off = SGHMCConfig(spike_clip=0.0)
    assert build_optimizer(cfg.optim, net.parameters(), 0.1, sghmc=off,
                           num_train=10).spike_clip == 0.0
