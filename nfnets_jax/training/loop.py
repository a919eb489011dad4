"""`train_and_evaluate`: the whole experiment, importable and testable.

Order of work (spec sections 4-5): validate everything once (`startup.prepare_run`:
config, dataset, model, optimizer, schedule, workdir, `init_from` and teacher files),
then build the replicated `TrainState`, restoring the newest checkpoint every process can
read from `workdir` (or starting from `config.init_from`); then train, logging every
`log_every_steps`, evaluating raw and EMA parameters on the whole eval split every
`eval_every_steps` and at the end, and checkpointing periodically, on preemption and at
the end.

Every exit path (finished, `stop_at_step`, preempted, non-finite loss, an error,
Ctrl-C) stops and joins the input threads, closes the tf.data iterators, waits for the
last checkpoint to be written and closes the writers before the function returns or
raises: nothing the run started outlives it.

Preemption: a single process checkpoints on SIGTERM at the next step boundary. A
multi-process run leaves SIGTERM to JAX's preemption notifier (installed by
`jax.distributed.initialize`): whichever hosts receive the signal, every process reaches
the same sync point (`Checkpointer.reached_preemption`), writes one checkpoint together
and returns normally.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import signal
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from nfnets_jax import data
from nfnets_jax.errors import NFNetsError
from nfnets_jax.training import checkpoint as checkpoint_lib
from nfnets_jax.training import (
    distributed,
    evaluation,
    finetune,
    inputs,
    parallel,
    startup,
    step,
    writers,
)
from nfnets_jax.training.config import ConfigError
from nfnets_jax.training.state import TrainState

__all__ = ["NonFiniteLossError", "train_and_evaluate"]


class NonFiniteLossError(NFNetsError, RuntimeError):
    """Training produced a non-finite loss or gradient; the run stopped."""


class _SigtermFlag(contextlib.AbstractContextManager):
    """Records SIGTERM (preemption) so a single-process run checkpoints at a step boundary.

    Multi-process runs install nothing: a Python handler would replace the notifier of
    JAX's preemption service, and the other processes would never learn of the signal.
    """

    def __init__(self):
        self.received = False
        self._previous = None
        self._installed = (
            jax.process_count() == 1 and threading.current_thread() is threading.main_thread()
        )

    def __enter__(self) -> _SigtermFlag:
        if self._installed:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        del signum, frame
        logging.warning("SIGTERM received: saving a checkpoint at the next step boundary.")
        self.received = True

    def __exit__(self, *exc_info) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous)


def _prepare_everywhere(config: ml_collections.ConfigDict, workdir: str) -> startup.Startup:
    """`startup.prepare_run` on every process; if it fails on any, it fails on all.

    A mistake seen by one host only (e.g. an `init_from` file missing there) would
    otherwise leave the others waiting for it in their first collective.
    """
    try:
        prepared, error = startup.prepare_run(config, workdir), None
    except NFNetsError as caught:
        prepared, error = None, caught
    failed = distributed.failed_processes(error is None)
    if error is not None:
        raise error
    if failed:
        raise ConfigError(
            f"Start-up validation failed on process(es) {', '.join(map(str, failed))}; "
            "their logs say what to change."
        )
    return prepared


def _resolve_data_seed(config: ml_collections.ConfigDict, recorded: int | None) -> int:
    """The data seed of the run: the config's, else the checkpoint's, else a new one.

    A new seed is drawn once, on process 0, and shared with every process.
    """
    configured = config.dataset.seed
    recorded = recorded if isinstance(recorded, int) and recorded >= 0 else None
    if configured is not None:
        if recorded is not None and recorded != configured:
            logging.warning(
                "Resuming with dataset.seed=%d but the checkpoint was written with seed %d: "
                "the data order differs from here on.",
                configured,
                recorded,
            )
        return configured
    if recorded is not None:
        return recorded
    drawn = random.SystemRandom().randrange(2**31)
    return int(distributed.broadcast_from_main(np.array(drawn, np.int64)))


def _make_run_dir(workdir: str) -> epath.Path:
    run_dir = epath.Path(workdir)  # local paths and gs:// alike
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"--workdir={workdir!r} cannot be created: {error}") from None
    return run_dir


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    stop_at_step: int | None = None,
) -> dict[str, Any]:
    """Runs (or resumes) the experiment described by `config` in `workdir`.

    Args:
      config: an experiment config (`experiments/configs`). It is not modified; the
        run's resolved copy (with the data seed it uses) is written to
        `workdir/config.json`.
      workdir: where checkpoints, `config.json`, `params.txt`, `metrics.jsonl` and
        TensorBoard events go. Rerunning with the same `workdir` resumes from its newest
        readable checkpoint (same step, optimizer state, EMA, RNG, data seed and data
        position), so a resumed run ends bit-identical to an uninterrupted one.
      stop_at_step: stop (with a checkpoint) once this step is reached, as if preempted.

    Returns:
      A dict with `step`, `preempted`, `data_seed`, the last training metrics (`train`)
      and the final evaluation (`eval`, `ema_eval`) when the run completed.

    Raises:
      ConfigError: the config is invalid (raised before any data or device work).
      InitFromError: `config.init_from` cannot be used (also before any work).
      CheckpointError: checkpoints exist but none can be restored.
      NonFiniteLossError: a step produced a non-finite loss or gradient.
    """
    writers.quiet_library_logs()
    with contextlib.ExitStack() as stack:
        sigterm = stack.enter_context(_SigtermFlag())
        run = _prepare_everywhere(config, workdir)
        mapper, plan, setup = run.mapper, run.plan, run.setup
        run_dir = _make_run_dir(workdir)
        checkpointer = stack.enter_context(
            contextlib.closing(
                checkpoint_lib.Checkpointer(
                    str(run_dir / "checkpoints"), max_to_keep=config.keep_checkpoints
                )
            )
        )
        state, recorded_seed = _restore_or_initialize(config, run, checkpointer)
        config = config.copy_and_resolve_references()
        config.dataset.seed = _resolve_data_seed(config, recorded_seed)
        start_step = int(parallel.host_copy(state.step))
        writer = stack.enter_context(
            contextlib.closing(writers.MetricWriter(workdir, enabled=jax.process_index() == 0))
        )
        _record_run(config, run, run_dir, writer, state, start_step)
        mapped_step = startup.build_train_step(config, plan, setup, mapper, run.teacher)
        eval_fn = mapper.map_eval_step(
            step.make_eval_step(setup.eval_model.apply, num_classes=plan.num_classes)
        )
        device_state = mapper.to_device_state(state)
        del state
        runner = _Loop(config, run, checkpointer, writer, eval_fn, sigterm)
        if start_step >= plan.total_steps:
            result = {"step": start_step, "preempted": False}
            result.update(runner.run_eval(device_state, start_step))
        else:
            train_iter = inputs.train_iterator(
                config,
                plan,
                mapper,
                start_step,
                source=run.dataset.source,
                augment=run.dataset.augment,
            )
            batches = stack.enter_context(
                data.prefetch_to_device(train_iter, size=2, sharding=mapper.batch_sharding)
            )
            result = runner.train(device_state, batches, mapped_step, start_step, stop_at_step)
        result["data_seed"] = config.dataset.seed
        if "eval" in result and jax.process_index() == 0:  # the run completed
            (run_dir / "final_metrics.json").write_text(json.dumps(result, indent=2))
        return result


def _restore_or_initialize(
    config: ml_collections.ConfigDict,
    run: startup.Startup,
    checkpointer: checkpoint_lib.Checkpointer,
) -> tuple[TrainState, int | None]:
    """The newest checkpoint every process can read, else a fresh (or `init_from`) state.

    Returns:
      `(state, the data seed the checkpoint recorded or None)`.
    """
    restored = checkpointer.restore_latest(run.setup.abstract_state)
    if restored is not None:
        state, meta = restored
        if meta.get("train_batch_size") != config.train_batch_size:
            logging.warning(
                "Resuming with train_batch_size=%d but the checkpoint was written with "
                "%s: the data position is counted in batches, so the stream will not "
                "line up.",
                config.train_batch_size,
                meta.get("train_batch_size"),
            )
        writers.log_line(f"Resumed from {checkpointer.directory} at step {int(meta['step'])}.")
        return state, meta.get("data_seed")
    image_shape = run.setup.image_shape
    state = jax.jit(run.setup.init, out_shardings=run.mapper.replicated)(
        jax.random.PRNGKey(config.seed), jnp.zeros(image_shape, jnp.float32)
    )
    if config.init_from:
        state = finetune.init_state_from_checkpoint(
            state,
            run.init_from or config.init_from,
            optimizer=run.setup.optimizer,
            mapper=run.mapper,
        )
    return state, None


def _record_run(config, run: startup.Startup, run_dir, writer, state, start_step) -> None:
    """Writes `config.json`, `params.txt` and the config summary; logs the run's shape."""
    if run.teacher is not None:
        writers.log_line(
            f"Distilling from {config.distill.teacher_model or 'the'} teacher "
            f"({run.teacher.description}), T={config.distill.temperature}."
        )
    if jax.process_index() != 0:
        return
    params = parallel.host_copy(state.params)
    (run_dir / "config.json").write_text(config.to_json_best_effort(indent=2, sort_keys=True))
    (run_dir / "params.txt").write_text(startup.parameter_table(params) + "\n")
    writer.write_text("config", f"```\n{config}\n```", start_step)
    num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    plan, mapper = run.plan, run.mapper
    writers.log_line(
        f"{config.model} {dict(config.model_kwargs)}: {num_params:,} parameters; "
        f"{plan.total_steps} steps of {config.train_batch_size} images "
        f"({plan.steps_per_epoch:.1f} steps/epoch) on {mapper.num_devices} devices "
        f"with {config.parallelism}; data seed {config.dataset.seed}."
    )


