"""Command-line config parsing: overrides, types and clear errors."""

import ml_collections
import pytest

from nfnets_jax.training import config as config_lib


def _config():
    config = ml_collections.ConfigDict(
        dict(
            train_batch_size=4096,
            bfloat16=True,
            model_kwargs=dict(variant="F0", drop_rate=None, width=1.0),
            optimizer=dict(base_lr=0.1, no_decay_patterns=("b$", "gain")),
        )
    )
    config.lock()
    return config


def test_split_config_args():
    spec, overrides, rest = config_lib.split_config_args(
        ["prog", "--config=nfnet_f0", "--workdir=/tmp/x", "--config.a.b=3", "--config.c", "4"]
    )
    assert spec == "nfnet_f0"
    assert overrides == [("a.b", "3"), ("c", "4")]
    assert rest == ["prog", "--workdir=/tmp/x"]


def test_overrides_parse_to_field_types():
    config = config_lib.apply_overrides(
        _config(),
        [
            ("train_batch_size", "256"),
            ("bfloat16", "false"),
            ("model_kwargs.variant", "F3"),
            ("model_kwargs.drop_rate", "0.3"),
            ("model_kwargs.width", "2"),
            ("optimizer.no_decay_patterns", "('bias',)"),
            ("optimizer.base_lr", "None"),
        ],
    )
    assert config.train_batch_size == 256
    assert config.bfloat16 is False
    assert config.model_kwargs.variant == "F3"
    assert config.model_kwargs.drop_rate == 0.3
    assert config.model_kwargs.width == 2.0 and isinstance(config.model_kwargs.width, float)
    assert config.optimizer.no_decay_patterns == ("bias",)
    assert config.optimizer.base_lr is None


def test_unknown_key_suggests_close_match():
    with pytest.raises(
        config_lib.ConfigError,
        match=r"Unknown config key 'train_bach_size'.*"
        r"train_batch_size",
    ):
        config_lib.apply_overrides(_config(), [("train_bach_size", "8")])


def test_bad_value_type_names_the_flag():
    with pytest.raises(config_lib.ConfigError, match=r"--config.train_batch_size=abc: expected an"):
        config_lib.apply_overrides(_config(), [("train_batch_size", "abc")])
    with pytest.raises(config_lib.ConfigError, match="expected true or false"):
        config_lib.apply_overrides(_config(), [("bfloat16", "maybe")])


def test_group_cannot_be_set_directly():
    with pytest.raises(config_lib.ConfigError, match="group of settings"):
        config_lib.apply_overrides(_config(), [("optimizer", "3")])


def test_check_kwargs_names_unknown_arguments():
    def model(num_classes, variant="F0", width=1.0, name=None):
        del num_classes, variant, width, name

    assert config_lib.check_kwargs(model, {"variant": "F1"}, "model") == []
    problems = config_lib.check_kwargs(model, {"depth": 3}, "model 'NFNet'")
    assert problems and "does not accept depth" in problems[0] and "variant" in problems[0]


def test_model_kwargs_accept_new_constructor_arguments():
    config = config_lib.apply_overrides(
        _config(), [("model_kwargs.width_pattern", "(32, 64, 128, 128)")]
    )
    assert config.model_kwargs.width_pattern == (32, 64, 128, 128)
    with pytest.raises(config_lib.ConfigError, match="Unknown config key 'optimizer.nope'"):
        config_lib.apply_overrides(_config(), [("optimizer.nope", "1")])
