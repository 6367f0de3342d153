"""VGG networks for 32x32 inputs: one deterministic builder, two configurations.

* ``vgg16_tfp`` — TFP's ``examples/models/bayesian_vgg.py`` for Sharma & Jennings (the
  paper's "VGG-16"): five blocks [64, 128, 256, 512, 512] of two 3x3 'same' conv-BN-ReLU and a
  2x2/2 max-pool (32 -> 1), flatten 512, dense. 10 conv + 1 dense = 11 layers made Bayesian;
  conv biases kept (TFP's deterministic bias), TF BatchNorm settings (eps 1e-3, momentum 0.99).
* ``vgg16`` — the usual CIFAR VGG-16 (13 conv-BN-ReLU, 5 max-pools, dense 512 -> classes,
  as in kuangliu/pytorch-cifar), for comparison with the literature.

Known difference from TFP: none in topology or parameter count; plain layers start with the Keras
defaults (Glorot-uniform kernel, zero bias) for ``vgg16_tfp`` and PyTorch's for ``vgg16``.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from .seed import keras_init_

__all__ = ["VGG16_TFP_CFG", "VGG16_CFG", "vgg", "vgg16", "vgg16_tfp"]

POOL = "M"
# TFP bayesian_vgg: filters [64, 128, 256, 512, 512], two convolutions per block.
VGG16_TFP_CFG: tuple[int | str, ...] = (
    64, 64, POOL, 128, 128, POOL, 256, 256, POOL, 512, 512, POOL, 512, 512, POOL,
)
# Simonyan & Zisserman configuration "D" (13 convolutions).
VGG16_CFG: tuple[int | str, ...] = (
    64, 64, POOL, 128, 128, POOL, 256, 256, 256, POOL, 512, 512, 512, POOL, 512, 512, 512, POOL,
)


def vgg(
    cfg: Sequence[int | str],
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    bn_eps: float = 1e-5,
    bn_momentum: float = 0.1,
) -> nn.Module:
    """VGG body from ``cfg`` (ints: 3x3 conv-BN-ReLU widths, ``"M"``: 2x2/2 max-pool) + dense.

    Args:
        cfg: layer configuration, e.g. :data:`VGG16_TFP_CFG`.
        num_classes: width of the final dense layer (logits, no activation).
        in_channels: input channels (3 for CIFAR).
        image_size: input height = width; must be divisible by 2 ** (number of pools).
        bn_eps, bn_momentum: BatchNorm settings (PyTorch convention for the momentum).
    """
    layers: list[nn.Module] = []
    cin, size = in_channels, image_size
    for item in cfg:
        if item == POOL:
            layers.append(nn.MaxPool2d(2))
            size //= 2
            continue
        width = int(item)
        layers += [
            nn.Conv2d(cin, width, 3, padding=1),
            nn.BatchNorm2d(width, eps=bn_eps, momentum=bn_momentum),
            nn.ReLU(),
        ]
        cin = width
    if size < 1:
        raise ValueError(f"image_size={image_size} is too small for {cfg.count(POOL)} pools")
    return nn.Sequential(
        nn.Sequential(*layers), nn.Flatten(), nn.Linear(cin * size * size, num_classes)
    )


def vgg16_tfp(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    """TFP ``bayesian_vgg`` topology (Sharma & Jennings), deterministic; 11 convertible layers.

    BatchNorm as Keras' defaults: eps 1e-3, moving-average momentum 0.99 (PyTorch 0.01).
    """
    model = vgg(VGG16_TFP_CFG, num_classes, in_channels, image_size, bn_eps=1e-3,
                bn_momentum=0.01)
    return keras_init_(model)


def vgg16(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    """Standard CIFAR VGG-16 with BatchNorm (13 conv + 1 dense; 14,728,266 parameters)."""
    return vgg(VGG16_CFG, num_classes, in_channels, image_size)
