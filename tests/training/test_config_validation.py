"""Start-up validation: each bad config stops with one clear message, before any work."""

import os
import subprocess
import sys

import pytest

from experiments import configs
from nfnets_jax import data
from nfnets_jax.training import config as config_lib
from nfnets_jax.training import startup
from tests.training.tiny import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"train_batch_size": -8}, "train_batch_size must be an integer > 0, got -8"),
        ({"train_batch_size": 18}, "train_batch_size=18 is not divisible by the 4 devices"),
        ({"train_batch_size": 16, "grad_accum_steps": 3}, "not divisible by grad_accum_steps=3"),
        ({"eval_batch_size": 6}, "eval_batch_size=6 is not divisible by the 4 devices"),
        ({"parallelism": "tpu_magic"}, "parallelism='tpu_magic' is unknown"),
        ({"label_smoothing": 1.5}, "label_smoothing must be in [0, 1)"),
        ({"model": "NFNetX"}, "NFNetX"),
        ({"model_kwargs.depth": 3}, "does not accept depth"),
        ({"num_epochs": 0.0, "num_train_steps": None}, "num_epochs > 0 or num_train_steps > 0"),
        ({"num_train_steps": -1}, "num_train_steps must be an integer > 0, or unset"),
    ],
)
def test_bad_values_are_reported(overrides, message):
    with pytest.raises(config_lib.ConfigError) as info:
        config_lib.validate_config(tiny_config(**overrides), num_devices=4)
    assert message in str(info.value)


def test_all_problems_are_listed_at_once():
    config = tiny_config(train_batch_size=-8, parallelism="x", label_smoothing=2.0)
    with pytest.raises(config_lib.ConfigError) as info:
        config_lib.validate_config(config, num_devices=4)
    assert str(info.value).count("\n  - ") == 3


def test_unknown_dataset_is_reported():
    with pytest.raises(config_lib.ConfigError, match="dataset.name='imagenet2013'"):
        config_lib.validate_config(tiny_config(**{"dataset.name": "imagenet2013"}), num_devices=4)


def test_missing_imagenet_explains_how_to_prepare_it(tmp_path):
    config = tiny_config(**{"dataset.name": "imagenet2012", "dataset.data_dir": str(tmp_path)})
    with pytest.raises(config_lib.ConfigError, match="imagenet2012") as info:
        config_lib.validate_config(config, num_devices=4)
    assert "ILSVRC2012_img_train.tar" in str(info.value)


def test_unknown_preset_suggests_names():
    with pytest.raises(config_lib.ConfigError, match="Unknown config 'nfnet_f9'.*nfnet_f0"):
        configs.load_config("nfnet_f9")
    with pytest.raises(config_lib.ConfigError, match="does not exist"):
        configs.load_config("no/such/config.py:F0")


def _train_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "experiments.train", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_cli_errors_are_one_message_without_traceback(tmp_path):
    result = _train_cli("--config=nfnet_f9", f"--workdir={tmp_path}")
    assert result.returncode == 2
    assert "error: Unknown config 'nfnet_f9'" in result.stderr
    assert "Traceback" not in result.stderr

    result = _train_cli(
        "--config=tests/training/tiny.py",
        "--config.train_batch_size=-8",
        "--config.trian_steps=3",
        f"--workdir={tmp_path}",
    )
    assert result.returncode == 2
    assert "Unknown config key 'trian_steps'" in result.stderr and "Traceback" not in result.stderr

    result = _train_cli(
        "--config=tests/training/tiny.py", "--config.train_batch_size=-8", f"--workdir={tmp_path}"
    )
    assert result.returncode == 2, result.stderr
    assert "train_batch_size must be an integer > 0, got -8" in result.stderr
    assert "Traceback" not in result.stderr
    assert not os.path.exists(tmp_path / "checkpoints")  # stopped before any work


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"dataset.seed": -1}, "dataset.seed must be an integer >= 0, or unset"),
        ({"seed": -1}, "seed must be an integer >= 0"),
        ({"dataset.eval_image_size": 0}, "dataset.eval_image_size must be an integer > 0"),
        ({"dataset.num_classes": 0}, "dataset.num_classes must be an integer > 0, or unset"),
        ({"checkpoint_every_secs": -1.0}, "checkpoint_every_secs must be a number >= 0"),
        ({"dataset.augment_name": "cutmix_mixup", "train_batch_size": 12}, "must be even"),
        ({"dataset.train_split": "train[2000:]"}, "selects no examples"),
        ({"dataset.eval_split": "valid"}, "has no split 'valid'"),
    ],
)
def test_more_bad_values_are_reported(overrides, message):
    with pytest.raises(config_lib.ConfigError) as info:
        config_lib.validate_config(tiny_config(**overrides), num_devices=4)
    assert message in str(info.value)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"num_train_steps": 1}, "warmup_epochs=0.02 is 1.8 steps"),
        ({"model_kwargs.width_pattern": (1, 16)}, "cannot be built with these model_kwargs"),
        ({"optimizer.no_decay_patterns": ("NFNet/~/nope",)}, "match no parameter path"),
    ],
)
def test_prepare_run_checks_what_needs_the_model_or_the_run_length(overrides, message, tmp_path):
    with pytest.raises(config_lib.ConfigError) as info:
        startup.prepare_run(tiny_config(**overrides), str(tmp_path))
    assert message in str(info.value)
    assert os.listdir(tmp_path) == []  # nothing was written


def test_prepare_run_carries_what_it_learned(tmp_path):
    config = tiny_config(
        **{"dataset.train_split": "train[:640]", "dataset.augment_name": "mixup_randaugment_205"}
    )
    run = startup.prepare_run(config, str(tmp_path / "new"))
    assert run.dataset.info.splits == {"train": 1437, "validation": 360}
    assert run.dataset.source.info is run.dataset.info  # resolved once, kept for the iterators
    assert run.dataset.augment == data.AugmentConfig(
        mixup=True, randaugment_layers=2, randaugment_magnitude=5
    )
    assert run.plan.num_train_examples == 640 and run.plan.steps_per_epoch == 40.0
    assert run.plan.num_classes == 10 and run.saved_steps == ()
    assert run.init_from is None and run.teacher is None
    assert not os.path.exists(tmp_path / "new")  # validation creates nothing
    (tmp_path / "file").write_text("")
    with pytest.raises(config_lib.ConfigError, match="is a file: pass a directory"):
        startup.prepare_run(config, str(tmp_path / "file"))
