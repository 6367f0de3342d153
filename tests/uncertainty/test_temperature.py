"""Temperature scaling: recovers a known temperature, T = 1 for calibrated logits, never changes
the predicted class; the wrapper module divides the logits."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bayescale.uncertainty.predict import mc_predict
from bayescale.uncertainty.temperature import TemperatureScaled, fit_temperature, temperature_nll


def _calibrated(n=20000, c=10, seed=0):
    """Logits z and labels drawn from softmax(z): the model softmax(z) is calibrated."""
    g = torch.Generator().manual_seed(seed)
    z = 2.0 * torch.randn(n, c, generator=g, dtype=torch.float64)
    y = torch.multinomial(torch.softmax(z, -1), 1, generator=g).squeeze(1)
    return z, y


@pytest.mark.parametrize("t0", [0.5, 2.5, 4.0])
def test_recovers_a_known_temperature(t0):
    z, y = _calibrated()
    t = fit_temperature(z * t0, y)  # over-/under-confident by t0: the fit undoes it
    assert t == pytest.approx(t0, rel=0.03)


def test_temperature_one_for_calibrated_data_and_it_is_the_nll_minimum():
    z, y = _calibrated(seed=1)
    t = fit_temperature(z, y)
    assert t == pytest.approx(1.0, abs=0.03)
    grid = torch.linspace(0.5, 2.0, 301).tolist()  # naive reference: brute-force grid
    best = min(grid, key=lambda s: temperature_nll(z, y, s))
    assert t == pytest.approx(best, abs=0.006)
    assert temperature_nll(z, y, t) <= temperature_nll(z, y, best) + 1e-9


def test_fit_from_log_probabilities_equals_fit_from_logits():
    z, y = _calibrated(n=4000, seed=2)
    logp = torch.log_softmax(3.0 * z, -1)  # softmax is shift-invariant per row
    assert fit_temperature(logp, y) == pytest.approx(fit_temperature(3.0 * z, y), rel=1e-5)


def test_wrapper_divides_logits_keeps_argmax_and_runs_through_mc_predict():
    net = nn.Linear(5, 4)
    x = torch.randn(64, 5)
    scaled = TemperatureScaled(net, 2.0).eval()
    torch.testing.assert_close(scaled(x), net(x) / 2.0)
    probs = mc_predict(scaled, x, 1)
    torch.testing.assert_close(probs, torch.softmax(net(x) / 2.0, -1).detach())
    assert torch.equal(probs.argmax(-1), net(x).argmax(-1))
    assert "temperature=2.0000" in repr(scaled)


def test_bad_inputs():
    z, y = _calibrated(n=100)
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        fit_temperature(z[0], y)
    with pytest.raises(ValueError, match="labels"):
        fit_temperature(z, y[:5])
    with pytest.raises(ValueError, match="bounds"):
        fit_temperature(z, y, bounds=(2.0, 1.0))
    bad = z.clone()
    bad[0, 0] = -math.inf
    with pytest.raises(ValueError, match="NaN/Inf"):
        fit_temperature(bad, y)
    with pytest.raises(ValueError, match="> 0"):
        TemperatureScaled(nn.Identity(), 0.0)
