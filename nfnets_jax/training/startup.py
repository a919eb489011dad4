"""Start-up: check a run once, and derive what the loop needs from what was checked.

`prepare_run(config, workdir)` is the one validation pass of a run. It checks every
config field and the dataset's metadata (`config.validate_config`), derives the plan
(classes, steps per epoch, total steps), builds the models and the optimizer abstractly
(model options, optimizer keys, parameter-group patterns and the schedule against the
run's length), looks at the workdir, and reads and fits the `init_from` and distillation
teacher checkpoints. It reads no image, allocates no parameter and compiles nothing, so
a mistake stops the run in its first seconds with one message, and what it learned (the
`Startup`) is carried into the loop instead of being recomputed.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import haiku as hk
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath

from nfnets_jax import checkpoints, data, models, optim
from nfnets_jax.errors import NFNetsError
from nfnets_jax.training import checkpoint as checkpoint_lib
from nfnets_jax.training import config as config_lib
from nfnets_jax.training import distill, finetune, losses, parallel, step
from nfnets_jax.training.config import ConfigError
from nfnets_jax.training.state import TrainState, create_train_state

__all__ = [
    "MappedTrainStep",
    "RunPlan",
    "Setup",
    "Startup",
    "abstract_state",
    "build_model",
    "build_setup",
    "build_train_step",
    "parameter_table",
    "plan_run",
    "prepare_run",
]


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """Quantities derived from the config and the dataset at start-up."""

    num_classes: int
    num_train_examples: int
    steps_per_epoch: float
    total_steps: int
    per_device_batch: int
    local_batch: int


def plan_run(
    config: ml_collections.ConfigDict,
    mapper: parallel.DeviceMapper,
    info: data.DatasetInfo | None = None,
) -> RunPlan:
    """Derives classes, steps per epoch and total steps (`(N * epochs) // batch`).

    Args:
      config: the experiment config.
      mapper: the device mapping (for the per-device and per-host batches).
      info: the training dataset's info when already known (read otherwise).
    """
    if info is None:
        info = data.dataset_info(config.dataset.name, data_dir=config.dataset.data_dir)
    num_train = info.num_examples(config.dataset.train_split or None)
    batch = config.train_batch_size
    # Whole batches per epoch (GluonCV's `num_training_samples // batch_size`, as the
    # Bag-of-Tricks presets count them), or the original's fractional N / batch.
    whole = config.integer_steps_per_epoch
    steps_per_epoch = max(num_train // batch, 1) if whole else num_train / batch
    if config.num_train_steps is not None:
        total_steps = config.num_train_steps
    elif whole:
        total_steps = int(steps_per_epoch * config.num_epochs)
    else:
        total_steps = int(num_train * config.num_epochs) // batch
    num_classes = config.dataset.num_classes or info.num_classes
    return RunPlan(
        num_classes=num_classes,
        num_train_examples=num_train,
        steps_per_epoch=steps_per_epoch,
        total_steps=max(total_steps, 1),
        per_device_batch=batch // mapper.num_devices,
        local_batch=batch // mapper.num_devices * mapper.num_local_devices,
    )


def build_model(config: ml_collections.ConfigDict, num_classes: int, *, training: bool):
    """`hk.transform_with_state` of the configured model.

    The training model computes in bfloat16 when `config.bfloat16` (parameters stay
    float32); the evaluation model always runs in float32, as in the original.
    """
    compute_dtype = jnp.bfloat16 if training and config.bfloat16 else None
    return models.transform_model(
        config.model, num_classes, config.model_kwargs.to_dict(), compute_dtype=compute_dtype
    )


@dataclasses.dataclass(frozen=True)
class Setup:
    """The models, optimizer and state constructor of one run."""

    train_model: hk.TransformedWithState
    eval_model: hk.TransformedWithState
    optimizer: Any
    learning_rate_fn: Any
    init: Any  # (rng, images) -> TrainState
    abstract_state: TrainState  # shapes, dtypes and replicated shardings
    image_shape: tuple[int, int, int, int]


def _check_warmup(config: ml_collections.ConfigDict, plan: RunPlan) -> None:
    warmup_epochs = config.optimizer.schedule.get("warmup_epochs")
    if not isinstance(warmup_epochs, int | float) or isinstance(warmup_epochs, bool):
        return  # the schedule builder reports a malformed value
    warmup_steps = warmup_epochs * plan.steps_per_epoch
    if warmup_steps > 0 and warmup_steps >= plan.total_steps:
        length = (
            f"num_train_steps={config.num_train_steps}"
            if config.num_train_steps is not None
            else f"num_epochs={config.num_epochs}"
        )
        raise ConfigError(
            f"Invalid config: optimizer.schedule.warmup_epochs={warmup_epochs} is "
            f"{warmup_steps:.1f} steps ({plan.steps_per_epoch:.2f} steps per epoch), not "
            f"shorter than the whole run ({plan.total_steps} step(s), from {length}): lower "
            "the warmup or train longer."
        )


def build_setup(
    config: ml_collections.ConfigDict, plan: RunPlan, mapper: parallel.DeviceMapper
) -> Setup:
    """Builds models, optimizer and the abstract state (no parameter is allocated).

    Raises:
      ConfigError: the model options or the optimizer config are invalid (the model is
        traced abstractly, so errors in its options show here).
    """
    train_model = build_model(config, plan.num_classes, training=True)
    eval_model = build_model(config, plan.num_classes, training=False)
    image_shape = (1, config.dataset.image_size, config.dataset.image_size, 3)
    sample = jax.ShapeDtypeStruct(image_shape, jnp.float32)
    try:
        abstract_params, _ = jax.eval_shape(
            functools.partial(train_model.init, is_training=True), jax.random.PRNGKey(0), sample
        )
    except (ValueError, TypeError) as error:
        raise ConfigError(
            f"Invalid config: model {config.model!r} cannot be built with these "
            f"model_kwargs: {error}"
        ) from None
    _check_warmup(config, plan)
    try:
        optimizer, learning_rate_fn = optim.build_optimizer(
            config.optimizer,
            abstract_params,
            batch_size=config.train_batch_size,
            steps_per_epoch=plan.steps_per_epoch,
            total_steps=plan.total_steps,
        )
    except (ValueError, TypeError) as error:
        raise ConfigError(f"Invalid config: optimizer: {error}") from None
    init = functools.partial(
        create_train_state, train_model.init, optimizer, use_ema=config.use_ema
    )
    abstract_state = jax.eval_shape(init, jax.random.PRNGKey(0), sample)
    abstract_state = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=mapper.replicated),
        abstract_state,
    )
    return Setup(
        train_model, eval_model, optimizer, learning_rate_fn, init, abstract_state, image_shape
    )


def abstract_state(
    config: ml_collections.ConfigDict, mapper: parallel.DeviceMapper | None = None
) -> TrainState:
    """The shapes, dtypes and shardings of a run's `TrainState` (e.g. to restore it).

    Reads the dataset's metadata (for the classes) and builds the model and optimizer
    abstractly: nothing is allocated.
    """
    mapper = mapper or parallel.DeviceMapper(config.parallelism)
    return build_setup(config, plan_run(config, mapper), mapper).abstract_state


@dataclasses.dataclass(frozen=True)
class MappedTrainStep:
    """The run's training step mapped over the devices.

    Call as ``fn(device_state, device_batch, *extra_args) -> (device_state, metrics)``.
    """

    fn: Any
    extra_args: tuple  # the replicated teacher variables when distilling, else ()
    teacher: Any  # the `distill.Teacher`, or None


def build_train_step(
    config: ml_collections.ConfigDict,
    plan: RunPlan,
    setup: Setup,
    mapper: parallel.DeviceMapper,
    teacher: Any = None,
) -> MappedTrainStep:
    """The training step `train_and_evaluate` runs, built from the config.

    Label smoothing (and its form), Bag-of-Tricks mixup, EMA, gradient accumulation and,
    with a `teacher` (`Startup.teacher`), knowledge distillation: the teacher's variables
    become a replicated step argument, never a compiled constant. Benchmarks use this
    too, so they time exactly what runs.
    """
    teacher_fn = loss_fn = None
    extra_args: tuple = ()
    if teacher is not None:
        distill_config = config.distill
        teacher_fn = teacher.logits
        loss_fn = losses.make_distillation_loss_fn(
            temperature=distill_config.temperature,
            hard_weight=distill_config.hard_weight,
            soft_weight=distill_config.soft_weight,
            soft_loss=distill_config.soft_loss,
        )
        extra_args = (mapper.to_device_state(mapper.replicate(teacher.variables)),)
    train_step = step.make_train_step(
        setup.train_model.apply,
        setup.optimizer,
        num_classes=plan.num_classes,
        learning_rate_fn=setup.learning_rate_fn,
        label_smoothing=config.label_smoothing,
        ema_decay=config.ema_decay if config.use_ema else None,
        grad_accum_steps=config.grad_accum_steps,
        label_smoothing_form=config.label_smoothing_form,
        mixup_alpha=config.mixup_alpha,
        teacher_fn=teacher_fn,
        loss_fn=loss_fn,
    )
    fn = mapper.map_train_step(train_step, num_replicated_args=len(extra_args))
    return MappedTrainStep(fn, extra_args, teacher)


def parameter_table(params: hk.Params) -> str:
    """A per-module table of parameter shapes and counts, with the total."""
    lines = [f"{'module/param':<70} {'shape':<22} {'count':>12}"]
    total = 0
    for module in sorted(params):
        for name, value in sorted(params[module].items()):
            count = int(np.prod(value.shape))
            total += count
            lines.append(f"{module + '/' + name:<70} {str(tuple(value.shape)):<22} {count:>12,}")
    lines.append(f"{'total':<70} {'':<22} {total:>12,}")
    return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class Startup:
    """What the start-up validation of a run learned, carried into the loop.

    Attributes:
      mapper: how steps are mapped over the devices.
      dataset: the dataset's resolved source and the parsed augmentation.
      plan: classes, steps per epoch, total steps and batch layout.
      setup: the models, optimizer and abstract state.
      saved_steps: checkpoint steps already in the workdir (empty: a fresh start).
      init_from: the `config.init_from` checkpoint, read and checked against the model
        (None when resuming or not fine-tuning).
      teacher: the distillation teacher, read and checked (None when not distilling).
    """

    mapper: parallel.DeviceMapper
    dataset: config_lib.CheckedData
    plan: RunPlan
    setup: Setup
    saved_steps: tuple[int, ...]
    init_from: checkpoints.LoadedCheckpoint | None
    teacher: Any


def _saved_steps(workdir: str) -> tuple[int, ...]:
    run_dir = epath.Path(workdir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(
            f"--workdir={workdir!r} is a file: pass a directory (created if missing) for "
            "checkpoints, logs and metrics."
        )
    return tuple(checkpoint_lib.saved_steps(str(run_dir / "checkpoints")))


def _read_init_from(
    config: ml_collections.ConfigDict, setup: Setup
) -> checkpoints.LoadedCheckpoint:
    path = config.init_from
    if not epath.Path(path).exists():
        raise ConfigError(
            f"Invalid config: init_from={path!r} does not exist: download DeepMind's weights "
            f"({checkpoints.released_weights_url('F0')}, F0..F6), or pass a file from "
            "`python -m experiments.export` or a run directory."
        )
    try:
        loaded = checkpoints.load_checkpoint(path)
    except NFNetsError as error:
        raise finetune.InitFromError(f"init_from={path!r} cannot be read: {error}") from None
    abstract = setup.abstract_state
    finetune.fit_init_from(loaded, abstract.params, abstract.model_state, check_only=True)
    return loaded


def _read_teacher(config: ml_collections.ConfigDict, num_classes: int):
    try:
        return distill.load_teacher(config, num_classes)
    except ConfigError:
        raise
    except NFNetsError as error:
        raise ConfigError(
            f"Invalid config: distill.teacher_checkpoint={config.distill.teacher_checkpoint!r} "
            f"cannot be used: {error}"
        ) from None


def prepare_run(config: ml_collections.ConfigDict, workdir: str) -> Startup:
    """Validates a training run completely, before any data, parameter or compilation.

    Args:
      config: the experiment config.
      workdir: the run directory (it may not exist yet; it must not be a file).

    Returns:
      The `Startup`: everything the checks derived, for the loop to use.

    Raises:
      ConfigError: any invalid field, dataset, split, model option, optimizer setting,
        schedule longer than the run, workdir, missing `init_from`, or unusable teacher.
      InitFromError: `init_from` is unreadable, unsafe or does not fit the model.
    """
    finetune.resolve_init_from_numerics(config)  # a timm init_from keeps timm's numerics
    checked = config_lib.validate_config(config, num_devices=jax.device_count())
    mapper = parallel.DeviceMapper(config.parallelism)
    plan = plan_run(config, mapper, checked.info)
    setup = build_setup(config, plan, mapper)
    saved = _saved_steps(workdir)
    init_from = _read_init_from(config, setup) if config.init_from and not saved else None
    distilling = bool(config.distill.teacher_checkpoint)
    teacher = _read_teacher(config, plan.num_classes) if distilling else None
    return Startup(mapper, checked, plan, setup, saved, init_from, teacher)
