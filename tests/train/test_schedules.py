"""LR and KL-weight schedules against their closed forms."""

from __future__ import annotations

import math

import pytest

from bayescale.train.schedules import kl_weight_at, kl_weight_cyclical, lr_factor


def test_linear_warmup_then_constant():
    assert [lr_factor(s, 100, "constant", warmup_steps=4) for s in range(6)] == \
        [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_cosine_closed_form_after_warmup():
    total, warm, floor = 110, 10, 0.1
    for s in (10, 35, 60, 85, 109, 200):
        p = min(1.0, (s - warm) / (total - warm))
        want = floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p))
        assert lr_factor(s, total, "cosine", warm, floor) == pytest.approx(want)
    assert lr_factor(10, total, "cosine", warm, floor) == pytest.approx(1.0)
    assert lr_factor(110, total, "cosine", warm, floor) == pytest.approx(floor)


def test_step_decay():
    got = [lr_factor(s, 0, "step", 0, step_size=3, gamma=0.5) for s in range(7)]
    assert got == [1, 1, 1, 0.5, 0.5, 0.5, 0.25]
    with pytest.raises(ValueError, match="unknown lr schedule"):
        lr_factor(0, 10, "linear")


def test_kl_schedules():
    assert kl_weight_at(5, 100, 0.5) == 0.5
    assert kl_weight_at(5, 100, 2.0, "linear", anneal_steps=10) == pytest.approx(1.0)
    assert kl_weight_at(50, 100, 2.0, "linear", anneal_steps=10) == 2.0
    # 4 cycles of 25 steps, rising over the first half of each
    assert [kl_weight_cyclical(s, 100, 4, 0.5) for s in (0, 6, 12, 13, 24, 25, 31)] == \
        pytest.approx([0, 0.48, 0.96, 1, 1, 0, 0.48])
    # Blundell weights average to 1 over an epoch (module units, see elbo.py)
    m = 7
    assert sum(kl_weight_at(0, 0, 1.0, "blundell", batch_index=i, batches_per_epoch=m)
               for i in range(m)) / m == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown KL schedule"):
        kl_weight_at(0, 10, 1.0, "exp")


def test_cyclical_cosine_ramp_closed_form():
    from bayescale.train.schedules import cyclical_cosine

    total, cycles, h0, ramp = 100, 2, 0.4, 0.2  # 50 steps a cycle, the first 10 ramp up
    half = 0.5 * cycles / total  # half a step in cycle units
    for step in range(total):
        u = (step % 50) / 50
        want = (h0 * (u + half) / ramp if u < ramp
                else h0 * 0.5 * (math.cos(math.pi * (u - ramp) / (1 - ramp)) + 1))
        assert cyclical_cosine(step, total, cycles, h0, ramp) == pytest.approx(want)
    assert cyclical_cosine(0, total, cycles, h0, ramp) == pytest.approx(h0 * 0.05)
    assert cyclical_cosine(10, total, cycles, h0, ramp) == pytest.approx(h0)  # peak after ramp
    assert cyclical_cosine(30, total, cycles, h0, ramp) == pytest.approx(h0 / 2)  # mid-decay
    assert cyclical_cosine(50, total, cycles, h0, ramp) == pytest.approx(h0 * 0.05)  # restart
    ramp_up = [cyclical_cosine(s, total, cycles, h0, ramp) for s in range(10)]
    assert all(a < b for a, b in zip(ramp_up, ramp_up[1:], strict=False))
    assert max(cyclical_cosine(s, 1000, 3, h0, 0.37) for s in range(1000)) <= h0


def test_cyclical_cosine_ramp_zero_is_the_plain_schedule_and_bad_ramp_refused():
    from bayescale.train.schedules import cyclical_cosine

    for step in range(0, 60, 7):
        u = (step * 4 / 60) % 1.0
        want = 0.01 * 0.5 * (math.cos(math.pi * u) + 1)
        assert cyclical_cosine(step, 60, 4, 0.01) == pytest.approx(want)
        assert cyclical_cosine(step, 60, 4, 0.01, 0.0) == cyclical_cosine(step, 60, 4, 0.01)
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match="ramp"):
            cyclical_cosine(0, 60, 4, 0.01, bad)
