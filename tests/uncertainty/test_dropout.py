"""MC dropout: the seed builders' dropout option, the context manager, and mc_predict sampling."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bayescale.models import count_parameters, get_model
from bayescale.train.config import ConfigError, config_from_dict
from bayescale.train.runs import build_model
from bayescale.uncertainty.dropout import dropout_layers, mc_dropout
from bayescale.uncertainty.predict import mc_predict


@pytest.mark.parametrize("name", ["CNN_conv", "CNN_FC", "CIFAR10_BNN_model", "BNN_conv_flip"])
def test_dropout_option_adds_one_layer_before_the_classifier_and_no_parameters(name):
    plain, drop = get_model(name), get_model(name, dropout=0.5)
    assert count_parameters(plain) == count_parameters(drop)
    assert plain.state_dict().keys() == drop.state_dict().keys()  # weights load either way
    names = [n for n, _ in drop.named_children()]
    assert names[-2] == "dropout" and drop.dropout.p == 0.5
    assert not dropout_layers(plain)


def test_mc_dropout_samples_only_dropout_and_restores_modes():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.5),
                        nn.Linear(32, 3)).eval()
    x = torch.randn(40, 6)
    det = mc_predict(net, x, 10)  # eval mode: dropout off, one pass
    torch.testing.assert_close(det, torch.softmax(net(x), -1).detach())
    with mc_dropout(net):
        assert net[3].training and not net[1].training  # BatchNorm keeps running statistics
        samples = mc_predict(net, x, 30, return_samples=True)
        # naive reference: the mean of 30 independent stochastic forwards under the same seed
        torch.manual_seed(7)
        ref = torch.stack([torch.softmax(net(x), -1) for _ in range(30)]).mean(0).detach()
        torch.manual_seed(7)
        mean = mc_predict(net, x, 30, draws_per_pass=1)
    assert not net[3].training
    assert samples.shape == (30, 40, 3) and samples.std(0).max() > 1e-3  # the passes differ
    torch.testing.assert_close(mean, ref)
    with pytest.raises(ValueError, match="no dropout"):
        with mc_dropout(nn.Linear(2, 2)):
            pass


def test_config_model_dropout_builds_the_twin_with_dropout_and_refuses_bad_values():
    cfg = config_from_dict({"model": {"name": "CNN_conv", "dropout": 0.25}})
    assert build_model(cfg).dropout.p == 0.25
    with pytest.raises(ConfigError, match="model.dropout"):
        config_from_dict({"model": {"name": "CNN_conv", "dropout": 1.5}})
    with pytest.raises(ValueError, match="seed models"):
        build_model(config_from_dict({"model": {"name": "vgg16", "dropout": 0.5}}))
