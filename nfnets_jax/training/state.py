"""The training state: one immutable pytree carried through pure step functions."""

from __future__ import annotations

from typing import Any, NamedTuple

import haiku as hk
import jax
import jax.numpy as jnp
import optax


class TrainState(NamedTuple):
    """Everything a training run needs to continue exactly where it stopped.

    Attributes:
      step: number of optimizer updates applied so far (int32 scalar). It is also the
        data position: the next batch to train on is batch `step` of the stream.
      params: model parameters (float32 master copy).
      model_state: Haiku state (BatchNorm statistics; empty for NF models).
      opt_state: optax state of the whole optimizer chain.
      ema_params: exponential moving average of `params`, or None without EMA.
      ema_state: exponential moving average of `model_state`, or None without EMA.
      rng: base PRNG key; the key of step `t` is `fold_in(rng, t)`, so randomness does
        not depend on how many steps a process has run since it (re)started.
    """

    step: jax.Array
    params: hk.Params
    model_state: hk.State
    opt_state: optax.OptState
    ema_params: hk.Params | None
    ema_state: hk.State | None
    rng: jax.Array


def create_train_state(
    init_fn: Any,
    optimizer: optax.GradientTransformation,
    rng: jax.Array,
    sample_images: jax.Array,
    *,
    use_ema: bool,
) -> TrainState:
    """Initialises parameters, optimizer and EMA from a key (a pure function, jittable).

    Args:
      init_fn: the `init` of `hk.transform_with_state(model_fn)`, called as
        `init_fn(rng, images, is_training=True)`.
      optimizer: the optax transformation the run trains with.
      rng: the run's root key; parameters use `fold_in(rng, 0)` and the per-step keys
        derive from `fold_in(rng, 1)`.
      sample_images: a batch with the training image shape (values unused).
      use_ema: whether to keep EMA copies of params and state.

    Returns:
      The state at step 0, with the EMA equal to the initial parameters.
    """
    init_rng, step_rng = jax.random.fold_in(rng, 0), jax.random.fold_in(rng, 1)
    params, model_state = init_fn(init_rng, sample_images, is_training=True)
    opt_state = optimizer.init(params)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        model_state=model_state,
        opt_state=opt_state,
        ema_params=params if use_ema else None,
        ema_state=model_state if use_ema else None,
        rng=step_rng,
    )
