"""`train_and_evaluate`: the whole experiment, importable and testable.

Order of work (spec sections 4-5): validate the config, build the models (a bfloat16
training model and a float32 evaluation model sharing one parameter tree), the optimizer
and the replicated `TrainState`; restore the newest readable checkpoint from `workdir`
(or start from `config.init_from`); then train, logging every `log_every_steps`,
evaluating raw and EMA parameters on the whole eval split every `eval_every_steps` and at
the end, and checkpointing periodically, on SIGTERM and at the end.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import signal
import threading
import time
from typing import Any

import haiku as hk
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from nfnets_jax import data, models, optim
from nfnets_jax.training import checkpoint as checkpoint_lib
from nfnets_jax.training import config as config_lib
from nfnets_jax.training import finetune, parallel, step, writers
from nfnets_jax.training.state import TrainState, create_train_state


class NonFiniteLossError(RuntimeError):
    """Training produced a non-finite loss or gradient; the run stopped."""


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """Quantities derived from the config and the dataset at start-up."""

    num_classes: int
    num_train_examples: int
    steps_per_epoch: float
    total_steps: int
    per_device_batch: int
    local_batch: int


def plan_run(config: ml_collections.ConfigDict, mapper: parallel.DeviceMapper) -> RunPlan:
    """Derives classes, steps per epoch and total steps (`(N * epochs) // batch`)."""
    info = data.dataset_info(config.dataset.name, data_dir=config.dataset.data_dir)
    train_split = config.dataset.train_split or info.train_split
    if train_split not in info.splits:
        raise config_lib.ConfigError(
            f"dataset.train_split={train_split!r} is not a split of {config.dataset.name!r} "
            f"(it has {', '.join(info.splits)})."
        )
    num_train = info.splits[train_split]
    batch = config.train_batch_size
    # Whole batches per epoch (GluonCV's `num_training_samples // batch_size`, as the
    # Bag-of-Tricks presets count them), or the original's fractional N / batch.
    whole = config.get("integer_steps_per_epoch", False)
    steps_per_epoch = max(num_train // batch, 1) if whole else num_train / batch
    if config.num_train_steps > 0:
        total_steps = config.num_train_steps
    elif whole:
        total_steps = int(steps_per_epoch * config.num_epochs)
    else:
        total_steps = int(num_train * config.num_epochs) // batch
    num_classes = config.dataset.num_classes if config.dataset.num_classes > 0 else info.num_classes
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
    model_cls = models.get_model(config.model)
    kwargs = dict(config.model_kwargs.to_dict())
    if training and config.bfloat16:
        kwargs["compute_dtype"] = jnp.bfloat16

    def forward(images, is_training):
        return model_cls(num_classes=num_classes, **kwargs)(images, is_training=is_training)

    return hk.transform_with_state(forward)


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


def build_setup(
    config: ml_collections.ConfigDict, plan: RunPlan, mapper: parallel.DeviceMapper
) -> Setup:
    """Builds models, optimizer and the abstract state (no parameter is allocated)."""
    train_model = build_model(config, plan.num_classes, training=True)
    eval_model = build_model(config, plan.num_classes, training=False)
    image_shape = (1, config.dataset.image_size, config.dataset.image_size, 3)
    sample = jax.ShapeDtypeStruct(image_shape, jnp.float32)
    abstract_params, _ = jax.eval_shape(
        functools.partial(train_model.init, is_training=True), jax.random.PRNGKey(0), sample
    )
    optimizer, learning_rate_fn = optim.build_optimizer(
        config.optimizer,
        abstract_params,
        batch_size=config.train_batch_size,
        steps_per_epoch=plan.steps_per_epoch,
        total_steps=plan.total_steps,
    )
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


@dataclasses.dataclass(frozen=True)
class MappedTrainStep:
    """The run's training step mapped over the devices.

    Call as ``fn(device_state, device_batch, *extra_args) -> (device_state, metrics)``.
    """

    fn: Any
    extra_args: tuple  # the replicated teacher variables when distilling, else ()
    teacher: Any  # the loaded `distill.Teacher`, or None


def build_train_step(
    config: ml_collections.ConfigDict,
    plan: RunPlan,
    setup: Setup,
    mapper: parallel.DeviceMapper,
) -> MappedTrainStep:
    """The training step `train_and_evaluate` runs, built from the config.

    Label smoothing (and its form), Bag-of-Tricks mixup, EMA, gradient accumulation and,
    when ``config.distill.teacher_checkpoint`` is set, knowledge distillation (the
    teacher is loaded here and its variables become a replicated step argument, never a
    compiled constant). Benchmarks use this too, so they time exactly what runs.
    """
    teacher = teacher_fn = loss_fn = None
    extra_args: tuple = ()
    distill_config = config.get("distill")
    if distill_config is not None and distill_config.teacher_checkpoint:
        from nfnets_jax.training import distill, losses

        teacher = distill.load_teacher(config, plan.num_classes)
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
        label_smoothing_form=config.get("label_smoothing_form", "uniform"),
        mixup_alpha=config.get("mixup_alpha", 0.0),
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


class _SigtermFlag:
    """Records SIGTERM (preemption) so the loop can checkpoint at a step boundary."""

    def __init__(self):
        self.received = False
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        del signum, frame
        logging.warning("SIGTERM received: saving a checkpoint at the next step boundary.")
        self.received = True

    def restore(self):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _eval_iterator(config, mapper: parallel.DeviceMapper):
    eval_per_device = config.eval_batch_size // mapper.num_devices
    return data.eval_iterator(
        config.dataset.name,
        split=config.dataset.eval_split or None,
        data_dir=config.dataset.data_dir,
        local_device_count=mapper.num_local_devices,
        per_device_batch=eval_per_device,
        image_size=config.dataset.eval_image_size,
        eval_preproc=config.dataset.eval_preproc,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        flatten_devices=mapper.flatten_batches,
    )


def train_iterator(config, plan: RunPlan, mapper: parallel.DeviceMapper, start_step: int = 0):
    """This process's stream of training batches, starting at batch `start_step`."""
    return data.train_iterator(
        config.dataset.name,
        split=config.dataset.train_split or None,
        data_dir=config.dataset.data_dir,
        local_device_count=mapper.num_local_devices,
        per_device_batch=plan.per_device_batch,
        image_size=config.dataset.image_size,
        train_preproc=config.dataset.train_preproc,
        augment_name=config.dataset.augment_name or None,
        augment_before_mix=config.dataset.augment_before_mix,
        seed=None if config.dataset.seed < 0 else config.dataset.seed,
        start_step=start_step,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        flatten_devices=mapper.flatten_batches,
    )


