"""Every preset: the recipe it promises, and one real train+eval step per model family."""

import jax
import numpy as np
import pytest

from experiments import configs
from nfnets_jax import models, optim
from nfnets_jax.training import config as config_lib
from nfnets_jax.training import loop, parallel
from tests.training.tiny import restore_state

IMAGENET_TRAIN = 1_281_167


@pytest.mark.parametrize("name", sorted(configs.PRESETS))
def test_every_preset_builds_locks_and_names_a_known_model(name):
    config = configs.load_config(name)
    assert config.is_locked
    model_cls = models.get_model(config.model)
    assert config_lib.check_kwargs(model_cls, config.model_kwargs.to_dict(), name) == []
    assert config.train_batch_size % 8 == 0  # divides common device counts


@pytest.mark.parametrize("variant", [f"F{i}" for i in range(8)] + ["F0+", "F4+", "F7+"])
def test_nfnet_presets_reproduce_the_original_recipe(variant):
    name = f"nfnet_{variant.rstrip('+').lower()}" + ("_plus" if variant.endswith("+") else "")
    config = configs.load_config(name)
    table = models.nfnet_params[variant]
    assert config.model_kwargs.variant == variant
    assert config.model_kwargs.stochdepth_rate == 0.25
    assert config.model_kwargs.drop_rate == table["drop_rate"]
    assert (config.model_kwargs.alpha, config.model_kwargs.se_ratio) == (0.2, 0.5)
    assert config.model_kwargs.activation == "gelu"
    assert config.dataset.image_size == table["train_imsize"]
    assert config.dataset.eval_image_size == table["test_imsize"]
    assert config.dataset.eval_preproc == "resize_crop_32"
    level = {"F0": 405, "F1": 410, "F2": 410}.get(variant.rstrip("+"), 415)
    assert config.dataset.augment_name == f"cutmix_mixup_randaugment_{level}"
    assert config.dataset.augment_before_mix is False
    assert (config.train_batch_size, config.num_epochs) == (4096, 360.0)
    assert config.bfloat16 and config.use_ema and config.ema_decay == 0.99999
    assert config.label_smoothing == 0.1
    opt = config.optimizer
    assert (opt.name, opt.clipping, opt.weight_decay, opt.momentum, opt.nesterov) == (
        "sgd_agc",
        0.01,
        2e-5,
        0.9,
        True,
    )
    total = int(IMAGENET_TRAIN * config.num_epochs) // config.train_batch_size
    assert total == 112_602
    params = {
        "NFNet/~/conv": {
            "w": jax.ShapeDtypeStruct((3, 3, 2, 4), "float32"),
            "gain": jax.ShapeDtypeStruct((4,), "float32"),
            "bias": jax.ShapeDtypeStruct((4,), "float32"),
        },
        "NFNet/~/linear": {
            "w": jax.ShapeDtypeStruct((4, 10), "float32"),
            "b": jax.ShapeDtypeStruct((10,), "float32"),
        },
    }
    _, lr = optim.build_optimizer(
        opt, params, batch_size=4096, steps_per_epoch=IMAGENET_TRAIN / 4096, total_steps=total
    )
    assert float(lr(0)) == 0.0
    assert float(lr(1564)) == pytest.approx(1.6)


def test_nf_regnet_preset_is_the_original_recipe():
    config = configs.load_config("nf_regnet_b3")
    assert (config.optimizer.name, config.optimizer.base_lr) == ("sgd", 0.4)
    assert config.optimizer.lr_scale_by_bs is False
    assert config.optimizer.schedule.min_val == 0.001
    assert config.optimizer.weight_decay == pytest.approx(8e-5)
    assert config.dataset.augment_name == "mixup_cutmix" and config.dataset.augment_before_mix
    assert (config.train_batch_size, config.num_epochs, config.bfloat16) == (1024, 360.0, False)
    assert configs.load_config("nf_regnet_b8").optimizer.weight_decay == pytest.approx(1.3e-4)


# One real step of each model family through the whole loop (data, bf16 where the preset
# uses it, AGC or plain SGD, EMA, checkpoint, eval), at reduced width and resolution.
SHRINK = {
    "nfnet_f0": dict(
        width_pattern=(16, 16, 16, 16),
        depth_pattern=(1, 1, 1, 1),
        group_width=8,
        stem_widths=(8, 8, 8),
        conv_impl="native",
    ),
    "nf_resnet50": dict(width=1, depth_pattern=(1, 1, 1, 1)),
    "nf_regnet_b0": dict(width=0.25, depth_pattern=(1, 1, 1, 1), conv_impl="native"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SHRINK))
def test_one_train_and_eval_step_per_family_on_four_devices(name, tmp_path):
    config = configs.load_config(name)
    with config.unlocked():
        config.model_kwargs.update(SHRINK[name])
        config.dataset.update(
            dict(
                name="digits",
                image_size=32,
                eval_image_size=32,
                eval_split="validation[:8]",
                seed=0,
            )
        )
        config.train_batch_size = 8  # 2 per device: MixUp on one, CutMix on the other
        config.eval_batch_size = 8
        config.num_train_steps = 1
        config.log_every_steps = 1
        config.optimizer.schedule.warmup_epochs = 0.0
    assert parallel.DeviceMapper().num_devices == 4
    result = loop.train_and_evaluate(config, str(tmp_path))
    assert result["step"] == 1
    assert result["eval"]["num_examples"] == 8
    assert 0.0 <= result["eval"]["top_1_acc"] <= 1.0
    assert result["train"]["loss"] > 0.0
    state = restore_state(str(tmp_path), config)
    assert int(state.step) == 1
    # Master parameters stay float32 even when the preset computes in bfloat16.
    assert {x.dtype for x in jax.tree.leaves(state.params)} == {np.dtype("float32")}
