"""Bag-of-Tricks refinements: schedule (BT-1), scaling (BT-2), smoothing (BT-3),
distillation (BT-4), mixup (BT-5), and the step's teacher argument."""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import configs
from nfnets_jax import optim
from nfnets_jax.optim import schedules
from nfnets_jax.training import losses, mixup, parallel, step
from nfnets_jax.training import state as state_lib

Z = jnp.array([[2.0, 1.0, 0.1]])  # student logits
R = jnp.array([[1.0, 3.0, 0.5]])  # teacher logits
Y0 = jnp.array([0])


def test_bt1_warmup_then_cosine():
    lr = schedules.warmup_cosine_decay(0.4, 15, 5, warmup_offset=1)
    expected = [
        0.08,
        0.16,
        0.24,
        0.32,
        0.4,
        0.4,
        0.390211,
        0.361803,
        0.317557,
        0.261803,
        0.2,
        0.138197,
        0.082443,
        0.038197,
        0.009789,
    ]
    np.testing.assert_allclose([float(lr(s)) for s in range(15)], expected, atol=1e-6)
    # Full scale through the preset's optimizer config: 1251 steps/epoch, 5 warmup epochs.
    config = configs.load_config("bot_refined")
    params = {
        "ResNet/~/linear": {
            "w": jax.ShapeDtypeStruct((4, 10), jnp.float32),
            "b": jax.ShapeDtypeStruct((10,), jnp.float32),
        }
    }
    _, lr = optim.build_optimizer(
        config.optimizer, params, batch_size=1024, steps_per_epoch=1251, total_steps=150_120
    )
    assert float(lr(0)) == pytest.approx(0.4 / 6255, rel=1e-6)
    assert float(lr(0)) == pytest.approx(6.39488e-5, rel=1e-5)
    assert float(lr(6254)) == pytest.approx(0.4, rel=1e-6)
    assert float(lr(6255)) == pytest.approx(0.4, rel=1e-6)
    middle = 6255 + (150_120 - 6255) / 2
    assert float(lr(middle)) == pytest.approx(0.2, rel=1e-4)
    assert float(lr(150_119)) < 1e-6
    # The NFNet warmup (offset 0) is unchanged: its first update uses lr 0.
    assert float(schedules.warmup_cosine_decay(0.4, 15, 5)(0)) == 0.0
    with pytest.raises(ValueError, match="warmup_offset must be 0"):
        schedules.warmup_cosine_decay(0.4, 15, 5, warmup_offset=0.5)


@pytest.mark.parametrize("batch, peak", [(256, 0.1), (1024, 0.4), (4096, 1.6)])
def test_bt2_linear_scaling_and_warmup_of_the_step_schedule(batch, peak):
    config = configs.load_config("bot_efficient")
    params = {
        "m": {
            "w": jax.ShapeDtypeStruct((2, 2), jnp.float32),
            "b": jax.ShapeDtypeStruct((2,), jnp.float32),
        }
    }
    steps = 1_281_167 // batch
    _, lr = optim.build_optimizer(
        config.optimizer, params, batch_size=batch, steps_per_epoch=steps, total_steps=120 * steps
    )
    warmup = 5 * steps
    assert float(lr(0)) == pytest.approx(peak / warmup, rel=1e-5)
    assert float(lr(warmup - 1)) == pytest.approx(peak, rel=1e-6)
    assert float(lr(30 * steps - 1)) == pytest.approx(peak, rel=1e-6)
    assert float(lr(30 * steps)) == pytest.approx(peak / 10, rel=1e-5)
    assert float(lr(90 * steps)) == pytest.approx(peak / 1000, rel=1e-4)


