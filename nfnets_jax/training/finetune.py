"""Fine-tuning: start a run from released or trained weights (``config.init_from``).

When a run starts with no checkpoint in its workdir and ``config.init_from`` names a
checkpoint (DeepMind's ``{V}_haiku.npz``, a file from ``experiments.export``, or another
run's directory), the freshly initialised state takes its parameters from that checkpoint:

* every parameter but the classifier must be present with the model's shape, otherwise
  ONE error lists every missing, unexpected and mis-shaped parameter;
* the classifier (``<Top>/~/linear/w`` and ``/b``) is kept when its shape matches and
  otherwise keeps the model's own fresh initialisation (N(0, 0.01) weights, zero bias:
  the state's head, drawn from ``config.seed``), so the number of classes may differ;
* a timm file (``.safetensors``, ``.pth``) was computed with timm's numerics, so the run's
  model is built with ``numerics='timm'`` (:func:`resolve_init_from_numerics`) unless
  the config names ``model_kwargs.numerics`` (``--config.model_kwargs.numerics=deepmind``
  trains DeepMind's numerics from timm's weights);
* the EMA starts equal to the loaded parameters, the optimizer state is re-initialised
  for them and the step is 0. From a run directory the EMA parameters are loaded when
  the run kept them (they evaluate better); export with ``--no-ema`` for the raw ones.
"""

from __future__ import annotations

import inspect
from typing import Any

import jax
import ml_collections
import optax

from nfnets_jax import checkpoints, models
from nfnets_jax.errors import NFNetsError
from nfnets_jax.training import parallel, writers
from nfnets_jax.training.checkpoint import CheckpointError
from nfnets_jax.training.state import TrainState

__all__ = [
    "InitFromError",
    "fit_init_from",
    "init_state_from_checkpoint",
    "resolve_init_from_numerics",
]


class InitFromError(CheckpointError):
    """``init_from`` cannot be used: missing, unreadable or not fitting the model."""


def resolve_init_from_numerics(config: ml_collections.ConfigDict) -> bool:
    """Sets ``model_kwargs.numerics='timm'`` when fine-tuning a timm file (in place).

    A timm file's weights were trained (and are evaluated by timm) with timm's numerics
    (:data:`nfnets_jax.models.nfnet.NUMERICS`), so the fine-tuned model keeps them, as
    the ``config.json`` of the run records. Nothing changes when ``init_from`` is no timm
    file, the model has no ``numerics`` option, or the config already names one. Reads
    the path only, not the file: the same flags give the same config on resume.

    Returns:
        Whether the config was changed.

    Example:
        >>> from experiments import configs
        >>> config = configs.load_config('nfnet_f0')
        >>> config.init_from = 'dm_nfnet_f0.safetensors'
        >>> resolve_init_from_numerics(config), config.model_kwargs.numerics
        (True, 'timm')
    """
    if not config.get("init_from") or not checkpoints.is_timm_file(config.init_from):
        return False
    if "numerics" in config.model_kwargs:
        return False
    try:
        parameters = inspect.signature(models.get_model(config.model)).parameters
    except (ValueError, TypeError, KeyError):
        return False
    if "numerics" not in parameters:
        return False
    with config.unlocked():
        config.model_kwargs.numerics = "timm"
    return True


def fit_init_from(
    loaded: checkpoints.LoadedCheckpoint,
    params: Any,
    model_state: Any,
    *,
    check_only: bool = False,
) -> checkpoints.FittedVariables:
    """Fits an ``init_from`` checkpoint to the trained model (head re-initialised).

    Args:
        loaded: the checkpoint read.
        params: the model's parameters (fresh ones, or ``jax.eval_shape``'s with
            ``check_only``, as start-up validation does).
        model_state: the model's Haiku state; kept fresh when the checkpoint has none.
        check_only: only check, copying nothing.

    Raises:
        InitFromError: the checkpoint does not fit (every difference listed).
    """
    try:
        return checkpoints.fit_checkpoint(
            loaded,
            params,
            model_state,
            target="the model being trained",
            replace_head=True,
            state_required=False,
            check_only=check_only,
        )
    except checkpoints.CheckpointMismatchError as error:
        raise InitFromError(f"init_from={loaded.source!r}: {error}") from None


def init_state_from_checkpoint(
    state: TrainState,
    source: str | checkpoints.LoadedCheckpoint,
    *,
    optimizer: optax.GradientTransformation | None = None,
    mapper: parallel.DeviceMapper | None = None,
    use_ema: bool = True,
) -> TrainState:
    """Replaces the parameters of a fresh state by a checkpoint's, for fine-tuning.

    Args:
        state: the freshly initialised state (step 0), canonical layout (replicated).
        source: a parameter file or a run directory (``config.init_from``), or what
            :func:`~nfnets_jax.checkpoints.load_checkpoint` read from one (the
            run's start-up validation reads it once and passes it here).
        optimizer: the run's optimizer, to initialise its state for the loaded
            parameters (without it the given, fresh optimizer state is kept).
        mapper: the run's device mapper (where the state lives); default: the state is
            placed with ``jax.device_put``.
        use_ema: from run directories, load the EMA parameters when there are some.

    Returns:
        The state with loaded parameters (head re-initialised when its shape differs),
        EMA equal to them, fresh optimizer state, step 0.

    Raises:
        InitFromError: ``source`` is missing or unreadable, or its parameters do not fit
            the model apart from the head (the message lists every difference).

    Example:
        >>> state = init_state_from_checkpoint(  # doctest: +SKIP
        ...     state, 'F0_haiku.npz', optimizer=tx, mapper=mapper)
    """
    if isinstance(source, checkpoints.LoadedCheckpoint):
        loaded = source
    else:
        try:
            loaded = checkpoints.load_checkpoint(source, use_ema=use_ema)
        except NFNetsError as error:
            raise InitFromError(f"init_from={source!r}: {error}") from None
    fitted = fit_init_from(
        loaded, parallel.host_copy(state.params), parallel.host_copy(state.model_state)
    )
    place = mapper.replicate if mapper is not None else jax.device_put
    params = place(fitted.params)
    model_state = state.model_state if fitted.state is None else place(fitted.state)
    if optimizer is not None:
        shardings = jax.tree.map(lambda x: x.sharding, state.opt_state)
        opt_state = jax.jit(optimizer.init, out_shardings=shardings)(params)
    else:
        opt_state = state.opt_state
    replaced = fitted.replaced
    num_loaded = sum(len(sub) for sub in fitted.params.values()) - len(replaced)
    head = (
        f"; the classifier ({', '.join(replaced)}) is new: the checkpoint has another number "
        "of classes"
        if replaced
        else ""
    )
    writers.log_line(
        f"Initialised from {loaded.description}: {num_loaded} parameters loaded{head}."
    )
    return state._replace(
        params=params,
        model_state=model_state,
        opt_state=opt_state,
        ema_params=params if state.ema_params is not None else None,
        ema_state=model_state if state.ema_state is not None else None,
    )
