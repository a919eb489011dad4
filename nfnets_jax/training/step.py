"""Pure per-device train and eval steps.

Each step is written once for one device: collectives name the `'data'` axis, and
`nfnets_jax.training.parallel` maps the step over devices with `jax.pmap` or
`jax.jit` + `jax.shard_map`. Nothing here reads flags, globals or the clock.

The training step follows DeepMind's NFNet experiment (arXiv:2102.06171, spec section 5):
forward in the model's compute dtype (bfloat16 when asked) on float32 master parameters,
logits and loss in float32, targets mixed then label-smoothed, gradients averaged over
every device, the optimizer chain (AGC -> weight decay -> Nesterov SGD), then the EMA.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import haiku as hk
import jax
import jax.numpy as jnp
import optax

from nfnets_jax.optim import ema as ema_lib
from nfnets_jax.training import losses, mixup
from nfnets_jax.training.state import TrainState

AXIS = "data"

# apply(params, state, rng, images, is_training) -> (outputs dict, new state)
ApplyFn = Callable[..., tuple[Mapping[str, jax.Array], hk.State]]
Batch = Mapping[str, jax.Array]
# teacher_fn(teacher_variables, images) -> logits (a fixed model, no gradient).
TeacherFn = Callable[[Any, jax.Array], jax.Array]

# Folded into the step key for the batch-mixup draw, so the model's own keys (stochastic
# depth, dropout) are the same with and without mixup. ASCII "mix".
_MIXUP_SALT = 0x6D6978


def _split_micro_batches(batch: Batch, num_micro: int) -> Batch:
    """[B, ...] leaves -> [num_micro, B // num_micro, ...] (contiguous slices)."""

    def split(x):
        if x.shape[0] % num_micro:
            raise ValueError(
                f"The per-device batch ({x.shape[0]}) must be divisible by grad_accum_steps "
                f"({num_micro})."
            )
        return x.reshape((num_micro, x.shape[0] // num_micro) + x.shape[1:])

    return jax.tree.map(split, dict(batch))


def _tree_all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def _pmean_floats(tree, axis_name: str):
    """Averages floating leaves over devices so replicated state stays identical."""
    return jax.tree.map(
        lambda x: jax.lax.pmean(x, axis_name) if jnp.issubdtype(x.dtype, jnp.floating) else x,
        tree,
    )


def prepare_batch(
    batch: Batch,
    rng: jax.Array,
    teacher: Any = None,
    *,
    num_classes: int,
    label_smoothing: float = 0.0,
    label_smoothing_form: str = "uniform",
    mixup_alpha: float = 0.0,
    teacher_fn: TeacherFn | None = None,
) -> tuple[dict[str, jax.Array], jax.Array]:
    """Targets, in-step mixup and teacher logits: the parts of a step outside the gradient.

    Order: one-hot labels, mixed with the pipeline's MixUp/CutMix partner when present,
    label-smoothed; then, if `mixup_alpha > 0`, the batch and its targets are mixed with
    their reverse by one `lambda ~ Beta(alpha, alpha)` (key `fold_in(rng, "mix")`); then
    the teacher (if any) sees the final images.

    Args:
      batch: the per-device batch (`images`, `labels`, optional `mix_labels`/`ratio`).
      rng: the step's per-device key.
      teacher: the teacher's variables (with `teacher_fn`).
      num_classes: number of classes K.
      label_smoothing: smoothing `eps`.
      label_smoothing_form: `'uniform'` or `'paper'` (see `losses.make_targets`).
      mixup_alpha: Bag-of-Tricks batch mixup concentration (0 = off).
      teacher_fn: `teacher_fn(teacher, images) -> logits`, or None.

    Returns:
      `(batch, targets)`: the batch with the images the model must see (and
      `teacher_logits`, float32, under `stop_gradient`), and float32 targets `[B, K]`.

    Example:
      >>> batch = {'images': jnp.ones((2, 4, 4, 3)), 'labels': jnp.array([0, 2])}
      >>> _, targets = prepare_batch(batch, jax.random.key(0), num_classes=3,
      ...                            label_smoothing=0.1, label_smoothing_form='paper')
      >>> [[round(float(v), 3) for v in row] for row in targets]
      [[0.9, 0.05, 0.05], [0.05, 0.05, 0.9]]
    """
    targets = losses.make_targets(
        batch["labels"],
        num_classes,
        mix_labels=batch.get("mix_labels"),
        ratio=batch.get("ratio"),
        label_smoothing=label_smoothing,
        label_smoothing_form=label_smoothing_form,
    )
    batch = dict(batch)
    if mixup_alpha > 0:
        mix_rng = jax.random.fold_in(rng, _MIXUP_SALT)
        batch["images"], targets, _ = mixup.batch_mixup(
            mix_rng, batch["images"], targets, mixup_alpha
        )
    if teacher_fn is not None:
        teacher_logits = teacher_fn(teacher, batch["images"]).astype(jnp.float32)
        batch["teacher_logits"] = jax.lax.stop_gradient(teacher_logits)
    return batch, targets


def make_train_step(
    apply_fn: ApplyFn,
    optimizer: optax.GradientTransformation,
    *,
    num_classes: int,
    learning_rate_fn: Callable[[jax.Array], jax.Array],
    label_smoothing: float = 0.0,
    ema_decay: float | None = None,
    grad_accum_steps: int = 1,
    loss_fn: Callable[..., jax.Array] | None = None,
    axis_name: str = AXIS,
    label_smoothing_form: str = "uniform",
    mixup_alpha: float = 0.0,
    teacher_fn: TeacherFn | None = None,
) -> Callable[..., tuple[TrainState, dict[str, jax.Array]]]:
    """Builds the per-device training step `(state, batch[, teacher]) -> (state, metrics)`.

    Args:
      apply_fn: the training model's `apply` (from `hk.transform_with_state`), called as
        `apply_fn(params, state, rng, images, is_training=True)`; it returns a dict with
        `'logits'`. Its compute dtype is the model's business (`compute_dtype`).
      optimizer: the optax chain; it receives the device-averaged float32 gradient.
      num_classes: number of classes for the one-hot targets.
      learning_rate_fn: schedule evaluated at the step *before* the update, for logging
        (the optimizer holds its own copy of the schedule).
      label_smoothing: smoothing applied after mixing (0.1 in the NFNet recipe).
      ema_decay: EMA decay cap (0.99999 for NFNets), or None for no EMA.
      grad_accum_steps: the per-device batch is processed as this many equal
        micro-batches whose gradients are averaged before one optimizer update, which
        is numerically the large-batch update (AGC sees the accumulated gradient).
      loss_fn: optional `loss_fn(logits, targets, batch) -> per-example loss`; defaults to
        softmax cross-entropy. `batch['images']` is what the model saw (mixed when
        `mixup_alpha > 0`) and, with a teacher, `batch['teacher_logits']` holds its logits.
      axis_name: the device axis name used in collectives.
      label_smoothing_form: `'uniform'` (`eps / K` everywhere, NFNet) or `'paper'`
        (`1 - eps` and `eps / (K - 1)`, Bag of Tricks); see `losses.make_targets`.
      mixup_alpha: if > 0, Bag-of-Tricks mixup of every (micro-)batch with its reverse,
        one `lambda ~ Beta(alpha, alpha)` per batch, after label smoothing (see
        `nfnets_jax.training.mixup`).
      teacher_fn: `teacher_fn(teacher, images) -> logits` of a fixed teacher (knowledge
        distillation). The step then takes a third argument, the teacher's variables
        (passed in, never baked into the compiled program, never optimized); its
        float32 logits on the same (mixed) images enter the batch as `teacher_logits`,
        under `stop_gradient`. Combine with a distillation `loss_fn`.

    Returns:
      The step function. Metrics are device-averaged scalars: `loss`, `top_1_acc`,
      `top_5_acc` (against the primary label of mixed examples), `learning_rate`,
      `grad_norm`, `finite` (1.0 if loss and gradient were finite; otherwise the update
      was skipped and the state is returned unchanged) and, when the optimizer has AGC,
      `agc_clip_fraction` and `agc_max_ratio`.
    """
    per_example_loss = loss_fn or (
        lambda logits, targets, batch: losses.softmax_cross_entropy(logits, targets)
    )

    prepare = functools.partial(
        prepare_batch,
        num_classes=num_classes,
        label_smoothing=label_smoothing,
        label_smoothing_form=label_smoothing_form,
        mixup_alpha=mixup_alpha,
        teacher_fn=teacher_fn,
    )

    def micro_loss(params, model_state, batch, targets, rng):
        outputs, new_model_state = apply_fn(params, model_state, rng, batch["images"], True)
        logits = outputs["logits"].astype(jnp.float32)
        loss = jnp.mean(per_example_loss(logits, targets, batch))
        metrics = {
            "loss": loss,
            "top_1_acc": jnp.mean(losses.topk_correct(logits, batch["labels"], 1)),
            "top_5_acc": jnp.mean(
                losses.topk_correct(logits, batch["labels"], min(5, num_classes))
            ),
        }
        return loss, (new_model_state, metrics)

    _grad_fn = jax.grad(micro_loss, has_aux=True)

    def grad_fn(params, model_state, batch, rng, teacher):
        batch, targets = prepare(batch, rng, teacher)
        return _grad_fn(params, model_state, batch, targets, rng)

    def compute_grads(params, model_state, batch, rng, teacher):
        if grad_accum_steps == 1:
            return grad_fn(params, model_state, batch, rng, teacher)
        micro = _split_micro_batches(batch, grad_accum_steps)

        def body(carry, inputs):
            grad_sum, metric_sum, state = carry
            index, micro_batch = inputs
            grads, (state, metrics) = grad_fn(
                params, state, micro_batch, jax.random.fold_in(rng, index), teacher
            )
            grad_sum = jax.tree.map(jnp.add, grad_sum, grads)
            metric_sum = jax.tree.map(jnp.add, metric_sum, metrics)
            return (grad_sum, metric_sum, state), None

        zeros = jax.tree.map(jnp.zeros_like, params)
        metric_zeros = {k: jnp.zeros((), jnp.float32) for k in ("loss", "top_1_acc", "top_5_acc")}
        (grad_sum, metric_sum, model_state), _ = jax.lax.scan(
            body,
            (zeros, metric_zeros, model_state),
            (jnp.arange(grad_accum_steps), micro),
        )
        scale = 1.0 / grad_accum_steps
        return jax.tree.map(lambda g: g * scale, grad_sum), (
            model_state,
            jax.tree.map(lambda m: m * scale, metric_sum),
        )

    def train_step(state: TrainState, batch: Batch, teacher: Any = None):
        if (teacher is None) != (teacher_fn is None):
            raise ValueError(
                "make_train_step: pass the teacher's variables to the step exactly when the "
                "step was built with teacher_fn."
            )
        device_index = jax.lax.axis_index(axis_name)
        rng = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), device_index)
        grads, (new_model_state, metrics) = compute_grads(
            state.params, state.model_state, batch, rng, teacher
        )
        # float32 before the cross-device mean (bf16 sums lose precision: spec section 5).
        grads = jax.tree.map(lambda g: g.astype(jnp.float32), grads)
        grads = jax.lax.pmean(grads, axis_name)
        metrics = jax.lax.pmean(metrics, axis_name)
        new_model_state = _pmean_floats(new_model_state, axis_name)
        finite = jnp.isfinite(metrics["loss"]) & _tree_all_finite(grads)

        def apply_update(_):
            updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
            ema_params, ema_state = state.ema_params, state.ema_state
            if ema_decay is not None:
                ema_params = ema_lib.ema_update(ema_params, params, state.step, ema_decay)
                ema_state = ema_lib.ema_update(ema_state, new_model_state, state.step, ema_decay)
            return state._replace(
                step=state.step + 1,
                params=params,
                model_state=new_model_state,
                opt_state=opt_state,
                ema_params=ema_params,
                ema_state=ema_state,
            )

        # A non-finite loss or gradient leaves the state untouched: the loop stops the
        # run, and nothing that could be checkpointed is poisoned.
        new_state = jax.lax.cond(finite, apply_update, lambda _: state, None)
        metrics = dict(metrics)
        metrics["learning_rate"] = jnp.asarray(learning_rate_fn(state.step), jnp.float32)
        metrics["grad_norm"] = optax.tree.norm(grads)
        metrics["finite"] = finite.astype(jnp.float32)
        for key, name in (("clip_fraction", "agc_clip_fraction"), ("max_ratio", "agc_max_ratio")):
            value = optax.tree_utils.tree_get(new_state.opt_state, key, default=None)
            if value is not None:
                metrics[name] = jnp.asarray(value, jnp.float32)
        return new_state, metrics

    return train_step


def make_eval_step(
    apply_fn: ApplyFn,
    *,
    num_classes: int,
    axis_name: str = AXIS,
) -> Callable[[Any, Any, Batch], dict[str, jax.Array]]:
    """Builds the per-device eval step `(params, model_state, batch) -> summed metrics`.

    The model runs with `is_training=False` (no dropout, no stochastic depth, running
    BatchNorm statistics). Padded examples (`batch['mask'] == 0`) count for nothing, so
    an eval pass covers a split exactly once whatever the batch size and device count.

    Returns:
      Sums over every device's examples: `loss`, `top_1`, `top_5` and `count`; divide by
      `count` on the host after summing over batches.
    """

    def eval_step(params, model_state, batch):
        outputs, _ = apply_fn(params, model_state, None, batch["images"], False)
        logits = outputs["logits"].astype(jnp.float32)
        labels = batch["labels"]
        mask = batch["mask"].astype(jnp.float32) if "mask" in batch else jnp.ones(labels.shape)
        targets = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
        sums = {
            "loss": jnp.sum(losses.softmax_cross_entropy(logits, targets) * mask),
            "top_1": jnp.sum(losses.topk_correct(logits, labels, 1) * mask),
            "top_5": jnp.sum(losses.topk_correct(logits, labels, min(5, num_classes)) * mask),
            "count": jnp.sum(mask),
        }
        return jax.lax.psum(sums, axis_name)

    return eval_step