def test_bt3_label_smoothing_forms():
    paper = losses.make_targets(Y0, 3, label_smoothing=0.1, label_smoothing_form="paper")
    uniform = losses.make_targets(Y0, 3, label_smoothing=0.1)
    np.testing.assert_allclose(paper[0], [0.9, 0.05, 0.05], rtol=1e-6)
    np.testing.assert_allclose(uniform[0], [0.9 + 0.1 / 3, 0.1 / 3, 0.1 / 3], rtol=1e-6)
    assert float(losses.softmax_cross_entropy(Z, paper)[0]) == pytest.approx(0.5620300, abs=1e-6)
    assert float(losses.softmax_cross_entropy(Z, uniform)[0]) == pytest.approx(0.5136967, abs=1e-6)
    big = losses.make_targets(
        jnp.array([7]), 1000, label_smoothing=0.1, label_smoothing_form="paper"
    )
    assert float(big[0, 7]) == pytest.approx(0.9, rel=1e-6)
    assert float(big[0, 0]) == pytest.approx(1.001001e-4, rel=1e-5)
    assert float(big.sum()) == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="label_smoothing_form must be one of"):
        losses.make_targets(Y0, 3, label_smoothing=0.1, label_smoothing_form="gluon")


def test_bt4_distillation_losses():
    y = losses.make_targets(Y0, 3)
    value = lambda **kw: float(losses.distillation_loss(Z, y, R, temperature=20.0, **kw)[0])
    assert float(losses.softmax_cross_entropy(Z, y)[0]) == pytest.approx(0.4170300, abs=1e-6)
    assert value() == pytest.approx(0.4170300 + 400 * 1.0990480, abs=2e-4)
    assert value() == pytest.approx(440.03640, abs=2e-4)
    # (float32: T^2 = 400 amplifies the rounding of the ~1.1-sized log-probabilities.)
    assert value(soft_loss="kl") == pytest.approx(1.1866510, abs=5e-5)
    assert value(hard_weight=0.5, soft_weight=0.5) == pytest.approx(220.01820, abs=1e-4)
    t1 = lambda **kw: float(losses.distillation_loss(Z, y, R, temperature=1.0, **kw)[0])
    assert t1() == pytest.approx(1.7835770, abs=1e-6)
    assert t1(soft_loss="kl") == pytest.approx(1.1959480, abs=1e-6)
    # Same gradient for the CE and KL forms; none reaches the teacher.
    grad = lambda form: jax.grad(
        lambda z, r: losses.distillation_loss(z, y, r, temperature=20.0, soft_loss=form).sum(),
        argnums=(0, 1),
    )(Z, R)
    (gz_ce, gr_ce), (gz_kl, gr_kl) = grad("cross_entropy"), grad("kl")
    np.testing.assert_allclose(gz_ce, gz_kl, atol=1e-6)
    assert float(jnp.abs(gr_ce).max()) == float(jnp.abs(gr_kl).max()) == 0.0


