"""mc_predict's passes: K draws per forward ("auto" or fixed K) equal the loop's draws, "auto"
falls back to the loop where it must, and num_samples="auto" stops on the MC standard error."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

from bayescale import BayesConv2d, BayesLinear, bayesianize, get_model, mc_predict
from bayescale.nn.sampling import bayesian_layers
from bayescale.uncertainty.passes import MAX_DRAWS_PER_PASS, auto_draws_per_pass


def _samples(model, x, t, k, seed=3, **kw):
    torch.manual_seed(seed)
    return mc_predict(model, x, t, draws_per_pass=k, return_samples=True, return_info=True, **kw)


def _conv_net() -> nn.Module:
    return nn.Sequential(BayesConv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 4 * 4, 8), nn.ReLU(),
                         BayesLinear(8, 3)).eval()


@pytest.mark.parametrize("k", [2, 4, 7])
def test_fixed_k_gives_the_loops_samples(k):
    torch.manual_seed(0)
    net, x = _conv_net(), torch.randn(11, 1, 8, 8)
    ref, _ = _samples(net, x, 9, 1, batch_size=4)
    got, info = _samples(net, x, 9, k, batch_size=4)  # 9 % k and 11 % (4 // k) leave remainders
    assert info.draws_per_pass == k and info.num_samples == 9
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(ref[0], ref[1])


@pytest.mark.parametrize("name", ["BNN_FC_flip", "BNN_conv_flip"])
def test_auto_on_zoo_models_gives_the_loops_samples(name):
    torch.manual_seed(0)
    net, x = get_model(name, bayesian=True).eval(), torch.rand(6, 1, 28, 28)
    ref, _ = _samples(net, x, 12, 1)
    got, info = _samples(net, x, 12, "auto")
    assert info.draws_per_pass >= 1 and info.passes == 12
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


def test_auto_falls_back_to_the_loop_where_batching_cannot_run():
    class Residual(nn.Module):  # adds the input rows to the first Bayesian layer's output
        def __init__(self) -> None:
            super().__init__()
            self.lin, self.head = nn.Linear(5, 5), nn.Linear(5, 3)

        def forward(self, x):
            return self.head(x + torch.relu(self.lin(x)))

    torch.manual_seed(0)
    net, x = bayesianize(Residual()), torch.randn(7, 5)
    ref, _ = _samples(net, x, 6, 1)
    got, info = _samples(net, x, 6, "auto")
    assert info.draws_per_pass == 1
    torch.testing.assert_close(got, ref)
    with pytest.raises(RuntimeError):  # a fixed K > 1 is taken at its word and fails
        _samples(net, x, 6, 3)


def test_auto_keeps_the_loop_for_mc_dropout_whose_forward_draws_random_numbers():
    torch.manual_seed(0)
    net = nn.Sequential(BayesLinear(5, 16), nn.ReLU(), nn.Dropout(0.5), BayesLinear(16, 3))
    x = torch.randn(9, 5)
    ref, _ = _samples(net, x, 5, 1)
    got, info = _samples(net, x, 5, "auto")
    assert info.draws_per_pass == 1
    torch.testing.assert_close(got, ref)


def test_auto_draws_per_pass_follows_the_memory_budget():
    net = nn.Sequential(BayesLinear(100, 10), BayesLinear(10, 2, bayesian_bias=True))
    per_draw = 2 * 4 * (100 * 10 + 10 * 2 + 2)  # noise + sampled weight (and bias), float32
    assert auto_draws_per_pass(net, 300, 1000, memory_budget=5 * per_draw) == 5
    assert auto_draws_per_pass(net, 300, 1000, memory_budget=5 * per_draw - 1) == 4
    assert auto_draws_per_pass(net, 3, 1000, memory_budget=10**9) == 3  # capped by the passes
    assert auto_draws_per_pass(net, 300, 2, memory_budget=10**9) == 2  # and by the batch
    assert auto_draws_per_pass(net, 300, 1000) == MAX_DRAWS_PER_PASS
    with pytest.raises(ValueError, match="memory_budget"):
        auto_draws_per_pass(net, 300, 1000, memory_budget=0)


def _scaled(model: nn.Module, log_sigma: float) -> nn.Module:
    for layer in bayesian_layers(model):
        with torch.no_grad():
            layer.weight_rho.fill_(float(torch.log(torch.expm1(torch.tensor(log_sigma).exp()))))
    return model


def test_adaptive_stops_early_on_a_nearly_deterministic_model():
    torch.manual_seed(0)
    net, x = _scaled(_conv_net(), -12.0), torch.randn(20, 1, 8, 8)
    probs, info = _samples(net, x, "auto", 1, min_samples=20)
    assert info.num_samples == 20 and probs.shape[0] == 20 and info.converged
    assert info.standard_error < 1e-4
    _, info = _samples(net, x, "auto", "auto", min_samples=20)  # rounds of K draws
    assert info.converged and 20 <= info.num_samples <= 1 + info.draws_per_pass


def test_adaptive_runs_to_the_cap_on_a_noisy_model_and_reports_its_error():
    torch.manual_seed(0)
    net, x = _scaled(_conv_net(), 0.5), torch.randn(20, 1, 8, 8)
    probs, info = _samples(net, x, "auto", "auto", max_samples=40, tol=1e-6)
    assert info.num_samples == 40 and not info.converged
    # the stopping statistic: mean over inputs of the largest per-class SE of the mean
    se = (probs.double().std(0, unbiased=True) / 40 ** 0.5).amax(-1).mean()
    assert info.standard_error == pytest.approx(float(se), rel=1e-6)
    fixed, _ = _samples(net, x, 40, 1)  # the same draws as a fixed T under the same seed
    torch.testing.assert_close(probs, fixed, rtol=1e-5, atol=1e-6)


def test_adaptive_stops_at_the_first_round_below_the_tolerance():
    torch.manual_seed(0)
    net, x = _scaled(_conv_net(), -2.0), torch.randn(30, 1, 8, 8)
    fixed, _ = _samples(net, x, 300, 1)
    se = [float((fixed[:t].double().std(0) / t ** 0.5).amax(-1).mean()) for t in range(20, 301, 10)]
    tol = (se[3] + se[4]) / 2  # between the SE after 50 and after 60 draws
    assert se[3] > tol > se[4]  # the SE falls between those rounds (fixed seed)
    probs, info = _samples(net, x, "auto", 1, tol=tol)
    assert info.num_samples == 60 and info.converged
    torch.testing.assert_close(probs, fixed[:60])


def test_adaptive_on_a_deterministic_model_members_and_regression():
    torch.manual_seed(0)
    det, x = nn.Sequential(nn.Linear(4, 3)), torch.randn(5, 4)
    probs, info = mc_predict(det, x, "auto", return_info=True)
    assert info.num_samples == 1 and info.passes == 1
    torch.testing.assert_close(probs, det(x).softmax(-1).detach())
    members = [nn.Sequential(nn.Linear(4, 3)) for _ in range(3)]
    ens, info = mc_predict(members, x, "auto", return_info=True)
    assert info.num_samples == 3
    ref = torch.stack([m(x).softmax(-1) for m in members]).mean(0).detach()
    torch.testing.assert_close(ens, ref)
    reg_net = nn.Sequential(BayesLinear(4, 8), nn.ReLU(), BayesLinear(8, 1))
    pred, info = mc_predict(reg_net, x, "auto", task="regression", noise_std=0.5,
                            return_info=True, max_samples=60)
    assert 20 <= info.num_samples <= 60 and pred.mean.shape == (5, 1)


class _ShiftPosterior:
    """A stub weight posterior: draw t adds t to the bias of the last layer."""

    def __init__(self, layer: nn.Linear) -> None:
        self.layer, self.t = layer, 0

    @contextlib.contextmanager
    def sample(self):
        with torch.no_grad():
            self.layer.bias += self.t
        try:
            yield
        finally:
            with torch.no_grad():
                self.layer.bias -= self.t
            self.t += 1


def test_posterior_draws_the_weights_of_a_plain_model():
    torch.manual_seed(0)
    net, x = nn.Sequential(nn.Linear(4, 1)), torch.randn(6, 4)
    post = _ShiftPosterior(net[0])
    base = net(x).detach()
    pred = mc_predict(net, x, 4, task="regression", noise_std=1.0, posterior=post,
                      return_samples=True)
    want = torch.stack([base + t for t in range(4)])
    torch.testing.assert_close(pred.samples_mean, want)
    torch.testing.assert_close(pred.mean, base + 1.5)
    torch.testing.assert_close(net(x).detach(), base)  # the mean is back in place
