"""mc_predict and the uncertainty decomposition: closed forms, references and invariants."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import bayescale
from bayescale import BayesLinear, bayesianize, fixed_sample, mc_predict
from bayescale.uncertainty.decomposition import (
    decompose,
    decompose_regression,
    expected_entropy,
    mutual_information,
    predictive_entropy,
    predictive_variance,
)


def _sample_probs(t: int, n: int, c: int, seed: int = 0, sharp: float = 2.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(sharp * torch.randn(t, n, c, generator=g, dtype=torch.float64), -1)


def _mlp() -> nn.Module:
    return bayescale.bayesianize(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)))


class _Counter(nn.Module):
    """Wraps a network and counts forwards (to see how many passes mc_predict runs)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.calls = net, 0

    def forward(self, x):
        self.calls += 1
        return self.net(x)


# ------------------------------------------------------------------ decomposition
def test_decomposition_matches_loop_reference_and_adds_up():
    p = _sample_probs(7, 20, 4)

    def h(row):
        return -sum(v * math.log(v) for v in row.tolist() if v > 0)

    d = decompose(p)
    for i in range(20):
        mean_row = p[:, i].mean(0)
        assert d["total"][i].item() == pytest.approx(h(mean_row), rel=1e-12)
        assert d["aleatoric"][i].item() == pytest.approx(
            sum(h(p[t, i]) for t in range(7)) / 7, rel=1e-12)
    torch.testing.assert_close(d["total"], d["aleatoric"] + d["epistemic"], rtol=0, atol=1e-12)
    torch.testing.assert_close(predictive_entropy(p.mean(0)), d["total"])
    torch.testing.assert_close(expected_entropy(p), d["aleatoric"])
    torch.testing.assert_close(mutual_information(p), d["epistemic"])
    assert (d["epistemic"] > 1e-3).all()  # samples disagree: strictly positive MI


def test_decomposition_bounds_and_agreement():
    c = 5
    for seed, sharp in ((0, 0.1), (1, 3.0), (2, 30.0)):
        d = decompose(_sample_probs(9, 50, c, seed, sharp))
        assert (d["epistemic"] >= 0).all()
        assert (d["epistemic"] <= d["total"] + 1e-12).all()
        assert (d["total"] <= math.log(c) + 1e-12).all()
        assert (d["aleatoric"] <= math.log(c) + 1e-12).all()
    same = _sample_probs(1, 30, c).expand(6, -1, -1)  # every sample agrees
    d = decompose(same)
    assert d["epistemic"].abs().max() < 1e-12  # 0 up to float64 rounding of the mean
    torch.testing.assert_close(d["total"], d["aleatoric"])
    # one-hot samples (0 log 0 = 0): no aleatoric part; disagreeing one-hots are all epistemic
    onehot = torch.eye(2, dtype=torch.float64)[torch.tensor([[0], [1]])]  # (2, 1, 2)
    d = decompose(onehot)
    assert d["aleatoric"].item() == 0.0 and d["total"].item() == pytest.approx(math.log(2))
    assert d["epistemic"].item() == pytest.approx(math.log(2))
    uniform = torch.full((3, 1, 4), 0.25, dtype=torch.float32)
    assert decompose(uniform)["total"].item() == pytest.approx(math.log(4), rel=1e-6)


def test_predictive_variance_is_population_variance_per_class():
    p = _sample_probs(5, 3, 4)
    pv = predictive_variance(p)
    ref = ((p - p.mean(0)) ** 2).mean(0)
    torch.testing.assert_close(pv.per_class, ref)
    torch.testing.assert_close(pv.total, ref.sum(-1))
    assert predictive_variance(p[:1].expand(4, -1, -1)).total.abs().max() < 1e-15
    with pytest.raises(ValueError, match=r"\(T, N, C\)"):
        decompose(p[0])


def test_decompose_regression_law_of_total_variance():
    g = torch.Generator().manual_seed(0)
    m, v = torch.randn(6, 10, generator=g), torch.rand(6, 10, generator=g)
    d = decompose_regression(m, v)
    torch.testing.assert_close(d["aleatoric"], v.mean(0))
    torch.testing.assert_close(d["epistemic"], m.var(0, unbiased=False))
    torch.testing.assert_close(d["total"], d["aleatoric"] + d["epistemic"])
    assert torch.equal(decompose_regression(m, 0.25)["aleatoric"], torch.full((10,), 0.25))