def test_bt5_mixup():
    rng = jax.random.key(0)
    labels = jnp.array([0, 1, 2])
    targets = jax.nn.one_hot(labels, 3)
    np.testing.assert_allclose(mixup.mix_reversed(targets, 0.7)[0], [0.7, 0.0, 0.3], atol=1e-7)
    images = jax.random.normal(rng, (3, 4, 4, 3))
    np.testing.assert_array_equal(mixup.mix_reversed(images, 1.0), images)
    _, mixed, lam = mixup.batch_mixup(rng, images, targets, 0.2)
    np.testing.assert_allclose(mixed.sum(-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(mixed, lam * targets + (1 - lam) * targets[::-1], atol=1e-6)
    draws = np.asarray(mixup.sample_mixup_lambda(jax.random.key(1), 0.2, (100_000,)))
    assert draws.mean() == pytest.approx(0.5, abs=0.01)
    assert draws.var() == pytest.approx(1 / (4 * (2 * 0.2 + 1)), abs=0.005)  # 0.1786


def test_prepare_batch_smooths_mixes_and_feeds_the_teacher_the_mixed_images():
    rng = np.random.default_rng(0)
    batch = {
        "images": jnp.asarray(rng.normal(size=(4, 2, 2, 3)), jnp.float32),
        "labels": jnp.array([0, 1, 2, 3]),
    }
    teacher_fn = lambda w, images: jnp.mean(images, axis=(1, 2)) @ w
    w = jnp.asarray(rng.normal(size=(3, 5)), jnp.float32)
    out, targets = step.prepare_batch(
        batch,
        jax.random.key(3),
        w,
        num_classes=5,
        label_smoothing=0.1,
        label_smoothing_form="paper",
        mixup_alpha=0.2,
        teacher_fn=teacher_fn,
    )
    smoothed = losses.make_targets(
        batch["labels"], 5, label_smoothing=0.1, label_smoothing_form="paper"
    )
    x, x_mixed = batch["images"], out["images"]
    # One lambda for the whole batch, partner = the reversed batch; smoothing commutes.
    lam = float((x_mixed[0, 0, 0, 0] - x[3, 0, 0, 0]) / (x[0, 0, 0, 0] - x[3, 0, 0, 0]))
    np.testing.assert_allclose(x_mixed, lam * x + (1 - lam) * x[::-1], atol=1e-5)
    np.testing.assert_allclose(targets, lam * smoothed + (1 - lam) * smoothed[::-1], atol=1e-5)
    np.testing.assert_allclose(out["teacher_logits"], teacher_fn(w, x_mixed), rtol=1e-5)
    assert 0.0 <= lam <= 1.0 and lam not in (0.0, 1.0)


def tiny_linear_step(teacher_fn=None, loss_fn=None):
    model = hk.transform_with_state(
        lambda x, is_training: {"logits": hk.Linear(5, name="linear")(jnp.mean(x, axis=(1, 2)))}
    )
    x = jnp.ones((1, 2, 2, 3))
    init = lambda rng, images, is_training: model.init(rng, images, is_training)
    optimizer = optax_sgd()
    train_state = state_lib.create_train_state(init, optimizer, jax.random.key(0), x, use_ema=False)
    train_step = step.make_train_step(
        model.apply,
        optimizer,
        num_classes=5,
        learning_rate_fn=lambda s: 0.1,
        teacher_fn=teacher_fn,
        loss_fn=loss_fn,
        mixup_alpha=0.2,
    )
    return train_state, train_step


def optax_sgd():
    import optax

    return optax.sgd(0.1)


@pytest.mark.parametrize("parallelism", ["pmap", "shard_map"])
def test_teacher_is_a_step_argument_not_a_compiled_constant(parallelism, num_devices):
    teacher_fn = lambda w, images: jnp.mean(images, axis=(1, 2)) @ w
    loss_fn = losses.make_distillation_loss_fn(temperature=2.0)
    train_state, train_step = tiny_linear_step(teacher_fn, loss_fn)
    mapper = parallel.DeviceMapper(parallelism)
    mapped = mapper.map_train_step(train_step, donate=False, num_replicated_args=1)
    rng = np.random.default_rng(1)
    batch = {
        "images": rng.normal(size=(2 * num_devices, 2, 2, 3)).astype(np.float32),
        "labels": rng.integers(0, 5, size=(2 * num_devices,)).astype(np.int32),
    }
    if parallelism == "pmap":
        batch = jax.tree.map(lambda a: a.reshape((num_devices, 2) + a.shape[1:]), batch)
    batch = jax.device_put(batch, mapper.batch_sharding)
    device_state = mapper.to_device_state(mapper.replicate(train_state))
    losses_seen = []
    for seed in (0, 1):
        w = rng.normal(size=(3, 5)).astype(np.float32) * (1 + seed)
        teacher = mapper.to_device_state(mapper.replicate(w))
        new_state, metrics = mapped(device_state, batch, teacher)
        losses_seen.append(float(metrics["loss"]))
    assert losses_seen[0] != losses_seen[1]  # the teacher's values reach the loss
    # The teacher is not part of the trained state or its optimizer.
    assert jax.tree.structure(parallel.host_copy(mapper.from_device_state(new_state))) == (
        jax.tree.structure(train_state)
    )
    # Without a teacher argument the step refuses (and vice versa).
    with pytest.raises(ValueError, match="teacher"):
        train_step(train_state, {"images": jnp.ones((2, 2, 2, 3)), "labels": jnp.zeros(2, int)})
