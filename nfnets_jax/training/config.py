"""Experiment configs: command-line overrides and start-up validation.

Configs are plain `ml_collections.ConfigDict`s built by `experiments/configs/*.py`; a field
that is unset by default is a typed placeholder (`config_dict.placeholder(int)`: None
until set, type-checked when set). `--config.a.b=value` overrides are parsed by
`ml_collections.config_flags` (:func:`parse_config_flags`) with this module's parsers: a
value is read as its field's type, `None` unsets a field, and each mistake is one
`ConfigError` (unknown keys name their closest matches). `validate_config` then checks a
config before any data or device work, so mistakes stop a run in its first second with
one message.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import ml_collections
from absl import flags
from ml_collections import config_dict, config_flags

from nfnets_jax.errors import ConfigError

#: The flag whose `--config.a.b=value` overrides :func:`parse_config_flags` applies.
CONFIG_FLAG = "config"

# Groups whose keys are open-ended (a model's constructor arguments): overrides may add
# keys there, e.g. --config.model_kwargs.width_pattern='(32, 64, 128, 128)'; validation
# checks them against the model's signature.
OPEN_GROUPS = ("model_kwargs",)

_UNSET = ("None", "none", "null")
_OVERRIDE = re.compile(rf"^--?(?:no)?{CONFIG_FLAG}\.([^=]+)")


class _FieldParser(flags.ArgumentParser):
    """Reads an override as its field's type; `None` unsets the field."""

    def __init__(self, convert: Callable[[str], Any], expected: str):
        self._convert = convert
        self._expected = expected

    def parse(self, argument):
        if not isinstance(argument, str):
            return argument  # the field's current value, which absl takes as the default
        if argument.strip() in _UNSET:
            return None
        try:
            return self._convert(argument)
        except (ValueError, TypeError, SyntaxError):
            raise ValueError(f"expected {self._expected}.") from None


def _boolean(text: str) -> bool:
    word = text.strip().lower()
    if word in ("true", "1", "yes"):
        return True
    if word in ("false", "0", "no"):
        return False
    raise ValueError(text)


def _sequence(text: str) -> tuple | list:
    value = ast.literal_eval(text)
    return value if isinstance(value, tuple | list) else (value,)


def _mapping(text: str) -> dict:
    value = ast.literal_eval(text)
    if not isinstance(value, dict):
        raise ValueError(text)
    return value


