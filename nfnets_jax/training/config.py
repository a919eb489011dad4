"""Experiment configs: command-line overrides and start-up validation.

Configs are plain `ml_collections.ConfigDict`s built by `experiments/configs/*.py`. This
module applies `--config.a.b=value` overrides with clear errors (unknown keys name their
closest matches; values are parsed to the field's type) and validates a config before
any data or device work, so mistakes stop a run in its first second with one message.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
from collections.abc import Iterable, Sequence
from typing import Any

import ml_collections

from nfnets_jax.errors import ConfigError

# Groups whose keys are open-ended (a model's constructor arguments): overrides may add
# keys there, e.g. --config.model_kwargs.width_pattern='(32, 64, 128, 128)'.
OPEN_GROUPS = ("model_kwargs",)


def _flat_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in config.items():
        path = f"{prefix}{key}"
        keys.append(path)
        if isinstance(value, ml_collections.ConfigDict):
            keys.extend(_flat_keys(value, path + "."))
    return keys


def _parse_value(path: str, text: str, current):
    """Parses `text` to the type of the field's current value (`None` unsets it)."""
    if text.strip() in ("None", "none", "null"):
        return None
    if isinstance(current, bool):
        lowered = text.strip().lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise ConfigError(f"--config.{path}={text}: expected true or false.")
    if isinstance(current, int):
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"--config.{path}={text}: expected an integer.") from None
    if isinstance(current, float):
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"--config.{path}={text}: expected a number.") from None
    if isinstance(current, str):
        return text
    if isinstance(current, tuple | list) or current is None:
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            if current is None:
                return text  # a bare word for a field that is unset by default
            raise ConfigError(
                f"--config.{path}={text}: expected a Python literal such as '(1, 2)'."
            ) from None
        if isinstance(current, tuple | list):
            if not isinstance(value, tuple | list):
                value = (value,)
            return type(current)(value)
        return value
    raise ConfigError(f"--config.{path}: fields of type {type(current).__name__} cannot be set.")


def apply_overrides(
    config: ml_collections.ConfigDict, overrides: Iterable[tuple[str, str]]
) -> ml_collections.ConfigDict:
    """Sets `a.b.c=value` overrides on `config`, in order.

    Args:
      config: the config to modify (in place; it may be locked).
      overrides: `(dotted_path, text)` pairs as typed on the command line.

    Returns:
      `config`, for chaining.

    Raises:
      ConfigError: an unknown key (with suggestions) or a value of the wrong type.
    """
    known = _flat_keys(config)

    def unknown(path: str) -> ConfigError:
        close = difflib.get_close_matches(path, known, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        return ConfigError(f"Unknown config key {path!r}.{hint}")

    for path, text in overrides:
        *parents, leaf = path.split(".")
        node = config
        for part in parents:
            child = node.get(part) if isinstance(node, ml_collections.ConfigDict) else None
            if not isinstance(child, ml_collections.ConfigDict):
                raise unknown(path)
            node = child
        if leaf not in node:
            if len(parents) != 1 or parents[0] not in OPEN_GROUPS:
                raise unknown(path)
            # A constructor argument the preset does not set: validate_config checks it
            # against the model's signature.
            with node.unlocked():
                node[leaf] = _parse_value(path, text, None)
            continue
        current = node[leaf]
        if isinstance(current, ml_collections.ConfigDict):
            raise ConfigError(
                f"--config.{path} is a group of settings; set one of its keys, e.g. "
                f"--config.{path}.{next(iter(current.keys()), 'key')}=..."
            )
        with node.unlocked():
            node[leaf] = _parse_value(path, text, current)
    return config


def split_config_args(argv: Sequence[str]) -> tuple[str | None, list[tuple[str, str]], list[str]]:
    """Separates `--config=SPEC` and `--config.a.b=value` from the other arguments.

    Returns:
      `(spec, overrides, rest)` with `rest` still holding `argv[0]`.
    """
    spec, overrides, rest = None, [], [argv[0]] if argv else []
    args = list(argv[1:])
    while args:
        arg = args.pop(0)
        if arg.startswith("--config=") or arg == "--config":
            spec = arg.split("=", 1)[1] if "=" in arg else (args.pop(0) if args else "")
        elif arg.startswith("--config."):
            body = arg[len("--config.") :]
            if "=" in body:
                key, value = body.split("=", 1)
            else:
                if not args:
                    raise ConfigError(f"{arg} needs a value: {arg}=VALUE.")
                key, value = body, args.pop(0)
            overrides.append((key, value))
        else:
            rest.append(arg)
    return spec, overrides, rest


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


def _positive_int(config, key, problems, allow_zero=False):
    """`config`'s field at the dotted `key` if it is a positive int, else None (noted)."""
    value = config
    for part in key.split("."):
        value = value.get(part)
    ok = isinstance(value, int) and not isinstance(value, bool)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        problems.append(f"{key} must be an integer {bound}, got {value!r}.")
        return None
    return value


def _seed_problems(config: ml_collections.ConfigDict) -> list[str]:
    problems = []
    for key, value, lowest, note in (
        ("seed", config.seed, 0, "it seeds the model initialisation"),
        ("dataset.seed", config.dataset.seed, -1, "or -1 to draw one at the first start"),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
            problems.append(f"{key} must be an integer >= {lowest} ({note}), got {value!r}.")
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
    classes = config.dataset.num_classes
    if (
        isinstance(classes, bool)
        or not isinstance(classes, int)
        or not (classes > 0 or classes == -1)
    ):
        problems.append(
            f"dataset.num_classes must be > 0, or -1 for the dataset's own, got {classes!r}."
        )
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
        parsed = augment.parse_augment_name(dataset.augment_name or None)
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
    form = config.get("label_smoothing_form", "uniform")
    if form not in SMOOTHING_FORMS:
        problems.append(
            f"label_smoothing_form={form!r} is unknown: use one of {', '.join(SMOOTHING_FORMS)}."
        )
    alpha = config.get("mixup_alpha", 0.0)
    if not isinstance(alpha, int | float) or alpha < 0:
        problems.append(f"mixup_alpha must be a number >= 0 (0 = off), got {alpha!r}.")
    elif alpha > 0 and any(
        word in str(config.dataset.get("augment_name", "")) for word in ("mixup", "cutmix")
    ):
        problems.append(
            f"mixup_alpha={alpha} (in-step batch mixup) and dataset.augment_name="
            f"{config.dataset.augment_name!r} (pipeline MixUp/CutMix) would mix twice: use one."
        )
    distill = config.get("distill")
    if distill is None or not distill.get("teacher_checkpoint"):
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
    if config.num_epochs <= 0 and config.num_train_steps <= 0:
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
