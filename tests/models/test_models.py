"""Tests for the model zoo: registry, architectures, parameter counts (spec §1.3, §2.4), twins."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bayescale import (
    DEFAULT_MAPPING,
    BayesConv2d,
    BayesianLayer,
    BayesLinear,
    kl_divergence,
    models,
)
from bayescale.models import count_parameters, get_model, list_models, model_spec
from bayescale.nn.sampling import bayesian_layers

SEED_NAMES = ["BNN_conv_flip", "BNN_conv_nonflip", "BNN_FC_flip", "BNN_FC_nonflip", "CNN_conv",
              "CNN_FC", "CIFAR10_BNN_model"]
ALL_NAMES = SEED_NAMES + ["vgg16_tfp", "resnet18_tfp", "resnet18", "vgg16"]
# (default build, bayesian=True, bayesian=False): TF-style trainable counts.
COUNTS = {
    "BNN_conv_flip": (128_714, 128_714, 127_114),       # spec §2.4
    "BNN_conv_nonflip": (128_714, 128_714, 127_114),    # spec §2.4
    "CNN_conv": (127_114, 128_714, 127_114),            # spec §2.4
    "BNN_FC_flip": (101_066, 101_066, 50_890),          # spec §2.4
    "BNN_FC_nonflip": (101_066, 101_066, 50_890),       # spec §2.4
    "CNN_FC": (50_890, 101_066, 50_890),                # spec §2.4
    "CIFAR10_BNN_model": (1_100_554, 1_100_554, 550_570),  # spec §2.4
    "vgg16_tfp": (18_823_178, 18_823_178, 9_416_010),   # spec §1.3
    "resnet18_tfp": (9_810_058, 9_810_058, 4_908_490),  # spec §1.3: "~9.81 M"
    "resnet18": (11_173_962, 22_338_314, 11_173_962),   # kuangliu CIFAR ResNet-18
    "vgg16": (14_728_266, 29_443_850, 14_728_266),      # kuangliu CIFAR VGG-16
}
NUM_BAYES_LAYERS = {"BNN_conv_flip": 1, "BNN_conv_nonflip": 1, "CNN_conv": 1, "BNN_FC_flip": 1,
                    "BNN_FC_nonflip": 1, "CNN_FC": 1, "CIFAR10_BNN_model": 8, "vgg16_tfp": 11,
                    "resnet18_tfp": 14, "resnet18": 21, "vgg16": 14}
ESTIMATORS = ("flipout", "reparam", "local")
CASES = [(n, False, None) for n in ALL_NAMES] + [
    (n, True, e) for n in ALL_NAMES for e in ESTIMATORS
]


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(min(threads, 2))
    yield
    torch.set_num_threads(threads)


def test_registry_lists_every_model():
    assert list_models() == sorted(ALL_NAMES)


@pytest.mark.parametrize(("name", "bayesian", "estimator"), CASES)
def test_forward_backward_kl(name, bayesian, estimator):
    model = get_model(name, bayesian=bayesian, estimator=estimator)
    x = torch.rand(2, *model_spec(name).input_shape)
    logits = model(x)
    assert logits.shape == (2, 10)
    assert torch.isfinite(logits).all()
    kl = kl_divergence(model)
    assert (kl > 0) if bayesian else (kl == 0)
    loss = F.cross_entropy(logits, torch.tensor([0, 1])) + kl / 50_000
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
    if bayesian:
        layers = bayesian_layers(model)
        assert layers and all(layer.estimator == estimator for layer in layers)
        assert all(layer.weight_rho.grad.abs().sum() > 0 for layer in layers)


@pytest.mark.parametrize("name", ALL_NAMES)
def test_parameter_counts(name):
    default, bayes, plain = COUNTS[name]
    assert count_parameters(get_model(name)) == default
    assert count_parameters(get_model(name, bayesian=True)) == bayes
    assert count_parameters(get_model(name, bayesian=False)) == plain


def test_count_parameters_skips_frozen_and_buffers():
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    assert count_parameters(model) == 8 + 4  # BN running stats are buffers
    model[0].weight.requires_grad_(False)
    assert count_parameters(model) == 2 + 4


@pytest.mark.parametrize("name", ALL_NAMES)
def test_bayesian_layer_count_and_defaults(name):
    spec = model_spec(name)
    default = get_model(name)
    expected = NUM_BAYES_LAYERS[name] if spec.bayesian else 0
    assert len(bayesian_layers(default)) == expected
    assert len(bayesian_layers(get_model(name, bayesian=True))) == NUM_BAYES_LAYERS[name]
    assert bayesian_layers(get_model(name, bayesian=False)) == []


@pytest.mark.parametrize(("name", "estimator", "kind", "layer_name"), [
    ("BNN_conv_flip", "flipout", BayesConv2d, "conv"),
    ("BNN_conv_nonflip", "reparam", BayesConv2d, "conv"),
    ("BNN_FC_flip", "flipout", BayesLinear, "fc1"),
    ("BNN_FC_nonflip", "reparam", BayesLinear, "fc1"),
])
def test_seed_bayesian_layer_is_the_right_one(name, estimator, kind, layer_name):
    model = get_model(name)
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, BayesianLayer)]
    assert [n for n, _ in found] == [layer_name]
    assert isinstance(found[0][1], kind) and found[0][1].estimator == estimator


def test_seed_conv_shapes_match_spec():
    model = get_model("CNN_conv")
    assert model.conv.padding == (2, 2) and model.conv.kernel_size == (5, 5)
    assert model.fc.in_features == 12_544  # 64 * 14 * 14 after the 'SAME' 2x2 pool
    assert torch.all(model.fc.bias == 0)  # Keras default init: zero bias


@pytest.mark.parametrize("name", ALL_NAMES)
def test_twin_topology(name):
    bayes = dict(get_model(name, bayesian=True).named_modules())
    plain = dict(get_model(name, bayesian=False).named_modules())
    assert list(bayes) == list(plain)
    changed = 0
    for key, module in bayes.items():
        if type(module) is not type(plain[key]):
            assert DEFAULT_MAPPING[type(plain[key])] is type(module), key
            changed += 1
    assert changed == NUM_BAYES_LAYERS[name]


@pytest.mark.parametrize("name", ["vgg16_tfp", "resnet18_tfp"])
def test_tfp_posterior_init_and_cap(name):
    layers = bayesian_layers(get_model(name))
    rho = torch.cat([layer.weight_rho.detach().flatten() for layer in layers])
    assert abs(rho.mean().item() + 9.0) < 0.01 and abs(rho.std().item() - 0.1) < 0.01
    sigma = torch.cat([layer.weight_sigma.detach().flatten() for layer in layers])
    expected = math.log1p(math.exp(-9.0))  # softplus(-9) ~ 1.234e-4
    assert sigma.median().item() == pytest.approx(expected, rel=0.02)
    cap = math.log1p(0.2)  # softplus(log 0.2)
    with torch.no_grad():
        for layer in layers:
            layer.weight_rho.fill_(3.0)
    assert all(layer.weight_sigma.max().item() == pytest.approx(cap, rel=1e-5) for layer in layers)


def test_tutorial_init_is_default_for_seed_models():
    sigma = bayesian_layers(get_model("CIFAR10_BNN_model"))[0].weight_sigma.detach()
    assert sigma.median().item() == pytest.approx(math.log1p(math.exp(-3.0)), rel=0.02)
    layer = bayesian_layers(get_model("vgg16_tfp", init="tutorial"))[0]
    assert layer.weight_rho.mean().item() == pytest.approx(-3.0, abs=0.05)


def test_resnet18_tfp_projection_quirk():
    def shortcuts(model):
        return [n for n, m in model.named_modules() if n.endswith("shortcut")
                and isinstance(m, BayesConv2d)]
    assert len(shortcuts(get_model("resnet18_tfp"))) == 4
    model = get_model("resnet18_tfp", projection_all=False)
    assert len(shortcuts(model)) == 3 and len(bayesian_layers(model)) == 13
    assert count_parameters(model) == 9_810_058 - 2 * 64 * 64 - 64


def test_num_classes_and_builder_kwargs():
    model = get_model("BNN_FC_flip", num_classes=3)
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 3)
    with pytest.raises(TypeError):
        get_model("BNN_FC_flip", no_such_option=1)


def test_unknown_name_lists_valid_names_and_suggests():
    with pytest.raises(ValueError, match="did you mean 'resnet18'") as info:
        get_model("resnet-18")
    assert all(name in str(info.value) for name in ALL_NAMES)
    with pytest.raises(ValueError, match="did you mean 'BNN_conv_flip'"):
        get_model("bnn_conv_flip")


def test_unknown_estimator_rejected():
    with pytest.raises(ValueError, match="estimator"):
        get_model("BNN_FC_flip", estimator="mc_dropout")


def test_register_model(monkeypatch):
    monkeypatch.setattr(models, "_REGISTRY", dict(models._REGISTRY))

    @models.register_model("tiny", bayesian=True, input_shape=(4,))
    def tiny(num_classes: int = 10) -> nn.Module:
        return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, num_classes))

    assert "tiny" in list_models()
    assert len(bayesian_layers(get_model("tiny"))) == 2
    with pytest.raises(ValueError, match="already registered"):
        models.register_model("tiny")(tiny)


@pytest.mark.parametrize("layers, names, count", [
    (None, ["conv"], 128_714),                # the seed's choice: conv Bayesian
    ("all", ["conv", "fc"], 254_154),         # + fc: 12,544 x 10 weights twice (mu, rho)
    ("last", ["fc"], 252_554),                # a last-layer BNN: conv plain (1,600 + 64)
    (["conv", "fc"], ["conv", "fc"], 254_154),
])
def test_bayesian_layers_choice(layers, names, count):
    model = get_model("BNN_conv_flip", layers=layers)
    got = [n for n, m in model.named_modules() if isinstance(m, BayesianLayer)]
    assert got == names
    assert count_parameters(model) == count
    assert len(bayesian_layers(get_model("CIFAR10_BNN_model", layers="last"))) == 1


@pytest.mark.parametrize("layers", ["first", ["fc9"], []])
def test_bayesian_layers_bad_choice_names_the_layers(layers):
    with pytest.raises(ValueError, match="conv|layers must be"):
        get_model("BNN_conv_flip", layers=layers)
