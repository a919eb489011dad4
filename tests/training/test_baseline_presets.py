"""Baseline presets: the recipes they promise, and real training steps through the loop.

Every preset runs one step at reduced size on 4 fake devices (digits at 16 px). The
BatchNorm run also checks that BN statistics are trained, checkpointed, averaged by the
EMA and used by evaluation; it then serves as the teacher of a Bag-of-Tricks
distillation run.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import configs
from experiments.configs.resnet import RESNET_NO_DECAY_PATTERNS
from nfnets_jax import data, models
from nfnets_jax.optim import ema as ema_lib
from nfnets_jax.training import config as config_lib
from nfnets_jax.training import distill, loop, losses, parallel, startup
from tests.training.baseline_tiny import tiny_preset
from tests.training.tiny import restore_state

BASELINES = ["resnet50_bn", "resnet50_gn_pn", "resnet50_ln_pn"]
BAG_OF_TRICKS = ["bot_baseline", "bot_efficient", "bot_refined", "bot_refined_mixup"]


def test_resnet50_bn_is_the_original_base_config():
    config = configs.load_config("resnet50_bn")
    assert config.model == "ResNet" and models.get_model(config.model) is models.ResNet
    kwargs = config.model_kwargs
    assert (kwargs.depth, kwargs.version, kwargs.norm, kwargs.bn_decay) == (50, "v2", "batch", 0.9)
    assert (config.train_batch_size, config.num_epochs) == (1024, 90.0)
    opt = config.optimizer
    assert (opt.name, opt.base_lr, opt.lr_scale_by_bs, opt.momentum, opt.nesterov) == (
        "sgd",
        0.1,
        True,
        0.9,
        True,
    )
    assert opt.weight_decay == 1e-4 and opt.clipping is None
    assert list(opt.no_decay_patterns) == list(RESNET_NO_DECAY_PATTERNS)
    assert config.label_smoothing == 0.1 and config.label_smoothing_form == "uniform"
    assert (config.dataset.image_size, config.dataset.eval_preproc) == (224, "crop_resize")
    assert not config.use_ema and not config.bfloat16


def test_proxy_norm_presets_change_only_the_norm():
    reference = configs.load_config("resnet50_bn").to_dict()
    for name, norm in (("resnet50_gn_pn", "group_proxy"), ("resnet50_ln_pn", "layer_proxy")):
        config = configs.load_config(name).to_dict()
        assert config["model_kwargs"].pop("norm") == norm
        reference_kwargs = dict(reference["model_kwargs"])
        reference_kwargs.pop("norm")
        assert config["model_kwargs"] == reference_kwargs
        assert {k: v for k, v in config.items() if k != "model_kwargs"} == {
            k: v for k, v in reference.items() if k != "model_kwargs"
        }


@pytest.mark.parametrize(
    "name, version, batch, epochs, zero_gamma, no_decay, smoothing, mixup, bf16",
    [
        ("bot_baseline", "v1", 256, 120.0, False, False, 0.0, 0.0, False),
        ("bot_efficient", "v1", 1024, 120.0, True, True, 0.0, 0.0, True),
        ("bot_refined", "v1d", 1024, 120.0, True, True, 0.1, 0.0, True),
        ("bot_refined_mixup", "v1d", 1024, 200.0, True, True, 0.1, 0.2, True),
    ],
)
def test_bag_of_tricks_presets(
    name, version, batch, epochs, zero_gamma, no_decay, smoothing, mixup, bf16
):
    config = configs.load_config(name)
    kwargs = config.model_kwargs
    assert (kwargs.version, kwargs.norm, kwargs.zero_init_residual) == (
        version,
        "batch",
        zero_gamma,
    )
    assert (config.train_batch_size, config.num_epochs) == (batch, epochs)
    assert config.integer_steps_per_epoch
    assert bool(config.optimizer.no_decay_patterns) == no_decay
    assert (config.optimizer.weight_decay, config.optimizer.momentum) == (1e-4, 0.9)
    assert (config.label_smoothing, config.label_smoothing_form) == (smoothing, "paper")
    assert (config.mixup_alpha, config.bfloat16) == (mixup, bf16)
    assert config.distill.temperature == 20.0
    schedule = config.optimizer.schedule
    if name == "bot_baseline":
        assert (schedule.name, list(schedule.decay_epochs)) == ("step", [30.0, 60.0, 90.0])
        assert "warmup_epochs" not in schedule
    else:
        assert (schedule.warmup_epochs, schedule.warmup_offset) == (5.0, 1.0)
        assert schedule.name == ("warmup_cosine" if name.startswith("bot_refined") else "step")


def test_whole_steps_per_epoch(num_devices):
    config = tiny_preset("bot_refined", num_train_steps=None, num_epochs=2.0)
    plan = startup.plan_run(config, parallel.DeviceMapper())
    assert plan.steps_per_epoch == 1437 // 8  # digits has 1,437 training images
    assert plan.total_steps == 2 * (1437 // 8)


def test_refinement_settings_are_validated(tmp_path):
    bad = tiny_preset(
        "bot_refined",
        label_smoothing_form="gluon",
        mixup_alpha=-1.0,
        **{"distill.teacher_checkpoint": str(tmp_path / "missing")},
    )
    with pytest.raises(config_lib.ConfigError) as error:
        config_lib.validate_config(bad, num_devices=4)
    message = str(error.value)
    assert "label_smoothing_form='gluon'" in message
    assert "mixup_alpha must be a number >= 0" in message
    assert "distill.teacher_checkpoint=" in message and "does not exist" in message
    weights_file = tmp_path / "teacher.npz"
    weights_file.write_bytes(b"")
    twice = tiny_preset(
        "bot_refined_mixup",
        **{"dataset.augment_name": "mixup", "distill.teacher_checkpoint": str(weights_file)},
    )
    with pytest.raises(config_lib.ConfigError) as error:
        config_lib.validate_config(twice, num_devices=4)
    assert "would mix twice" in str(error.value)
    assert "set distill.teacher_model" in str(error.value)


def check_one_step(result, config, workdir):
    assert result["step"] == config.num_train_steps
    assert result["eval"]["num_examples"] == 8
    assert np.isfinite(result["train"]["loss"]) and result["train"]["loss"] > 0
    state = restore_state(str(workdir), config)
    # BT-10: master parameters stay float32 even when the step computes in bfloat16.
    assert {x.dtype for x in jax.tree.leaves(state.params)} == {np.dtype("float32")}
    return state


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["resnet50_gn_pn", "resnet50_ln_pn", "bot_baseline", "bot_efficient"]
)
def test_one_train_and_eval_step(name, tmp_path):
    config = tiny_preset(name)
    result = loop.train_and_evaluate(config, str(tmp_path))
    state = check_one_step(result, config, tmp_path)
    has_state = name.startswith("bot")  # BatchNorm
    assert bool(jax.tree.leaves(state.model_state)) == has_state


def manual_eval(config, params, model_state):
    """Mean cross-entropy of the eval split, computed outside the loop."""
    batches = list(
        data.eval_iterator(
            "digits",
            split="validation[:8]",
            local_device_count=1,
            per_device_batch=8,
            image_size=16,
            eval_preproc=config.dataset.eval_preproc,
            flatten_devices=True,
        )
    )
    assert len(batches) == 1
    model = startup.build_model(config, 10, training=False)
    outputs, _ = jax.jit(model.apply, static_argnums=4)(
        params, model_state, None, batches[0]["images"], False
    )
    targets = jax.nn.one_hot(batches[0]["labels"], 10)
    return float(jnp.mean(losses.softmax_cross_entropy(outputs["logits"], targets)))


@pytest.mark.slow
def test_batch_norm_state_is_trained_checkpointed_averaged_evaluated_and_distilled(tmp_path):
    teacher_dir = tmp_path / "resnet50_bn"
    config = tiny_preset("resnet50_bn", num_train_steps=2, use_ema=True, checkpoint_every_steps=1)
    result = loop.train_and_evaluate(config, str(teacher_dir))
    last = check_one_step(result, config, teacher_dir)
    first = restore_state(str(teacher_dir), config, step=1)
    init_state = jax.tree.map(np.asarray, first.model_state)
    # The statistics moved away from their initial (0, 1) and differ between steps.
    means = [v["mean"] for v in init_state.values()]
    assert max(float(np.abs(m).max()) for m in means) > 0
    assert not jax.tree.all(jax.tree.map(np.array_equal, first.model_state, last.model_state))
    # The EMA of the state follows the original's formula at the second update (t = 1).
    d = float(ema_lib.ema_decay(1, config.ema_decay))
    expected = jax.tree.map(lambda e, s: d * e + (1 - d) * s, first.ema_state, last.model_state)
    for got, want in zip(jax.tree.leaves(last.ema_state), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    # Evaluation uses the checkpointed running statistics (raw and EMA).
    loss = manual_eval(config, last.params, last.model_state)
    assert result["eval"]["loss"] == pytest.approx(loss, rel=1e-5)
    ema_loss = manual_eval(config, last.ema_params, last.ema_state)
    assert result["ema_eval"]["loss"] == pytest.approx(ema_loss, rel=1e-5)

    # Distillation from that run directory (EMA weights and statistics by default).
    student = tiny_preset("bot_refined", **{"distill.teacher_checkpoint": str(teacher_dir)})
    teacher = distill.load_teacher(student, 10)
    assert "EMA" in teacher.description
    np.testing.assert_array_equal(
        teacher.state["ResNet/~/block_0/~/norm0"]["mean"],
        last.ema_state["ResNet/~/block_0/~/norm0"]["mean"],
    )
    workdir = tmp_path / "student"
    result = loop.train_and_evaluate(student, str(workdir))
    state = check_one_step(result, student, workdir)
    # The teacher's T^2-scaled soft term dominates the loss; nothing of the teacher (a v2
    # net with a final norm, no deep stem) is trained or checkpointed with the student.
    assert result["train"]["loss"] > 50.0
    assert "ResNet/~/stem_conv0" in state.params
    assert not any("norm_final" in module for module in state.params)


@pytest.mark.slow
def test_bag_of_tricks_mixup_step(tmp_path):
    config = tiny_preset("bot_refined_mixup")
    result = loop.train_and_evaluate(config, str(tmp_path))
    check_one_step(result, config, tmp_path)
