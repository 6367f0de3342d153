"""Distribution shifts generated in code: rotations, additive Gaussian noise and CIFAR-10-C-style
corruptions (Gaussian noise, Gaussian blur, contrast at severities 1-5).

Every transform takes a batch of images ``[N, C, H, W]`` with pixels in [0, 1] (before any mean
subtraction) and returns a new batch of the same shape and dtype; the input is never changed.
Random transforms take a ``torch.Generator`` so a shifted test set is the same on every run.

The CIFAR-10-C corruptions use the parameter values of ``make_cifar_c.py`` in
github.com/hendrycks/robustness (Hendrycks & Dietterich 2019), the values its CIFAR-10-C was made
with; they are ported to batched torch ops here (the published set is a fixed draw of the noise,
so its images are not reproduced bit for bit). Shift protocols as in Ovadia et al. 2019.

References:
    Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
    Perturbations", ICLR 2019 (arXiv:1903.12261).
    Ovadia et al., "Can You Trust Your Model's Uncertainty? Evaluating Predictive Uncertainty
    Under Dataset Shift", NeurIPS 2019 (arXiv:1906.02530).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "CIFAR_C_SEVERITIES",
    "CORRUPTIONS",
    "rotate",
    "add_gaussian_noise",
    "gaussian_blur",
    "gaussian_noise_c",
    "gaussian_blur_c",
    "contrast_c",
    "corrupt",
    "shift_levels",
]

# make_cifar_c.py (Hendrycks & Dietterich 2019), severities 1..5:
CIFAR_C_SEVERITIES: dict[str, tuple[float, ...]] = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),  # noise sd, pixels in [0, 1]
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),  # blur sd in pixels
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),  # factor towards each image's channel mean
}


def _check_images(x: Tensor) -> None:
    if not isinstance(x, Tensor) or x.dim() != 4 or not x.is_floating_point():
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"shifts take a float batch of images [N, C, H, W] in [0, 1], got "
                         f"{shape}; add the channel axis with x.unsqueeze(1) and scale uint8 by "
                         "1/255")


def rotate(x: Tensor, degrees: float) -> Tensor:
    """Rotate every image by ``degrees`` counter-clockwise (as displayed, row 0 on top) about its
    centre; bilinear interpolation, pixels from outside the image are 0 (MNIST's background).

    Built on ``affine_grid``/``grid_sample`` with ``align_corners=False``, so a multiple of 90°
    on a square image permutes pixel centres exactly: ``rotate(x, 90) == torch.rot90(x, 1,
    (-2, -1))``.
    """
    _check_images(x)
    theta = math.radians(float(degrees))
    c, s = math.cos(theta), math.sin(theta)
    n, _, h, w = x.shape
    # grid_sample reads output pixel (u, v) (normalised, x right, y down) from A @ (u, v): the
    # inverse of the displayed counter-clockwise rotation, corrected for a non-square aspect.
    mat = torch.tensor([[c, -s * h / w, 0.0], [s * w / h, c, 0.0]], dtype=x.dtype,
                       device=x.device)
    grid = F.affine_grid(mat.expand(n, 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def add_gaussian_noise(x: Tensor, std: float, generator: torch.Generator | None = None,
                       clip: bool = True) -> Tensor:
    """``x + N(0, std²)`` per pixel, clipped to [0, 1] unless ``clip=False``."""
    _check_images(x)
    if not std >= 0:
        raise ValueError(f"std must be >= 0, got {std!r}")
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    out = x + std * noise
    return out.clamp(0.0, 1.0) if clip else out


def _gauss_kernel(sigma: float, truncate: float, dtype: torch.dtype) -> Tensor:
    radius = int(truncate * sigma + 0.5)  # scipy.ndimage.gaussian_filter's support
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return (k / k.sum()).to(dtype)


def gaussian_blur(x: Tensor, sigma: float, truncate: float = 4.0) -> Tensor:
    """Separable Gaussian blur with sd ``sigma`` pixels, per channel; edges repeat the border
    pixel. This is ``skimage.filters.gaussian`` (``mode="nearest"``, ``truncate=4``), which
    ``make_cifar_c.py`` calls."""
    _check_images(x)
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma!r}")
    k = _gauss_kernel(sigma, truncate, x.dtype).to(x.device)
    r, c = k.numel() // 2, x.shape[1]
    out = F.pad(x, (r, r, 0, 0), mode="replicate")
    out = F.conv2d(out, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    out = F.pad(out, (0, 0, r, r), mode="replicate")
    return F.conv2d(out, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def _severity(name: str, severity: int) -> float:
    if isinstance(severity, bool) or severity not in (1, 2, 3, 4, 5):
        raise ValueError(f"severity must be an int in 1..5, got {severity!r}")
    return CIFAR_C_SEVERITIES[name][severity - 1]


def gaussian_noise_c(x: Tensor, severity: int, generator: torch.Generator | None = None
                     ) -> Tensor:
    """CIFAR-10-C Gaussian noise: ``clip(x + N(0, c²), 0, 1)``, c = 0.04 ... 0.10."""
    return add_gaussian_noise(x, _severity("gaussian_noise", severity), generator)


def gaussian_blur_c(x: Tensor, severity: int) -> Tensor:
    """CIFAR-10-C Gaussian blur: sd c = 0.4 ... 1 pixels, then clipped to [0, 1]."""
    return gaussian_blur(x, _severity("gaussian_blur", severity)).clamp(0.0, 1.0)


def contrast_c(x: Tensor, severity: int) -> Tensor:
    """CIFAR-10-C contrast: ``clip((x - m) c + m, 0, 1)`` with m each image's mean per channel,
    c = 0.75 ... 0.15."""
    _check_images(x)
    c = _severity("contrast", severity)
    means = x.mean(dim=(-2, -1), keepdim=True)
    return ((x - means) * c + means).clamp(0.0, 1.0)


CORRUPTIONS: dict[str, Callable[..., Tensor]] = {
    "gaussian_noise": gaussian_noise_c,
    "gaussian_blur": gaussian_blur_c,
    "contrast": contrast_c,
}


def corrupt(x: Tensor, name: str, severity: int, generator: torch.Generator | None = None
            ) -> Tensor:
    """One CIFAR-10-C-style corruption by name (``CORRUPTIONS``) at ``severity`` 1..5."""
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; choose one of {sorted(CORRUPTIONS)}")
    if name == "gaussian_noise":
        return gaussian_noise_c(x, severity, generator)
    return CORRUPTIONS[name](x, severity)


def shift_levels(x: Tensor, kind: str, levels: Sequence[float | int], seed: int = 0
                 ) -> list[tuple[str, float, Tensor]]:
    """Shifted copies of ``x``: ``(kind, level, images)`` for each level.

    ``kind`` is ``"rotation"`` (levels in degrees), ``"noise"`` (additive Gaussian sd, clipped)
    or a name in ``CORRUPTIONS`` (severities 1..5). Random kinds draw from a generator seeded
    with ``seed`` + the level's index, so the sets are reproducible.
    """
    out = []
    for i, level in enumerate(levels):
        gen = torch.Generator(device=x.device).manual_seed(seed + i)
        if kind == "rotation":
            shifted = rotate(x, float(level))
        elif kind == "noise":
            shifted = add_gaussian_noise(x, float(level), gen)
        elif kind in CORRUPTIONS:
            shifted = corrupt(x, kind, int(level), gen)
        else:
            raise ValueError(f"unknown shift {kind!r}; choose rotation, noise or one of "
                             f"{sorted(CORRUPTIONS)}")
        out.append((kind, level, shifted))
    return out