# ------------------------------------------------------------------ mc_predict, classification
def test_mc_predict_with_one_fixed_draw_equals_the_plain_forward():
    model = _mlp()
    x = torch.randn(7, 4)
    torch.manual_seed(3)
    probs = mc_predict(model, x, num_samples=1)
    torch.manual_seed(3)
    with fixed_sample(model):
        ref = torch.softmax(model(x), -1)
    torch.testing.assert_close(probs, ref)
    # T draws: sample t is the plain forward under the t-th fixed draw
    torch.manual_seed(5)
    samples = mc_predict(model, x, num_samples=4, return_samples=True)
    torch.manual_seed(5)
    for t in range(4):
        with fixed_sample(model):
            torch.testing.assert_close(samples[t], torch.softmax(model(x), -1))
    assert not torch.allclose(samples[0], samples[1])  # draws differ


def test_chunked_and_unchunked_agree_and_running_mean_is_the_sample_mean():
    model = _mlp()
    x = torch.randn(11, 4)
    torch.manual_seed(4)
    chunked = mc_predict(model, x, num_samples=5, batch_size=3, return_samples=True)
    torch.manual_seed(4)
    whole = mc_predict(model, x, num_samples=5, batch_size=1024, return_samples=True)
    assert chunked.shape == (5, 11, 3)
    torch.testing.assert_close(chunked, whole)
    torch.testing.assert_close(chunked.sum(-1), torch.ones(5, 11))
    torch.manual_seed(4)
    torch.testing.assert_close(mc_predict(model, x, num_samples=5, batch_size=3), chunked.mean(0))


def test_flipout_model_uses_one_draw_per_sample_at_inference():
    model = bayescale.bayesianize(nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3)),
                                  estimator="flipout", init="tutorial")
    row = torch.randn(1, 4)
    x = torch.cat([row, torch.randn(2, 4), row])  # inputs 0 and 3 are identical
    with torch.no_grad():  # training-style forward: Flipout perturbs each example differently
        out = model(x)
    assert not torch.allclose(out[0], out[3])
    samples = mc_predict(model, x, num_samples=6, return_samples=True)
    torch.testing.assert_close(samples[:, 0], samples[:, 3], rtol=0, atol=0)
    assert not torch.allclose(samples[0, 0], samples[1, 0])  # but the draws differ


def test_sequence_of_models_is_the_mean_of_their_softmaxes():
    nets = [nn.Sequential(nn.Linear(4, 3)) for _ in range(3)]
    x = torch.randn(5, 4)
    ref = torch.stack([torch.softmax(n(x), -1) for n in nets]).detach()
    torch.testing.assert_close(mc_predict(nets, x), ref.mean(0))
    torch.testing.assert_close(mc_predict(nn.ModuleList(nets), x, 3, return_samples=True), ref)
    with pytest.raises(ValueError, match="num_samples=None"):
        mc_predict(nets, x, num_samples=10)
    # a Bayesian member is sampled with one fixed draw, like a single model
    mixed = [nets[0], _mlp()]
    torch.manual_seed(2)
    got = mc_predict(mixed, x, return_samples=True)
    torch.manual_seed(2)
    with fixed_sample(mixed[1]):
        torch.testing.assert_close(got[1], torch.softmax(mixed[1](x), -1))
    torch.testing.assert_close(got[0], ref[0])


def test_deterministic_model_runs_once_and_mc_dropout_runs_t_times():
    det = _Counter(nn.Sequential(nn.Linear(4, 3)))
    x = torch.randn(6, 4)
    samples = mc_predict(det, x, num_samples=20, batch_size=4, return_samples=True)
    assert det.calls == 2  # one pass over two chunks, not 20 passes
    assert samples.shape == (20, 6, 3) and torch.equal(samples[0], samples[19])
    torch.testing.assert_close(mc_predict(det, x, 20), torch.softmax(det(x), -1).detach())
    drop = _Counter(nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 3)))
    mc_predict(drop.train(), x, num_samples=5)
    assert drop.calls == 5  # dropout active: MC dropout, every pass differs
    drop.calls = 0
    mc_predict(drop.eval(), x, num_samples=5)
    assert drop.calls == 1