def evaluate(
    config: ml_collections.ConfigDict,
    mapper: parallel.DeviceMapper,
    eval_fn: Any,
    params: Any,
    model_state: Any,
) -> dict[str, float]:
    """Top-1/top-5/loss of (device-layout) `params` over the whole eval split.

    Every example is counted once (padding is masked out); `eval_fn` is the mapped
    `step.make_eval_step`. Returns `loss`, `top_1_acc`, `top_5_acc` and `num_examples`.
    """
    totals = None
    batches = data.prefetch_to_device(
        _eval_iterator(config, mapper), size=2, sharding=mapper.batch_sharding
    )
    for batch in batches:
        sums = eval_fn(params, model_state, batch)
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    if totals is None:
        raise RuntimeError(f"The eval split of {config.dataset.name!r} yielded no batches.")
    totals = jax.device_get(totals)
    count = float(totals["count"])
    return {
        "loss": float(totals["loss"]) / count,
        "top_1_acc": float(totals["top_1"]) / count,
        "top_5_acc": float(totals["top_5"]) / count,
        "num_examples": count,
    }


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    stop_at_step: int | None = None,
) -> dict[str, Any]:
    """Runs (or resumes) the experiment described by `config` in `workdir`.

    Args:
      config: an experiment config (`experiments/configs`).
      workdir: where checkpoints, `config.json`, `params.txt`, `metrics.jsonl` and
        TensorBoard events go. Rerunning with the same `workdir` resumes from its newest
        readable checkpoint (same step, optimizer state, EMA, RNG and data position).
      stop_at_step: stop (with a checkpoint) once this step is reached, as if preempted.

    Returns:
      A dict with `step`, `preempted`, the last training metrics (`train`) and the final
      evaluation (`eval`, `ema_eval`) when the run completed.

    Raises:
      ConfigError: the config is invalid (raised before any data or device work).
      NonFiniteLossError: a step produced a non-finite loss or gradient.
    """
    writers.quiet_library_logs()
    mapper = parallel.DeviceMapper(config.parallelism)
    config_lib.validate_config(config, num_devices=mapper.num_devices)
    plan = plan_run(config, mapper)
    is_main = jax.process_index() == 0
    run_dir = epath.Path(workdir)  # local paths and gs:// alike
    run_dir.mkdir(parents=True, exist_ok=True)

    setup = build_setup(config, plan, mapper)
    image_shape = setup.image_shape
    rng = jax.random.PRNGKey(config.seed)

    checkpointer = checkpoint_lib.Checkpointer(
        str(run_dir / "checkpoints"), max_to_keep=config.keep_checkpoints
    )
    fresh_start = checkpointer.latest_step() is None
    if config.init_from and fresh_start and not epath.Path(config.init_from).exists():
        raise config_lib.ConfigError(
            f"Invalid config: init_from={config.init_from!r} does not exist: download "
            "DeepMind's weights (https://storage.googleapis.com/dm-nfnets/F0_haiku.npz, "
            "F0..F6), or pass a file from `python -m experiments.export` or a run directory."
        )
    restored = checkpointer.restore_latest(setup.abstract_state)
    if restored is not None:
        state, meta = restored
        if meta.get("train_batch_size") != config.train_batch_size:
            logging.warning(
                "Resuming with train_batch_size=%d but the checkpoint was written with %s: "
                "the data position is counted in batches, so the stream will not line up.",
                config.train_batch_size,
                meta.get("train_batch_size"),
            )
        writers.log_line(f"Resumed from {checkpointer.directory} at step {int(meta['step'])}.")
    else:
        state = jax.jit(setup.init, out_shardings=mapper.replicated)(
            rng, jnp.zeros(image_shape, jnp.float32)
        )
        if config.init_from:
            state = finetune.init_state_from_checkpoint(
                state, config.init_from, optimizer=setup.optimizer, mapper=mapper
            )
    start_step = int(parallel.host_copy(state.step))
    writer = writers.MetricWriter(workdir, enabled=is_main)

    if is_main:
        (run_dir / "config.json").write_text(config.to_json_best_effort(indent=2, sort_keys=True))
        (run_dir / "params.txt").write_text(
            parameter_table(parallel.host_copy(state.params)) + "\n"
        )
        writer.write_text("config", f"```\n{config}\n```", start_step)
        num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
        writers.log_line(
            f"{config.model} {dict(config.model_kwargs)}: {num_params:,} parameters; "
            f"{plan.total_steps} steps of {config.train_batch_size} images "
            f"({plan.steps_per_epoch:.1f} steps/epoch) on {mapper.num_devices} devices "
            f"with {config.parallelism}."
        )

    mapped_step = build_train_step(config, plan, setup, mapper)
    train_fn, teacher_args = mapped_step.fn, mapped_step.extra_args
    if mapped_step.teacher is not None:
        writers.log_line(
            f"Distilling from {config.distill.teacher_model or 'the'} teacher "
            f"({mapped_step.teacher.description}), T={config.distill.temperature}."
        )
    eval_fn = mapper.map_eval_step(
        step.make_eval_step(setup.eval_model.apply, num_classes=plan.num_classes)
    )

    def save(device_state, step_number: int) -> None:
        canonical = mapper.from_device_state(device_state)
        meta = {
            "step": step_number,
            "train_batch_size": config.train_batch_size,
            "data_seed": config.dataset.seed,
            "config": json.loads(config.to_json_best_effort()),
        }
        checkpointer.save(step_number, canonical, meta)

    def run_eval(device_state, step_number: int) -> dict[str, dict[str, float]]:
        results = {
            "eval": evaluate(config, mapper, eval_fn, device_state.params, device_state.model_state)
        }
        if config.use_ema:
            results["ema_eval"] = evaluate(
                config, mapper, eval_fn, device_state.ema_params, device_state.ema_state
            )
        for prefix, values in results.items():
            writer.write_scalars(step_number, values, prefix=f"{prefix}/")
        line = " | ".join(
            f"{name} top1 {v['top_1_acc']:.2%} top5 {v['top_5_acc']:.2%} loss {v['loss']:.4f}"
            for name, v in results.items()
        )
        writers.log_line(
            f"step {step_number}: {line} ({int(results['eval']['num_examples'])} examples)"
        )
        return results

    result: dict[str, Any] = {"step": start_step, "preempted": False}
    device_state = mapper.to_device_state(state)
    del state
    if start_step >= plan.total_steps:
        result.update(run_eval(device_state, start_step))
        checkpointer.close()
        writer.close()
        return result

    train_iter = train_iterator(config, plan, mapper, start_step)
    batches = data.prefetch_to_device(train_iter, size=2, sharding=mapper.batch_sharding)
    sigterm = _SigtermFlag()
    interval_metrics: list[dict[str, jax.Array]] = []
    pending: tuple[int, dict[str, jax.Array]] | None = None
    last_save_time = time.time()
    interval_start = time.time()
    interval_steps = 0
    compile_logged = False
    step_number = start_step

    def check_finite(checked_step: int, metrics: dict[str, jax.Array]) -> None:
        if float(metrics["finite"]) == 1.0:
            return
        loss, grad_norm = float(metrics["loss"]), float(metrics["grad_norm"])
        checkpointer.wait()
        last = checkpointer.latest_step()
        kept = (
            f"the last good checkpoint (step {last}) is intact in {checkpointer.directory}"
            if last is not None
            else "no checkpoint had been written yet"
        )
        raise NonFiniteLossError(
            f"Training stopped at step {checked_step}: the loss was {loss} and the gradient "
            f"norm {grad_norm}. The update of that step was skipped and {kept}. Check the "
            "input data for NaN/inf, lower optimizer.base_lr or raise the warmup, or "
            "disable bfloat16, then rerun the same command to resume."
        )

    try:
        while step_number < plan.total_steps:
            try:
                batch = next(batches)
            except StopIteration:
                raise RuntimeError(
                    f"The training data ran out at step {step_number}; training iterators "
                    "repeat forever, so this points to an empty dataset split."
                ) from None
            t0 = time.time()
            device_state, metrics = train_fn(device_state, batch, *teacher_args)
            if not compile_logged:
                jax.block_until_ready(metrics)
                writers.log_line(f"First step (compilation included): {time.time() - t0:.1f}s.")
                compile_logged = True
                interval_start = time.time()
                interval_steps = -1  # the compiled step is excluded from throughput.
            if pending is not None:
                check_finite(*pending)
            pending = (step_number, metrics)
            step_number += 1
            interval_steps += 1
            interval_metrics.append(metrics)

            if step_number % config.log_every_steps == 0 or step_number == plan.total_steps:
                check_finite(*pending)
                pending = None
                host = jax.device_get(interval_metrics)
                interval_metrics = []
                averaged = {k: float(np.mean([m[k] for m in host])) for k in host[-1]}
                averaged.pop("finite", None)
                elapsed = time.time() - interval_start
                if interval_steps > 0 and elapsed > 0:
                    averaged["images_per_sec"] = interval_steps * config.train_batch_size / elapsed
                    averaged["steps_per_sec"] = interval_steps / elapsed
                    eta = (plan.total_steps - step_number) / averaged["steps_per_sec"]
                else:
                    eta = math.nan
                writer.write_scalars(step_number, averaged, prefix="train/")
                writers.log_line(
                    writers.format_train_line(step_number, plan.total_steps, averaged, eta)
                )
                result["train"] = averaged
                interval_start, interval_steps = time.time(), 0

            preempted = sigterm.received or checkpointer.reached_preemption(step_number)
            stop_now = preempted or (stop_at_step is not None and step_number >= stop_at_step)
            periodic = (
                config.checkpoint_every_steps > 0
                and step_number % config.checkpoint_every_steps == 0
            ) or (
                jax.process_count() == 1
                and config.checkpoint_every_secs > 0
                and time.time() - last_save_time >= config.checkpoint_every_secs
            )
            if stop_now or periodic or step_number == plan.total_steps:
                if pending is not None:
                    check_finite(*pending)
                    pending = None
                save(device_state, step_number)
                last_save_time = time.time()
            if stop_now:
                checkpointer.wait()
                result.update(step=step_number, preempted=preempted)
                writers.log_line(
                    f"Stopped at step {step_number} with a checkpoint in "
                    f"{checkpointer.directory}; rerun the same command to resume."
                )
                return result
            if (
                config.eval_every_steps > 0
                and step_number % config.eval_every_steps == 0
                and step_number < plan.total_steps
            ):
                run_eval(device_state, step_number)
                interval_start, interval_steps = time.time(), 0  # keep eval out of img/s

        if pending is not None:
            check_finite(*pending)
        result["step"] = step_number
        result.update(run_eval(device_state, step_number))
        checkpointer.wait()
        if is_main:
            (run_dir / "final_metrics.json").write_text(json.dumps(result, indent=2))
        return result
    finally:
        sigterm.restore()
        checkpointer.close()
        writer.close()