def _literal(text: str) -> Any:
    """A Python literal, else the bare text: for fields without a type (set to None)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError):
        return text


_LITERAL = "a Python literal such as '(1, 2)'"
# Field type -> parser, registered with config_flags (it picks a flag's parser by type).
_PARSERS = {
    bool: _FieldParser(_boolean, "true or false"),
    int: _FieldParser(int, "an integer"),
    float: _FieldParser(float, "a number"),
    str: _FieldParser(str, "a string"),
    tuple: _FieldParser(_sequence, _LITERAL),
    list: _FieldParser(_sequence, _LITERAL),
    dict: _FieldParser(_mapping, "a dict literal such as \"{'depth': 152}\""),
    object: _FieldParser(_literal, _LITERAL),
}


def _group(config: ml_collections.ConfigDict, parts: Sequence[str]):
    """The group (`ConfigDict`) at the keys `parts` of `config`, or None."""
    for part in parts:
        config = config.get(part) if isinstance(config, ml_collections.ConfigDict) else None
    return config if isinstance(config, ml_collections.ConfigDict) else None


def _flat_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in config.items():
        path = f"{prefix}{key}"
        keys.append(path)
        if isinstance(value, ml_collections.ConfigDict):
            keys.extend(_flat_keys(value, path + "."))
    return keys


def _prepare_fields(config: ml_collections.ConfigDict, paths: Iterable[str]) -> None:
    """Checks the overridden keys; gives the untyped ones a parser.

    config_flags reads a value by its field's type, so a field that is None without a
    type (e.g. `optimizer.clipping=None`, or any field of a run's `config.json`) and a
    new constructor argument in an open group become `placeholder(object)`, which takes
    any Python literal or bare text (then checked by `validate_config`).
    """
    known = _flat_keys(config)
    for path in paths:
        *parents, leaf = path.split(".")
        node = _group(config, parents)
        if node is None or (leaf not in node and ".".join(parents) not in OPEN_GROUPS):
            close = difflib.get_close_matches(path, known, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"Unknown config key {path!r}.{hint}")
        if leaf not in node:
            with node.unlocked():
                node[leaf] = config_dict.placeholder(object)
        elif isinstance(node[leaf], ml_collections.ConfigDict):
            raise ConfigError(
                f"--{CONFIG_FLAG}.{path} is a group of settings; set one of its keys, e.g. "
                f"--{CONFIG_FLAG}.{path}.{next(iter(node[leaf].keys()), 'key')}=..."
            )
        elif node.get_type(leaf) is type(None):
            node[leaf] = config_dict.placeholder(object)


def parse_config_flags(config: ml_collections.ConfigDict, argv: Sequence[str]) -> list[str]:
    """Applies a command line's `--config.a.b=value` overrides to `config`, in order.

    `ml_collections.config_flags.DEFINE_config_dict` parses them, on a `FlagValues` of
    their own, so the other arguments are left for absl or argparse. Values are read as
    their field's type (`true`/`false`, integers, numbers, `'(1, 2)'` for sequences,
    Python literals for untyped fields); `None` unsets a field. In an open group
    (`model_kwargs`) an override may add a key.

    Args:
      config: the config to modify (in place; it may be locked).
      argv: a command line, program name first, without `--config=SPEC` (see
        `experiments.configs.config_from_argv`).

    Returns:
      `argv` without the overrides.

    Raises:
      ConfigError: an unknown key (with close matches), a group given a value, or a
        value that is not of its field's type.
    """
    argv = list(argv)
    _prepare_fields(config, [m.group(1) for m in map(_OVERRIDE.match, argv[1:]) if m])
    for field_type, parser in _PARSERS.items():
        config_flags.register_flag_parser_for_type(field_type, parser)
    flag_values = flags.FlagValues()
    try:
        config_flags.DEFINE_config_dict(
            CONFIG_FLAG, config, flag_values=flag_values, lock_config=False, sys_argv=argv
        )
        return flag_values(argv, known_only=True)
    except flags.Error as error:  # "flag --config.a=x: expected an integer."
        raise ConfigError(str(error).removeprefix("flag ")) from None
    except TypeError as error:  # a value the field's type check refuses
        raise ConfigError(str(error)) from None


def apply_overrides(
    config: ml_collections.ConfigDict, overrides: Iterable[tuple[str, str]]
) -> ml_collections.ConfigDict:
    """Sets `(dotted_key, text)` overrides on `config`, as `--config.KEY=TEXT` flags would.

    Returns:
      `config`, for chaining.

    Raises:
      ConfigError: see :func:`parse_config_flags`.
    """
    flags_ = [f"--{CONFIG_FLAG}.{key}={text}" for key, text in overrides]
    parse_config_flags(config, ["overrides", *flags_])
    return config


# Placeholders that runs recorded with a sentinel before they were placeholders: "" or
# (for the integers) a value <= 0 meant unset.
_LEGACY_UNSET = (
    "num_train_steps",
    "init_from",
    "dataset.num_classes",
    "dataset.train_split",
    "dataset.eval_split",
    "dataset.augment_name",
    "distill.teacher_checkpoint",
    "distill.teacher_model",
)


def config_from_json(data: dict[str, Any]) -> ml_collections.ConfigDict:
    """A run's recorded `config.json` (parsed) as a config, unset fields None.

    Unset placeholders are recorded as null; older runs recorded `-1` or `""` for them,
    which become None here too.
    """
    config = ml_collections.ConfigDict(data)
    for path in _LEGACY_UNSET:
        *parents, leaf = path.split(".")
        node = _group(config, parents) or {}
        value = node.get(leaf)
        if value == "" or (type(value) is int and value <= 0):
            node[leaf] = None
    return config


def check_kwargs(callable_, kwargs: dict, what: str) -> list[str]:
    """Names the keyword arguments `callable_` does not accept (empty if all fine)."""
    try:
        signature = inspect.signature(callable_)
    except (TypeError, ValueError):
        return []
    params = signature.parameters
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return []
    unknown = sorted(set(kwargs) - set(params))
    if not unknown:
        return []
    accepted = ", ".join(k for k in params if k not in ("self", "name"))
    return [f"{what} does not accept {', '.join(unknown)} (it takes: {accepted})."]


def _positive_int(config, key, problems, allow_zero=False, unset=""):
    """`config`'s field at the dotted `key` if it is a positive int, else None (noted).

    With `unset` (what None means, e.g. "the dataset's own"), the field may be None.
    """
    value = config
    for part in key.split("."):
        value = value[part]
    if value is None and unset:
        return None
    ok = isinstance(value, int) and not isinstance(value, bool)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        alternative = f", or unset ({unset})" if unset else ""
        problems.append(f"{key} must be an integer {bound}{alternative}, got {value!r}.")
        return None
    return value


def _seed_problems(config: ml_collections.ConfigDict) -> list[str]:
    problems = []
    seed = config.seed
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        problems.append(
            f"seed must be an integer >= 0 (it seeds the model initialisation), got {seed!r}."
        )
    _positive_int(config, "dataset.seed", problems, allow_zero=True, unset="drawn at first start")
    return problems


def _eval_problems(config: ml_collections.ConfigDict, num_devices: int) -> list[str]:
    """What evaluation reads: batch size, resolution, preprocessing, classes, model."""
    from nfnets_jax import models
    from nfnets_jax.data import augment

    problems = []
    eval_batch = _positive_int(config, "eval_batch_size", problems)
    if eval_batch and eval_batch % num_devices:
        problems.append(
            f"eval_batch_size={eval_batch} is not divisible by the {num_devices} devices: use "
            f"a multiple of {num_devices}."
        )
    _positive_int(config, "dataset.eval_image_size", problems)
    try:
        augment.parse_eval_preproc(config.dataset.eval_preproc)
    except (ValueError, TypeError) as error:
        problems.append(f"dataset.eval_preproc: {error}")
    _positive_int(config, "dataset.num_classes", problems, unset="the dataset's own")
    try:
        model_cls = models.get_model(config.model)
    except (KeyError, ValueError) as error:
        problems.append(str(error).strip("'\""))
    else:
        problems.extend(
            check_kwargs(model_cls, config.model_kwargs.to_dict(), f"model {config.model!r}")
        )
    return problems


def _train_data_problems(config: ml_collections.ConfigDict, per_device_batch: int | None):
    """Training resolution, crop and augmentation names of `config.dataset` (no I/O).

    Returns:
      `(problems, parsed augmentation or None)`.
    """
    from nfnets_jax.data import augment

    dataset = config.dataset
    problems = []
    parsed = None
    _positive_int(config, "dataset.image_size", problems)
    if dataset.train_preproc not in augment.TRAIN_PREPROCS:
        problems.append(
            f"dataset.train_preproc={dataset.train_preproc!r} is unknown: use one of "
            f"{', '.join(augment.TRAIN_PREPROCS)}."
        )
    try:
        parsed = augment.parse_augment_name(dataset.augment_name)
    except (ValueError, TypeError) as error:
        problems.append(f"dataset.augment_name: {error}")
    else:
        if parsed.mixup and parsed.cutmix and per_device_batch and per_device_batch % 2:
            problems.append(
                f"dataset.augment_name={dataset.augment_name!r} mixes the first half of each "
                "per-device batch with MixUp and the second with CutMix: the per-device batch "
                f"({per_device_batch}) must be even."
            )
    return problems, parsed


@dataclasses.dataclass(frozen=True)
class CheckedData:
    """What validation learned about the data, for the run to use as it is.

    Attributes:
      source: the dataset's resolved `nfnets_jax.data.Source` (metadata read once; an
        image folder is scanned once).
      augment: the parsed `dataset.augment_name` (None when only evaluating).
    """

    source: Any
    augment: Any = None

    @property
    def info(self):
        """The dataset's `DatasetInfo`."""
        return self.source.info