def test_timed_mc_predict_returns_the_prediction_and_seconds():
    model, x = _mlp(), torch.randn(4, 4)
    torch.manual_seed(1)
    probs, seconds = bayescale.timed_mc_predict(model, x, 3)
    torch.manual_seed(1)
    torch.testing.assert_close(probs, mc_predict(model, x, 3))
    assert 0 < seconds < 60


def test_bad_inputs_name_the_fix():
    model = _mlp()
    x = torch.randn(3, 4)
    with pytest.raises(ValueError, match=">= 1"):
        mc_predict(model, x, num_samples=0)
    with pytest.raises(TypeError, match="floating"):
        mc_predict(model, torch.ones(3, 4, dtype=torch.int64))
    bad = x.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"NaN/Inf at index \(1, 2\), clean the inputs"):
        mc_predict(model, bad)
    with pytest.raises(ValueError, match="task"):
        mc_predict(model, x, task="segmentation")
    with pytest.raises(ValueError, match="heteroscedastic head"):
        mc_predict(model, x, task="regression")  # (N, 3) output is not (mean, log-var)
    with pytest.raises(ValueError, match=r"draws_per_pass \(or 'auto'\) must be an int >= 1"):
        mc_predict(model, x, draws_per_pass=0)
    with pytest.raises(ValueError, match="int, None or 'auto'"):
        mc_predict(model, x, num_samples="many")
    with pytest.raises(ValueError, match="tol must be a positive number"):
        mc_predict(model, x, num_samples="auto", tol=0.0)
    with pytest.raises(ValueError, match="max_samples must be an int >= 20"):
        mc_predict(model, x, num_samples="auto", max_samples=5)
    with pytest.raises(TypeError, match="sample\\(\\) context manager"):
        mc_predict(model, x, posterior=object())
    with pytest.raises(TypeError, match="nn.Module"):
        mc_predict("model", x)
    with pytest.warns(UserWarning, match="eval"):
        mc_predict(nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)).train(), x, 2)


# ------------------------------------------------------------------ mc_predict, regression
def test_regression_epistemic_matches_the_closed_form_of_a_bayes_linear_layer():
    # y = x w + b, w ~ N(mu, diag sigma^2), deterministic b: Var[y] = x^T diag(sigma^2) x.
    torch.manual_seed(0)
    layer = BayesLinear(3, 1, dtype=torch.float64)
    with torch.no_grad():
        layer.weight_rho.copy_(torch.tensor([[-1.0, 0.0, 0.5]], dtype=torch.float64))
    x = torch.randn(5, 3, dtype=torch.float64)
    sigma2, mu = layer.weight_sigma.detach().square()[0], layer.weight_mu.detach()[0]
    exact_var = (x.square() * sigma2).sum(1)
    exact_mean = x @ mu + layer.bias.detach()
    t = 4000
    pred = mc_predict(layer, x, t, task="regression", noise_std=0.3, return_samples=True)
    assert pred.mean.shape == (5, 1) and pred.mean.dtype == torch.float64
    # sample variance of T Gaussians: standard error sqrt(2/T) relative; 5 standard errors
    torch.testing.assert_close(pred.epistemic[:, 0], exact_var, rtol=5 * math.sqrt(2 / t), atol=0)
    torch.testing.assert_close(pred.mean[:, 0], exact_mean, rtol=0,
                               atol=5 * (exact_var.max() / t) ** 0.5)
    assert torch.equal(pred.aleatoric, torch.full((5, 1), 0.09, dtype=torch.float64))
    torch.testing.assert_close(pred.total, pred.aleatoric + pred.epistemic)
    # the streaming (Welford) statistics equal those of the returned samples
    ref = decompose_regression(pred.samples_mean, 0.09)
    for key in ("mean", "epistemic", "total"):
        torch.testing.assert_close(getattr(pred, key), ref[key])
    assert pred.samples_var is None
    # and each sample is exactly the layer under its fixed draw (same seed, float64)
    torch.manual_seed(9)
    pred = mc_predict(layer, x, 3, batch_size=2, task="regression", noise_std=0.3,
                      return_samples=True)
    torch.manual_seed(9)
    for s in range(3):
        eps = torch.randn_like(layer.weight_mu)
        w = layer.weight_mu + layer.weight_sigma * eps
        torch.testing.assert_close(pred.samples_mean[s], (x @ w.T + layer.bias).detach())