class _Loop:
    """The step loop of `train_and_evaluate`: train, log, evaluate, checkpoint, stop."""

    def __init__(self, config, run: startup.Startup, checkpointer, writer, eval_fn, sigterm):
        self.config, self.plan, self.mapper = config, run.plan, run.mapper
        self.source = run.dataset.source
        self.checkpointer, self.writer = checkpointer, writer
        self.eval_fn, self.sigterm = eval_fn, sigterm

    def save(self, device_state, step_number: int) -> None:
        meta = {
            "step": step_number,
            "train_batch_size": self.config.train_batch_size,
            "data_seed": self.config.dataset.seed,
            "config": json.loads(self.config.to_json_best_effort()),
        }
        self.checkpointer.save(step_number, self.mapper.from_device_state(device_state), meta)

    def run_eval(self, device_state, step_number: int) -> dict[str, dict[str, float]]:
        config, mapper = self.config, self.mapper

        distributed.barrier("evaluation")  # every process compiles the eval step anew

        def evaluate(params, model_state):
            return evaluation.evaluate_split(
                config, mapper, self.eval_fn, params, model_state, source=self.source
            )

        results = {"eval": evaluate(device_state.params, device_state.model_state)}
        if config.use_ema:
            results["ema_eval"] = evaluate(device_state.ema_params, device_state.ema_state)
        for prefix, values in results.items():
            self.writer.write_scalars(step_number, values, prefix=f"{prefix}/")
        line = " | ".join(
            f"{name} top1 {v['top_1_acc']:.2%} top5 {v['top_5_acc']:.2%} loss {v['loss']:.4f}"
            for name, v in results.items()
        )
        writers.log_line(
            f"step {step_number}: {line} ({int(results['eval']['num_examples'])} examples)"
        )
        return results

    def check_finite(self, checked_step: int, metrics: dict[str, jax.Array]) -> None:
        if float(metrics["finite"]) == 1.0:
            return
        loss, grad_norm = float(metrics["loss"]), float(metrics["grad_norm"])
        self.checkpointer.wait()
        last = self.checkpointer.latest_step()
        kept = (
            f"the last good checkpoint (step {last}) is intact in {self.checkpointer.directory}"
            if last is not None
            else "no checkpoint had been written yet"
        )
        raise NonFiniteLossError(
            f"Training stopped at step {checked_step}: the loss was {loss} and the gradient "
            f"norm {grad_norm}. The update of that step was skipped and {kept}. Check the "
            "input data for NaN/inf, lower optimizer.base_lr or raise the warmup, or "
            "disable bfloat16, then rerun the same command to resume."
        )

    def _stop_line(self, step_number: int, why: str) -> str:
        last = self.checkpointer.latest_step()
        kept = (
            f"the newest checkpoint (step {last}) is in {self.checkpointer.directory}"
            if last is not None
            else "no checkpoint had been written yet"
        )
        return f"{why} at step {step_number}: {kept}; rerun the same command to resume."

    def train(self, device_state, batches, mapped_step, start_step, stop_at_step):
        try:
            return self._train(device_state, batches, mapped_step, start_step, stop_at_step)
        except KeyboardInterrupt:
            self.checkpointer.wait()
            writers.log_line(self._stop_line(self.step_number, "Interrupted"))
            raise

    def _train(self, device_state, batches, mapped_step, start_step, stop_at_step):
        config, plan, checkpointer = self.config, self.plan, self.checkpointer
        train_fn, teacher_args = mapped_step.fn, mapped_step.extra_args
        result: dict[str, Any] = {"step": start_step, "preempted": False}
        interval_metrics: list[dict[str, jax.Array]] = []
        pending: tuple[int, dict[str, jax.Array]] | None = None
        last_save_time = interval_start = time.time()
        interval_steps = 0
        compile_logged = False
        self.step_number = step_number = start_step
        multi_process = jax.process_count() > 1

        while step_number < plan.total_steps:
            try:
                batch = next(batches)
            except StopIteration:
                raise RuntimeError(
                    f"The training data ran out at step {step_number}; training iterators "
                    "repeat forever, so this points to an empty dataset split."
                ) from None
            if not compile_logged:
                distributed.barrier("first training step")  # see distributed.barrier
            t0 = time.time()
            device_state, metrics = train_fn(device_state, batch, *teacher_args)
            if not compile_logged:
                jax.block_until_ready(metrics)
                writers.log_line(f"First step (compilation included): {time.time() - t0:.1f}s.")
                compile_logged = True
                interval_start = time.time()
                interval_steps = -1  # the compiled step is excluded from throughput.
            if pending is not None:
                self.check_finite(*pending)
            pending = (step_number, metrics)
            step_number += 1
            self.step_number = step_number
            interval_steps += 1
            interval_metrics.append(metrics)

            if step_number % config.log_every_steps == 0 or step_number == plan.total_steps:
                self.check_finite(*pending)
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
                self.writer.write_scalars(step_number, averaged, prefix="train/")
                writers.log_line(
                    writers.format_train_line(step_number, plan.total_steps, averaged, eta)
                )
                result["train"] = averaged
                interval_start, interval_steps = time.time(), 0

            # Every process calls reached_preemption at every step: the sync point of a
            # multi-process run is agreed through these calls.
            preempted = checkpointer.reached_preemption(step_number) or self.sigterm.received
            stop_now = preempted or (stop_at_step is not None and step_number >= stop_at_step)
            periodic = (
                config.checkpoint_every_steps > 0
                and step_number % config.checkpoint_every_steps == 0
            ) or (
                not multi_process
                and config.checkpoint_every_secs > 0
                and time.time() - last_save_time >= config.checkpoint_every_secs
            )
            if stop_now or periodic or step_number == plan.total_steps:
                if pending is not None:
                    self.check_finite(*pending)
                    pending = None
                self.save(device_state, step_number)
                last_save_time = time.time()
            if stop_now:
                checkpointer.wait()
                result.update(step=step_number, preempted=preempted)
                line = self._stop_line(step_number, "Preempted" if preempted else "Stopped")
                writers.log_line(line)
                if multi_process and jax.process_index() != 0:
                    logging.warning("Process %d: %s", jax.process_index(), line)
                return result
            if (
                config.eval_every_steps > 0
                and step_number % config.eval_every_steps == 0
                and step_number < plan.total_steps
            ):
                self.run_eval(device_state, step_number)
                interval_start, interval_steps = time.time(), 0  # keep eval out of img/s

        if pending is not None:
            self.check_finite(*pending)
        result["step"] = step_number
        result.update(self.run_eval(device_state, step_number))
        checkpointer.wait()
        return result
