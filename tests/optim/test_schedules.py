"""Learning-rate schedules: the NFNet numbers, closed forms, and config errors."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nfnets_jax.optim import (
    SCHEDULES,
    build_schedule,
    constant,
    cosine_decay,
    warmup_cosine_decay,
    warmup_exp_decay,
    warmup_step_decay,
)
from tests.optim import reference as ref

IMAGES = 1_281_167
BATCH = 4096
EPOCHS = 360
TOTAL = (IMAGES * EPOCHS) // BATCH


def nfnet_lr():
    return build_schedule(
        dict(name="warmup_cosine", warmup_epochs=5.0, start_val=0.0, min_val=0.0),
        max_val=0.1 * BATCH / 256,
        steps_per_epoch=IMAGES / BATCH,
        total_steps=TOTAL,
    )


def test_nfnet_schedule_values_from_the_spec():
    assert TOTAL == 112_602
    lr = nfnet_lr()
    assert float(lr(0)) == 0.0  # the first update uses lr 0
    expected = {1: 0.0010231, 1000: 1.02307, 1563: 1.59905, 1564: 1.6, 56301: 0.81770}
    for step, value in expected.items():
        assert float(lr(step)) == pytest.approx(value, abs=6e-6), step
    assert abs(float(lr(112_601))) < 1e-8
    assert abs(float(lr(TOTAL))) < 1e-8


def test_nfnet_schedule_equals_closed_form_everywhere():
    lr = jax.jit(nfnet_lr())
    steps = np.concatenate([np.arange(0, 3000, 7), np.linspace(3000, TOTAL, 400).astype(int)])
    got = np.asarray(lr(jnp.asarray(steps)))
    warmup = 5 * IMAGES / BATCH
    want = [ref.np_warmup_cosine(float(t), 1.6, TOTAL, warmup) for t in steps]
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)
    # Warmup selection: itr <= warmup_steps (1563.92) is warmup, 1564 is cosine at its peak.
    assert float(lr(1563)) < 1.6 and float(lr(1564)) == pytest.approx(1.6, abs=1e-6)


def test_cosine_and_constant():
    lr = cosine_decay(2.0, 100, min_val=0.5)
    for t in (0, 25, 50, 99, 100):
        want = 0.5 * 1.5 * (1 + math.cos(math.pi * t / 100)) + 0.5
        assert float(lr(t)) == pytest.approx(want, rel=1e-6)
    assert float(lr(150)) == pytest.approx(0.5)  # clamped past the end
    assert float(constant(0.3)(10**6)) == pytest.approx(0.3)
    np.testing.assert_allclose(constant(0.3)(jnp.arange(3)), [0.3] * 3, rtol=1e-7)


def test_zero_warmup_is_plain_cosine():
    a = warmup_cosine_decay(1.0, 50, warmup_steps=0)
    b = cosine_decay(1.0, 50)
    steps = jnp.arange(51)
    np.testing.assert_array_equal(a(steps), b(steps))
    assert float(a(0)) == 1.0


def test_warmup_exp_decay():
    lr = warmup_exp_decay(0.256, warmup_steps=10.5, factor=0.97, interval=4.0, start_val=0.01)
    for t in (0, 5, 10):
        assert float(lr(t)) == pytest.approx((0.256 - 0.01) * t / 10.5 + 0.01, rel=1e-6)
    for t in (11, 14, 15, 100):
        want = 0.256 * 0.97 ** math.floor((t - 10.5) / 4.0)
        assert float(lr(t)) == pytest.approx(want, rel=1e-6), t


def test_step_decay_with_and_without_warmup():
    # Bag of Tricks baseline: 0.1 at batch 256, divided by 10 at epochs 30, 60, 90.
    spe = IMAGES // 256
    lr = build_schedule(
        dict(name="step", decay_epochs=[30, 60, 90]),
        max_val=0.1,
        steps_per_epoch=spe,
        total_steps=120 * spe,
    )
    for t, want in [
        (0, 0.1),
        (30 * spe - 1, 0.1),
        (30 * spe, 0.01),
        (60 * spe, 1e-3),
        (90 * spe, 1e-4),
    ]:
        assert float(lr(t)) == pytest.approx(want, rel=1e-6), t
    warm = warmup_step_decay(0.4, boundaries=[100, 200], warmup_steps=10)
    assert float(warm(0)) == 0.0
    assert float(warm(5)) == pytest.approx(0.2)
    assert float(warm(10)) == pytest.approx(0.4)
    assert float(warm(99)) == pytest.approx(0.4)
    assert float(warm(100)) == pytest.approx(0.04)
    assert float(warm(250)) == pytest.approx(0.004)


def test_schedule_config_errors():
    kw = dict(max_val=1.0, steps_per_epoch=10.0, total_steps=100)
    with pytest.raises(ValueError, match=r"unknown name 'cosin'.*warmup_cosine"):
        build_schedule(dict(name="cosin"), **kw)
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['warmup_epoch'\]"):
        build_schedule(dict(name="warmup_cosine", warmup_epoch=5), **kw)
    with pytest.raises(ValueError, match=r"missing required key\(s\) \['warmup_epochs'\]"):
        build_schedule(dict(name="warmup_cosine"), **kw)
    with pytest.raises(ValueError, match="must be below num_steps"):
        build_schedule(dict(name="warmup_cosine", warmup_epochs=10), **kw)
    with pytest.raises(ValueError, match="falls inside the warmup"):
        build_schedule(dict(name="step", decay_epochs=[1], warmup_epochs=2), **kw)
    with pytest.raises(ValueError, match="strictly increasing"):
        build_schedule(dict(name="step", decay_epochs=[5, 3]), **kw)
    with pytest.raises(ValueError, match="must be a list"):
        build_schedule(dict(name="step", decay_epochs=30), **kw)
    with pytest.raises(ValueError, match="must be a number"):
        build_schedule(dict(name="cosine", min_val="0"), **kw)
    assert set(SCHEDULES) == {"warmup_cosine", "cosine", "constant", "warmup_exp", "step"}
