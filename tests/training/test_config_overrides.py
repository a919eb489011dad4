"""Command-line config parsing: overrides, types and clear errors."""

import json

import ml_collections
import pytest

from experiments import configs
from experiments.configs import common
from nfnets_jax import checkpoints
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


def test_config_from_argv_takes_the_config_and_its_overrides():
    argv = ["prog", "--config.train_batch_size=32", "--workdir=/tmp/x", "--config=nfnet_demo"]
    argv += ["--config.dataset.image_size", "16", "extra", "--verbose"]
    config, rest = configs.config_from_argv(argv)
    assert config.model_kwargs.width_pattern == (32, 64, 128, 128)  # the demo preset
    assert config.train_batch_size == 32 and config.dataset.image_size == 16
    assert rest == ["prog", "--workdir=/tmp/x", "extra", "--verbose"]
    assert configs.pop_config_spec(["p", "--config", "tests/training/tiny.py:x", "-v"]) == (
        "tests/training/tiny.py:x",
        ["p", "-v"],
    )
    assert configs.pop_config_spec(["p", "--workdir=/w"]) == (None, ["p", "--workdir=/w"])


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


def test_missing_value_is_one_message():
    with pytest.raises(config_lib.ConfigError, match="Missing value for flag --config.train_"):
        config_lib.parse_config_flags(_config(), ["prog", "--config.train_batch_size"])


# The fields unset by default (typed placeholders) and their types.
PLACEHOLDERS = {
    "num_train_steps": int,
    "init_from": str,
    "dataset.data_dir": str,
    "dataset.train_split": str,
    "dataset.eval_split": str,
    "dataset.num_classes": int,
    "dataset.augment_name": str,
    "dataset.seed": int,
    "distill.teacher_checkpoint": str,
    "distill.teacher_model": str,
    "distill.teacher_model_kwargs": dict,
}


def _field(config, path):
    *parents, leaf = path.split(".")
    for part in parents:
        config = config[part]
    return config, leaf


def test_placeholders_are_unset_and_typed():
    config = common.base_config()
    for path, field_type in PLACEHOLDERS.items():
        node, leaf = _field(config, path)
        assert node[leaf] is None, path
        assert node.get_type(leaf) is field_type, path


def test_placeholder_overrides_are_type_checked():
    config = configs.load_config("nfnet_f0")
    config_lib.apply_overrides(
        config,
        [
            ("dataset.seed", "7"),
            ("num_train_steps", "12"),
            ("dataset.eval_split", "validation[:100]"),
            ("init_from", "F0_haiku.npz"),
            ("distill.teacher_model_kwargs", "{'depth': 152, 'version': 'v1d'}"),
        ],
    )
    assert config.dataset.seed == 7 and config.num_train_steps == 12
    assert config.dataset.eval_split == "validation[:100]" and config.init_from == "F0_haiku.npz"
    assert config.distill.teacher_model_kwargs == {"depth": 152, "version": "v1d"}
    for key, text, expected in (
        ("dataset.seed", "abc", "--config.dataset.seed=abc: expected an integer."),
        ("num_train_steps", "2.5", "--config.num_train_steps=2.5: expected an integer."),
        ("distill.teacher_model_kwargs", "3", "teacher_model_kwargs=3: expected a dict literal"),
    ):
        with pytest.raises(config_lib.ConfigError, match=expected):
            config_lib.apply_overrides(config, [(key, text)])
    # None unsets a field, and the field keeps its type.
    config_lib.apply_overrides(config, [("dataset.seed", "None"), ("init_from", "None")])
    assert config.dataset.seed is None and config.init_from is None
    with pytest.raises(config_lib.ConfigError, match="expected an integer"):
        config_lib.apply_overrides(config, [("dataset.seed", "x")])


def test_untyped_none_fields_take_a_literal():
    config = configs.load_config("resnet50_bn")  # clipping=None, cross_replica_axis=None
    config_lib.apply_overrides(
        config, [("optimizer.clipping", "0.02"), ("model_kwargs.cross_replica_axis", "data")]
    )
    assert config.optimizer.clipping == 0.02
    assert config.model_kwargs.cross_replica_axis == "data"


def test_unset_fields_round_trip_through_config_json():
    config = configs.load_config("nfnet_demo")
    recorded = json.loads(config.copy_and_resolve_references().to_json_best_effort())
    assert recorded["dataset"]["num_classes"] is None and recorded["init_from"] is None
    restored = config_lib.config_from_json(recorded)
    assert restored.to_json(sort_keys=True) == config.to_json(sort_keys=True)
    for path in PLACEHOLDERS:
        node, leaf = _field(restored, path)
        assert node[leaf] == (0 if path == "dataset.seed" else None), path
    spec = checkpoints.spec_from_config(recorded, 10)  # what run readers do with it
    assert (spec.describe(), spec.dataset) == ("NFNet (custom), 10 classes, 32 px resize", "digits")
    # Its unset fields take overrides too, as Python literals (they have no type left).
    config_lib.apply_overrides(
        restored, [("dataset.num_classes", "10"), ("dataset.eval_split", "test")]
    )
    assert restored.dataset.num_classes == 10 and restored.dataset.eval_split == "test"


def test_older_runs_sentinels_read_as_unset():
    recorded = configs.load_config("nfnet_demo").to_dict()
    recorded.update(num_train_steps=-1, init_from="")
    recorded["dataset"].update(num_classes=-1, eval_split="", train_split="", augment_name="")
    recorded["distill"].update(teacher_checkpoint="", teacher_model="")
    recorded["dataset"]["seed"] = 0  # recorded runs hold the seed they drew
    config = config_lib.config_from_json(recorded)
    for path in PLACEHOLDERS.keys() - {"dataset.seed"}:
        node, leaf = _field(config, path)
        assert node[leaf] is None, path
    assert config.dataset.seed == 0 and config.train_batch_size == 64  # set fields are kept