def restore_state(
    workdir_or_checkpoints: str, config: ml_collections.ConfigDict, *, step: int | None = None
) -> TrainState:
    """Reads a run's `TrainState` (newest readable checkpoint, or `step`) on the host.

    Args:
      workdir_or_checkpoints: a run directory (with `checkpoints/`) or the checkpoint
        directory itself.
      config: the run's config (it defines the model and optimizer state shapes).
      step: a specific checkpoint step instead of the newest one.

    Raises:
      CheckpointError: no (readable) checkpoint.
    """
    mapper = parallel.DeviceMapper(config.parallelism)
    setup = build_setup(config, plan_run(config, mapper), mapper)
    directory = workdir_or_checkpoints
    if (epath.Path(directory) / "checkpoints").is_dir():
        directory = str(epath.Path(directory) / "checkpoints")
    if not epath.Path(directory).is_dir():
        raise checkpoint_lib.CheckpointError(f"No checkpoint directory at {directory}.")
    checkpointer = checkpoint_lib.Checkpointer(directory, async_save=False)
    try:
        if step is not None:
            restored = checkpointer.restore(step, setup.abstract_state)
        else:
            restored = checkpointer.restore_latest(setup.abstract_state)
    finally:
        checkpointer.close()
    if restored is None:
        raise checkpoint_lib.CheckpointError(f"No checkpoint found in {directory}.")
    return parallel.host_copy(restored[0])


def restore_params(
    workdir_or_checkpoints: str, config: ml_collections.ConfigDict, *, use_ema: bool = True
) -> tuple[hk.Params, hk.State]:
    """(EMA) params and model state of a run's newest checkpoint, on the host."""
    state = restore_state(workdir_or_checkpoints, config)
    if use_ema and state.ema_params is not None:
        return state.ema_params, state.ema_state
    return state.params, state.model_state
