"""ResNets for 32x32 inputs: TFP's Bayesian "ResNet-18" and the standard CIFAR ResNet-18.

* ``resnet18_tfp`` — TFP ``examples/models/bayesian_resnet.py`` for Sharma & Jennings (the
  paper's "ResNet-18"; not a standard ResNet-18): 3x3 stem conv 64, then ONE pre-activation block
  per stage, widths [64, 128, 256, 512], strides [1, 2, 2, 2]; final BN-ReLU-avgpool 4-flatten-
  dense. TFP tests ``filters != x.shape[1]`` on an NHWC tensor (the height, not the channels), so
  every block gets a 1x1 projection shortcut: ``projection_all=True`` reproduces that quirk,
  ``False`` projects only where the shape changes. 1 + 4 * 3 + 1 = 14 convertible layers.
* ``resnet18`` — the usual CIFAR ResNet-18 (kuangliu/pytorch-cifar): 3x3 stem, [2, 2, 2, 2]
  post-activation BasicBlocks, bias-free convolutions with BatchNorm; 11,173,962 parameters.

Known difference from TFP: a stride-2 3x3 'same' convolution pads (0, 1) in TF and (1, 1) here;
output shapes and parameter counts are identical, the sampling grid is shifted by one pixel.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from .seed import keras_init_

__all__ = ["TFPResBlock", "BasicBlock", "resnet18_tfp", "resnet18"]


def _tf_bn(channels: int) -> nn.BatchNorm2d:
    """BatchNorm with Keras' defaults (eps 1e-3, moving-average momentum 0.99)."""
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


class TFPResBlock(nn.Module):
    """TFP ``_resnet_block``: BN-ReLU, then conv-BN-ReLU-conv plus a (projected) shortcut.

    The shortcut branches off after the first BN-ReLU, as in TFP.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, projection: bool) -> None:
        super().__init__()
        self.bn1 = _tf_bn(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1)
        self.bn2 = _tf_bn(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if projection or stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = nn.Conv2d(in_channels, out_channels, 1, stride=stride)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(x))
        out = self.conv1(x)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + self.shortcut(x)


def resnet18_tfp(
    num_classes: int = 10,
    in_channels: int = 3,
    projection_all: bool = True,
    widths: Sequence[int] = (64, 128, 256, 512),
    strides: Sequence[int] = (1, 2, 2, 2),
) -> nn.Module:
    """TFP ``bayesian_resnet`` topology (Sharma & Jennings), deterministic; for 32x32 inputs.

    Args:
        num_classes: width of the final dense layer (logits).
        in_channels: input channels.
        projection_all: 1x1 projection shortcut in every block (TFP's behaviour, default);
            ``False`` uses identity shortcuts where stride is 1 and the width is unchanged.
        widths, strides: per-stage filters and strides (TFP: [64, 128, 256, 512], [1, 2, 2, 2]).
    """
    blocks = []
    cin = 64
    for width, stride in zip(widths, strides, strict=True):
        blocks.append(TFPResBlock(cin, width, stride, projection_all))
        cin = width
    model = nn.Sequential(
        nn.Conv2d(in_channels, 64, 3, padding=1),
        *blocks,
        _tf_bn(cin),
        nn.ReLU(),
        nn.AvgPool2d(4, stride=1),
        nn.Flatten(),
        nn.Linear(cin, num_classes),
    )
    return keras_init_(model)


class BasicBlock(nn.Module):
    """ResNet basic block (He et al. 2016): conv-BN-ReLU-conv-BN + shortcut, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def resnet18(
    num_classes: int = 10, in_channels: int = 3, depths: Sequence[int] = (2, 2, 2, 2)
) -> nn.Module:
    """Standard CIFAR ResNet-18 (3x3 stem, no initial max-pool, global average pool).

    He et al., "Deep Residual Learning for Image Recognition", CVPR 2016; CIFAR variant as in
    kuangliu/pytorch-cifar. 11,173,962 parameters for 10 classes.
    """
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
    ]
    cin = 64
    for stage, depth in enumerate(depths):
        width = 64 * 2**stage
        for i in range(depth):
            layers.append(BasicBlock(cin, width, stride=2 if stage and i == 0 else 1))
            cin = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)]
    return nn.Sequential(*layers)