def _dataset_source(config: ml_collections.ConfigDict, split_keys: tuple[str, ...]):
    """The dataset's source, after checking its name, availability and the given splits."""
    from nfnets_jax.data import sources

    try:
        source = sources.get_source(config.dataset.name, data_dir=config.dataset.data_dir)
    except (ValueError, FileNotFoundError, KeyError) as error:
        raise ConfigError(
            f"Invalid config: dataset.name={config.dataset.name!r}: {error}"
        ) from None
    info = source.info
    problems = []
    for key in split_keys:
        split = config.dataset[key] or getattr(info, key)
        try:
            sources.parse_split(info, split)
        except sources.DatasetError as error:
            problems.append(f"dataset.{key}={split!r}: {error}")
    _raise_if(problems)
    return source


def validate_eval_config(config: ml_collections.ConfigDict, *, num_devices: int):
    """Checks the fields evaluation reads, then the dataset and its eval split.

    Args:
      config: an experiment config used to evaluate a checkpoint.
      num_devices: global number of devices.

    Returns:
      The `CheckedData` (the dataset's source).

    Raises:
      ConfigError: listing every problem found, each with what to change.
    """
    _raise_if(_eval_problems(config, num_devices))
    return CheckedData(_dataset_source(config, ("eval_split",)))


