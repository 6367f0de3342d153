"""Shift transforms against closed forms and naive references (rot90, scipy's Gaussian filter)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bayescale.data import shifts as S


def _images(n=3, c=1, h=8, w=8, seed=0):
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(seed))


def test_rotation_by_zero_is_the_identity():
    x = _images(c=3, h=28, w=28)
    torch.testing.assert_close(S.rotate(x, 0.0), x, atol=1e-5, rtol=0)  # float32 grid


@pytest.mark.parametrize("k", [1, 2, 3, -1])
def test_rotation_by_multiples_of_90_equals_rot90(k):
    x = _images(c=2, h=28, w=28)
    torch.testing.assert_close(S.rotate(x, 90.0 * k), torch.rot90(x, k, dims=(-2, -1)),
                               atol=1e-5, rtol=0)


def test_rotation_is_counter_clockwise_and_keeps_the_centre_pixel_of_an_odd_image():
    x = torch.zeros(1, 1, 5, 5)
    x[0, 0, 2, 4] = 1.0  # right of the centre
    y = S.rotate(x, 90.0)
    assert y[0, 0, 0, 2] == pytest.approx(1.0, abs=1e-5)  # counter-clockwise: now on top
    x = _images(h=5, w=5)
    assert S.rotate(x, 37.0)[:, :, 2, 2] == pytest.approx(x[:, :, 2, 2], abs=1e-5)


def test_rotation_of_a_non_square_image_by_180_flips_both_axes():
    x = _images(h=6, w=10)
    torch.testing.assert_close(S.rotate(x, 180.0), x.flip(-1).flip(-2), atol=1e-5, rtol=0)


def test_additive_noise_has_the_requested_statistics_and_is_reproducible():
    x = torch.full((200, 1, 28, 28), 0.5)
    gen = torch.Generator().manual_seed(3)
    y = S.add_gaussian_noise(x, 0.1, gen, clip=False)
    d = (y - x).flatten()
    assert d.mean().item() == pytest.approx(0.0, abs=3 * 0.1 / math.sqrt(d.numel()) * 2)
    assert d.std().item() == pytest.approx(0.1, rel=0.01)
    again = S.add_gaussian_noise(x, 0.1, torch.Generator().manual_seed(3), clip=False)
    torch.testing.assert_close(y, again)
    z = S.add_gaussian_noise(x, 2.0, torch.Generator().manual_seed(3))
    assert z.min() == 0.0 and z.max() == 1.0  # clipped to the pixel range


def test_cifar_c_noise_uses_the_published_sd():
    x = torch.full((50, 3, 32, 32), 0.5)
    for sev, c in enumerate(S.CIFAR_C_SEVERITIES["gaussian_noise"], start=1):
        y = S.corrupt(x, "gaussian_noise", sev, torch.Generator().manual_seed(sev))
        assert (y - x).std().item() == pytest.approx(c, rel=0.02)  # c << 0.5: no clipping


def test_contrast_on_a_constant_image_and_the_formula_on_a_two_level_one():
    const = torch.full((2, 3, 32, 32), 0.3)
    for sev in range(1, 6):
        torch.testing.assert_close(S.contrast_c(const, sev), const)
    x = torch.zeros(1, 1, 4, 4)
    x[..., :2, :] = 1.0  # mean 0.5
    for sev, c in enumerate(S.CIFAR_C_SEVERITIES["contrast"], start=1):
        y = S.contrast_c(x, sev)
        assert y.max().item() == pytest.approx(0.5 + 0.5 * c)
        assert y.min().item() == pytest.approx(0.5 - 0.5 * c)


def test_blur_preserves_a_constant_image_and_matches_scipy():
    ndimage = pytest.importorskip("scipy.ndimage")
    const = torch.full((2, 3, 32, 32), 0.7)
    for sev in range(1, 6):
        torch.testing.assert_close(S.gaussian_blur_c(const, sev), const)
    x = _images(n=2, c=3, h=32, w=32).double()
    for sigma in (0.4, 1.0, 2.5):
        ref = np.stack([np.stack([ndimage.gaussian_filter(ch, sigma, mode="nearest",
                                                          truncate=4.0) for ch in img])
                        for img in x.numpy()])
        np.testing.assert_allclose(S.gaussian_blur(x, sigma).numpy(), ref, atol=1e-12)


def test_shift_levels_and_bad_inputs():
    x = _images(h=28, w=28)
    out = S.shift_levels(x, "rotation", [0, 90])
    assert [(k, lv) for k, lv, _ in out] == [("rotation", 0), ("rotation", 90)]
    a = S.shift_levels(x, "noise", [0.2], seed=5)[0][2]
    b = S.shift_levels(x, "noise", [0.2], seed=5)[0][2]
    torch.testing.assert_close(a, b)
    assert S.shift_levels(x, "contrast", [5])[0][2].shape == x.shape
    with pytest.raises(ValueError, match="unknown shift"):
        S.shift_levels(x, "fog", [1])
    with pytest.raises(ValueError, match="severity"):
        S.contrast_c(x, 6)
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        S.rotate(x[0], 10)
