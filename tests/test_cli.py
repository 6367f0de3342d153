"""The command line and the quickstart main job, end to end on the embedded digits data."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import bayescale
from bayescale import metrics
from bayescale.cli import main


def test_quickstart_trains_a_bnn_that_beats_chance(capsys):
    pytest.importorskip("sklearn")
    assert main(["quickstart", "--epochs", "3", "--samples", "10", "--json"]) == 0
    out = capsys.readouterr().out
    assert "test accuracy" in out
    import json

    result = json.loads(out[out.index("{"):])
    assert result["test_accuracy"] > 0.7  # 10 classes: chance is 0.1
    assert result["kl"] > 0 and result["test_nll"] < 1.5


def test_mc_predict_with_one_fixed_draw_equals_the_plain_forward():
    torch.manual_seed(0)
    model = bayescale.bayesianize(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)))
    x = torch.randn(7, 4)
    torch.manual_seed(3)
    probs = bayescale.mc_predict(model, x, num_samples=1)
    torch.manual_seed(3)
    with bayescale.fixed_sample(model):
        ref = torch.softmax(model(x), -1)
    torch.testing.assert_close(probs, ref)
    torch.manual_seed(4)
    chunked = bayescale.mc_predict(model, x, num_samples=5, batch_size=3, return_samples=True)
    assert chunked.shape == (5, 7, 3)
    torch.testing.assert_close(chunked.sum(-1), torch.ones(5, 7))
    torch.manual_seed(4)  # the running mean equals the mean of the same five draws
    torch.testing.assert_close(bayescale.mc_predict(model, x, num_samples=5, batch_size=3),
                               chunked.mean(0))


def test_accuracy_and_nll_match_reference():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.5, 0.4, 0.1]])
    y = torch.tensor([0, 1, 1])
    assert metrics.accuracy(probs, y) == pytest.approx(1 / 3)
    ref = -(torch.log(torch.tensor(0.7)) + torch.log(torch.tensor(0.3))
            + torch.log(torch.tensor(0.4))) / 3
    assert metrics.nll(probs, y) == pytest.approx(ref.item())
    with pytest.raises(ValueError, match="labels"):
        metrics.accuracy(probs, torch.tensor([0, 1]))
