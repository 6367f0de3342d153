"""Deterministic builders of the seed tutorial networks (``src/utils.py``).

The seed (``Himscipy/bnn_hvd``) defines seven models; they come from three topologies here, and the
registry (:mod:`bayescale.models`) picks which layers :func:`bayescale.bayesianize` converts:

* :func:`seed_conv`: conv 64 5x5 'SAME' + ReLU -> max-pool 2 -> flatten 12544 -> dense 10
  (``BNN_conv_flip``, ``BNN_conv_nonflip``: conv Bayesian; ``CNN_conv``: deterministic).
* :func:`seed_fc`: flatten 784 -> dense 64 + ReLU -> dense 10
  (``BNN_FC_flip``, ``BNN_FC_nonflip``: first dense Bayesian; ``CNN_FC``: deterministic).
* :func:`seed_vgg3`: three VGG blocks [32, 64, 128] -> dense 128 -> dense 10
  (``CIFAR10_BNN_model``: all eight layers Bayesian).

Inputs are images ``[N, C, H, W]`` (MNIST ``[N, 1, 28, 28]`` in [0, 1]); the seed's Reshape of a
flat 784 vector is therefore not needed. TF 'SAME' 2x2/2 max-pooling on even sizes equals
``nn.MaxPool2d(2)``. Plain layers start as Keras' do (Glorot-uniform kernel, zero bias).
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

__all__ = ["keras_init_", "seed_conv", "seed_fc", "seed_vgg3"]


def keras_init_(model: nn.Module) -> nn.Module:
    """Initialise every Linear/Conv as Keras does: Glorot-uniform weight, zero bias (in place).

    Spec §2.5: the seed's deterministic ``Dense``/``Conv2D`` layers use the Keras defaults.
    """
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model


def _dropout(p: float) -> list[tuple[str, nn.Module]]:
    """``[("dropout", nn.Dropout(p))]`` before the classifier, or nothing for ``p = 0`` (so the
    default networks, their state dicts and parameter counts are the seed's)."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {p!r}")
    return [("dropout", nn.Dropout(p))] if p > 0 else []


def seed_conv(num_classes: int = 10, in_channels: int = 1, image_size: int = 28,
              dropout: float = 0.0) -> nn.Module:
    """Seed conv net: ``conv`` 64x5x5 'SAME' + ReLU, max-pool 2, flatten, ``fc`` dense.

    Spec §2.4 ``BNN_conv_flip`` / ``BNN_conv_nonflip`` / ``CNN_conv`` (128,714 / 127,114
    trainable parameters with 10 classes). ``dropout > 0`` adds ``nn.Dropout`` before ``fc``
    (MC dropout, Gal & Ghahramani 2016, arXiv:1506.02142).
    """
    flat = 64 * (image_size // 2) ** 2
    model = nn.Sequential(OrderedDict([
        ("conv", nn.Conv2d(in_channels, 64, 5, padding=2)),
        ("relu", nn.ReLU()),
        ("pool", nn.MaxPool2d(2)),
        ("flatten", nn.Flatten()),
        *_dropout(dropout),
        ("fc", nn.Linear(flat, num_classes)),
    ]))
    return keras_init_(model)


def seed_fc(num_classes: int = 10, in_features: int = 784, hidden: int = 64,
            dropout: float = 0.0) -> nn.Module:
    """Seed MLP: flatten, ``fc1`` dense 64 + ReLU, ``fc2`` dense.

    Spec §2.4 ``BNN_FC_flip`` / ``BNN_FC_nonflip`` / ``CNN_FC`` (101,066 / 50,890 trainable
    parameters with 10 classes). ``dropout > 0`` adds ``nn.Dropout`` before ``fc2``.
    """
    model = nn.Sequential(OrderedDict([
        ("flatten", nn.Flatten()),
        ("fc1", nn.Linear(in_features, hidden)),
        ("relu", nn.ReLU()),
        *_dropout(dropout),
        ("fc2", nn.Linear(hidden, num_classes)),
    ]))
    return keras_init_(model)


def _vgg_block(index: int, cin: int, cout: int) -> list[tuple[str, nn.Module]]:
    """Two 3x3 'SAME' conv + ReLU, then 2x2/2 max-pool (seed names Conv_I, Conv_II, ...)."""
    return [
        (f"conv{2 * index + 1}", nn.Conv2d(cin, cout, 3, padding=1)),
        (f"relu{2 * index + 1}", nn.ReLU()),
        (f"conv{2 * index + 2}", nn.Conv2d(cout, cout, 3, padding=1)),
        (f"relu{2 * index + 2}", nn.ReLU()),
        (f"pool{index + 1}", nn.MaxPool2d(2)),
    ]


def seed_vgg3(num_classes: int = 10, in_channels: int = 3, image_size: int = 32,
              dropout: float = 0.0) -> nn.Module:
    """Seed CIFAR-10 net: three VGG blocks [32, 64, 128], dense 128 + ReLU, dense.

    Spec §2.4 ``CIFAR10_BNN_model`` (``Conv_I``..``Conv_VI`` = ``conv1``..``conv6``,
    ``Dense_I``/``Dense_II`` = ``fc1``/``fc2``; 1,100,554 trainable parameters when Bayesian).
    ``dropout > 0`` adds ``nn.Dropout`` before ``fc2``.
    """
    widths = (32, 64, 128)
    layers: list[tuple[str, nn.Module]] = []
    cin = in_channels
    for i, width in enumerate(widths):
        layers += _vgg_block(i, cin, width)
        cin = width
    flat = widths[-1] * (image_size // 2 ** len(widths)) ** 2
    layers += [
        ("flatten", nn.Flatten()),
        ("fc1", nn.Linear(flat, 128)),
        ("relu_fc1", nn.ReLU()),
        *_dropout(dropout),
        ("fc2", nn.Linear(128, num_classes)),
    ]
    return keras_init_(nn.Sequential(OrderedDict(layers)))