def _refinement_problems(config: ml_collections.ConfigDict) -> list[str]:
    """Checks label-smoothing form, in-step mixup and distillation settings."""
    import os

    from nfnets_jax import models
    from nfnets_jax.training.losses import SMOOTHING_FORMS, SOFT_LOSSES

    problems = []
    form = config.label_smoothing_form
    if form not in SMOOTHING_FORMS:
        problems.append(
            f"label_smoothing_form={form!r} is unknown: use one of {', '.join(SMOOTHING_FORMS)}."
        )
    alpha = config.mixup_alpha
    augment_name = config.dataset.augment_name or ""
    if not isinstance(alpha, int | float) or alpha < 0:
        problems.append(f"mixup_alpha must be a number >= 0 (0 = off), got {alpha!r}.")
    elif alpha > 0 and any(word in augment_name for word in ("mixup", "cutmix")):
        problems.append(
            f"mixup_alpha={alpha} (in-step batch mixup) and dataset.augment_name="
            f"{augment_name!r} (pipeline MixUp/CutMix) would mix twice: use one."
        )
    distill = config.distill
    if not distill.teacher_checkpoint:
        return problems
    if not distill.temperature > 0:
        problems.append(f"distill.temperature must be > 0, got {distill.temperature}.")
    if distill.soft_loss not in SOFT_LOSSES:
        problems.append(
            f"distill.soft_loss={distill.soft_loss!r} is unknown: use one of "
            f"{', '.join(SOFT_LOSSES)}."
        )
    for key in ("hard_weight", "soft_weight"):
        if not distill[key] >= 0:
            problems.append(f"distill.{key} must be >= 0, got {distill[key]}.")
    path = distill.teacher_checkpoint
    if not os.path.exists(path):
        problems.append(
            f"distill.teacher_checkpoint={path!r} does not exist: give a run directory of this "
            "project or a weights file (.npz/.pkl)."
        )
    elif not os.path.isdir(path) and not distill.teacher_model:
        problems.append(
            f"distill.teacher_checkpoint={path!r} is a weights file: set distill.teacher_model "
            "(and distill.teacher_model_kwargs) to the model it holds."
        )
    if distill.teacher_model:
        try:
            models.get_model(distill.teacher_model)
        except ValueError as error:
            problems.append(f"distill.teacher_model: {error}")
    return problems


def _raise_if(problems: list[str]) -> None:
    if problems:
        raise ConfigError("Invalid config:\n  - " + "\n  - ".join(problems))


def validate_config(config: ml_collections.ConfigDict, *, num_devices: int):
    """Checks a training config before any data, model or device work.

    Every field is checked without reading images or building the model: sizes and
    counts, batch divisibility, seeds, preprocessing and augmentation names, the model
    name and its keyword arguments, the label-smoothing, mixup and distillation
    settings; then the dataset's metadata (name, availability, both splits). The checks
    that need the model or the run's length (model options, optimizer keys and masks,
    the schedule, `init_from` and teacher checkpoints) follow in
    `nfnets_jax.training.startup.prepare_run`, still before any image is read.

    Args:
      config: the experiment config (see `experiments/configs`).
      num_devices: global number of devices the run will use.

    Returns:
      The `CheckedData`: the dataset's source and the parsed augmentation.

    Raises:
      ConfigError: listing every problem found, each with what to change.
    """
    # Imported here: the override helpers above must stay light for the entry points'
    # argument parsing. Nothing before the dataset checks loads TensorFlow.
    from nfnets_jax.training.parallel import PARALLELISMS

    problems: list[str] = []
    batch = _positive_int(config, "train_batch_size", problems)
    accum = _positive_int(config, "grad_accum_steps", problems)
    for key in ("log_every_steps", "keep_checkpoints"):
        _positive_int(config, key, problems)
    for key in ("eval_every_steps", "checkpoint_every_steps"):
        _positive_int(config, key, problems, allow_zero=True)
    seconds = config.checkpoint_every_secs
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds >= 0:
        problems.append(f"checkpoint_every_secs must be a number >= 0 (0: off), got {seconds!r}.")
    per_device = None
    if batch and batch % num_devices:
        problems.append(
            f"train_batch_size={batch} is not divisible by the {num_devices} devices: use a "
            f"multiple of {num_devices}."
        )
    elif batch:
        per_device = batch // num_devices
        if accum and per_device % accum:
            problems.append(
                f"The per-device batch {per_device} is not divisible by grad_accum_steps={accum}."
            )
    _positive_int(config, "num_train_steps", problems, unset="num_epochs decides")
    if config.num_train_steps is None and not config.num_epochs > 0:
        problems.append("Set num_epochs > 0 or num_train_steps > 0.")
    if config.parallelism not in PARALLELISMS:
        problems.append(
            f"parallelism={config.parallelism!r} is unknown: use one of {', '.join(PARALLELISMS)}."
        )
    if not 0.0 <= config.label_smoothing < 1.0:
        problems.append(f"label_smoothing must be in [0, 1), got {config.label_smoothing}.")
    if config.use_ema and not 0.0 < config.ema_decay < 1.0:
        problems.append(f"ema_decay must be in (0, 1), got {config.ema_decay}.")
    problems.extend(_seed_problems(config))
    problems.extend(_eval_problems(config, num_devices))
    data_problems, augment = _train_data_problems(config, per_device)
    problems.extend(data_problems)
    problems.extend(_refinement_problems(config))
    _raise_if(problems)  # Cheap checks first: do not touch the dataset if the config is broken.
    return CheckedData(_dataset_source(config, ("train_split", "eval_split")), augment)