class _HeteroHead(nn.Module):
    """(mean, log-variance) with a Bayesian mean and a KNOWN log-variance a * x[:, 0] + c."""

    def __init__(self, a: float, c: float) -> None:
        super().__init__()
        self.mean = BayesLinear(2, 1)
        self.a, self.c = a, c

    def forward(self, x):
        return torch.cat([self.mean(x), (self.a * x[:, :1] + self.c)], dim=1)


def test_heteroscedastic_head_recovers_the_known_aleatoric_variance():
    head = _HeteroHead(a=0.7, c=-1.0)
    x = torch.randn(9, 2)
    pred = mc_predict(head, x, 50, task="regression", batch_size=4, return_samples=True)
    known = torch.exp(0.7 * x[:, 0] - 1.0)
    torch.testing.assert_close(pred.aleatoric, known)
    torch.testing.assert_close(pred.samples_var, known.expand(50, -1))
    assert (pred.epistemic > 0).all()
    torch.testing.assert_close(pred.epistemic, pred.samples_mean.var(0, unbiased=False))
    torch.testing.assert_close(pred.mean, pred.samples_mean.mean(0))
    torch.testing.assert_close(pred.total, known + pred.epistemic)
    # a deterministic heteroscedastic net: one pass, no epistemic part
    det = nn.Linear(2, 2)
    pred = mc_predict(det, x, 10, task="regression")
    assert torch.equal(pred.epistemic, torch.zeros(9))
    torch.testing.assert_close(pred.aleatoric, det(x)[:, 1].exp().detach())


def test_predictions_feed_the_decomposition():
    model = bayescale.bayesianize(nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3)),
                                  init="tutorial")
    x = torch.randn(8, 4)
    samples = mc_predict(model, x, 10, return_samples=True)
    d = decompose(samples)
    torch.testing.assert_close(d["total"], d["aleatoric"] + d["epistemic"], rtol=0, atol=1e-6)
    torch.testing.assert_close(d["total"], predictive_entropy(samples.mean(0)))


@pytest.mark.parametrize("k", [2, 3, 7])
def test_batched_draws_give_the_loops_samples(k):
    """draws_per_pass=K: the same T weight draws as the loop (same seed), T not a multiple of K,
    for classification and for a heteroscedastic regression head."""
    torch.manual_seed(0)
    net = bayesianize(nn.Sequential(nn.Conv1d(2, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                                    nn.Linear(4 * 6, 3))).double()
    x = torch.randn(11, 2, 6, dtype=torch.float64)
    runs = {}
    for kk in (1, k):
        torch.manual_seed(5)
        runs[kk] = mc_predict(net, x, 10, batch_size=4, draws_per_pass=kk, return_samples=True)
    torch.testing.assert_close(runs[k], runs[1], rtol=1e-12, atol=1e-12)
    reg = bayesianize(nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2))).double()
    xr = torch.randn(9, 3, dtype=torch.float64)
    preds = {}
    for kk in (1, k):
        torch.manual_seed(6)
        preds[kk] = mc_predict(reg, xr, 10, batch_size=5, task="regression", draws_per_pass=kk)
    for field in ("mean", "aleatoric", "epistemic", "total"):
        torch.testing.assert_close(getattr(preds[k], field), getattr(preds[1], field),
                                   rtol=1e-10, atol=1e-12)


def test_batched_draws_leave_ensembles_and_deterministic_nets_alone():
    members = [_mlp() for _ in range(3)]
    x = torch.randn(5, 4)
    torch.manual_seed(1)
    batched = mc_predict(members, x, draws_per_pass=4)
    torch.manual_seed(1)
    torch.testing.assert_close(batched, mc_predict(members, x))
    plain = nn.Linear(4, 3)
    torch.testing.assert_close(mc_predict(plain, x, 8, draws_per_pass=4),
                               torch.softmax(plain(x), -1).detach())
