"""Knowledge-distillation teachers: any model of the project, loaded from a checkpoint.

A teacher is a fixed model whose logits on the training step's (possibly mixed) images
enter the distillation loss (`losses.distillation_loss`). It comes from either

* a run directory of this project (`train_and_evaluate`'s `workdir`): the model and its
  options are read from the run's `config.json`, the (EMA by default) parameters and
  Haiku state (BatchNorm statistics) from its newest checkpoint; or
* a weights file read by `nfnets_jax.weights.load_params` (a DeepMind pickle, an
  exported pickle or `.npz`), with the model named by `distill.teacher_model` and
  `distill.teacher_model_kwargs`. Models with Haiku state (BatchNorm) need their
  running statistics in the same file: :func:`save_model_variables` writes parameters
  and state together, module by module.

The teacher's variables are passed to the training step as an argument (in the device
layout), so they are neither compiled into the program as constants nor part of the
checkpointed `TrainState` or its optimizer.

References:
    Hinton, Vinyals, Dean. Distilling the Knowledge in a Neural Network.
    arXiv:1503.02531.
    He et al. Bag of Tricks for Image Classification with CNNs. arXiv:1812.01187, 5.3.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import json
import os
from collections.abc import Mapping
from typing import Any

import haiku as hk
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from nfnets_jax import weights
from nfnets_jax.training.config import ConfigError, config_from_json

__all__ = ["Teacher", "load_teacher", "save_model_variables", "split_variables"]


@dataclasses.dataclass(frozen=True)
class Teacher:
    """A fixed model and its variables.

    Attributes:
      model: `hk.transform_with_state` of the teacher (its compute dtype follows the
        student's `bfloat16` setting).
      params: the teacher's parameters (host numpy arrays).
      state: its Haiku state (BatchNorm running statistics; empty for NF models).
      description: where it came from, for logs.
    """

    model: hk.TransformedWithState
    params: hk.Params
    state: hk.State
    description: str

    @property
    def variables(self) -> tuple[hk.Params, hk.State]:
        """`(params, state)`: the tree the training step receives."""
        return self.params, self.state

    def logits(self, variables: tuple[hk.Params, hk.State], images: jax.Array) -> jax.Array:
        """Evaluation-mode logits (running BatchNorm statistics, no dropout), float32."""
        params, state = variables
        outputs, _ = self.model.apply(params, state, None, images, False)
        return outputs["logits"].astype(jnp.float32)


def save_model_variables(
    params: hk.Params, state: hk.State, path: str | os.PathLike, format: str = "npz"
) -> None:
    """Writes parameters and Haiku state together, e.g. a BatchNorm teacher.

    The file is `nfnets_jax.weights.save_params`' format with each module's state
    entries (`mean`, `var`, ...) next to its parameters; :func:`split_variables` (and
    `distill.teacher_checkpoint`) separates them again.

    Example:
      >>> import tempfile
      >>> out = tempfile.TemporaryDirectory()
      >>> path = os.path.join(out.name, 'teacher.npz')
      >>> save_model_variables({'m': {'w': np.ones(2)}}, {'m': {'mean': np.zeros(2)}}, path)
      >>> sorted(weights.load_params(path)['m'])
      ['mean', 'w']
      >>> out.cleanup()
    """
    merged: dict[str, dict[str, Any]] = {m: dict(v) for m, v in params.items()}
    for module, entries in state.items():
        target = merged.setdefault(module, {})
        clash = sorted(set(target) & set(entries))
        if clash:
            raise ValueError(
                f"Module {module!r} has parameters and state both named {clash}; they cannot "
                "share one file."
            )
        target.update(entries)
    weights.save_params(merged, path, format=format)


def split_variables(
    loaded: Mapping[str, Mapping[str, Any]],
    expected_params: hk.Params,
    expected_state: hk.State,
    source: str = "checkpoint",
) -> tuple[hk.Params, hk.State]:
    """Splits a loaded `{module: {name: array}}` tree into validated params and state.

    Args:
      loaded: e.g. `weights.load_params(path)`.
      expected_params: the model's (abstract) parameter tree.
      expected_state: the model's (abstract) state tree.
      source: the file, for messages.

    Returns:
      `(params, state)` as numpy trees with the expected shapes and dtypes.

    Raises:
      weights.CheckpointMismatchError: missing, unexpected or mis-shaped entries.
      ConfigError: the model has state (BatchNorm) that the file does not hold.
    """
    flat = weights.flatten_params(loaded)
    state_keys = set(weights.flatten_params(expected_state))
    state_part = {k: v for k, v in flat.items() if k in state_keys}
    params_part = {k: v for k, v in flat.items() if k not in state_keys}
    if state_keys and not state_part:
        raise ConfigError(
            f"{source} holds parameters only, but the teacher model keeps state "
            f"({len(state_keys)} entries, e.g. {sorted(state_keys)[0]!r}: BatchNorm running "
            "statistics). Export the teacher with "
            "nfnets_jax.training.distill.save_model_variables(params, state, path), or point "
            "distill.teacher_checkpoint at its run directory."
        )
    params = weights.validate_and_merge(weights.unflatten_params(params_part), expected_params)
    state = (
        weights.validate_and_merge(weights.unflatten_params(state_part), expected_state).params
        if state_keys
        else {}
    )
    return params.params, state


def _parse_kwargs(value: Any) -> dict[str, Any]:
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise ConfigError(
                f"distill.teacher_model_kwargs={value!r} is not a Python dict literal, e.g. "
                "\"{'depth': 152, 'version': 'v1d'}\"."
            ) from None
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    if not isinstance(value, Mapping):
        raise ConfigError(f"distill.teacher_model_kwargs must be a dict, got {value!r}.")
    return dict(value)


def _read_run_config(run_dir: str) -> ml_collections.ConfigDict:
    path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(path):
        raise ConfigError(
            f"distill.teacher_checkpoint={run_dir!r} is a directory without config.json; "
            "point it at a run directory of this project or at a weights file."
        )
    with open(path, encoding="utf-8") as f:
        return config_from_json(json.load(f))


def load_teacher(config: ml_collections.ConfigDict, num_classes: int) -> Teacher:
    """Builds the teacher of a training config (`config.distill.*`).

    Args:
      config: the student's experiment config; reads `distill.teacher_checkpoint`,
        `distill.teacher_model`, `distill.teacher_model_kwargs`, `distill.teacher_use_ema`,
        `dataset.image_size` and `bfloat16`.
      num_classes: the student's number of classes, which the teacher must predict.

    Returns:
      The :class:`Teacher`, variables on the host.

    Raises:
      ConfigError: missing checkpoint, unknown model, missing state, class mismatch.
      weights.CheckpointMismatchError: the file does not match the teacher model.
    """
    from nfnets_jax.training import loop, startup  # lazy: startup imports this module

    distill = config.distill
    path = distill.teacher_checkpoint
    if not os.path.exists(path):
        raise ConfigError(f"distill.teacher_checkpoint={path!r} does not exist.")
    teacher_config = ml_collections.ConfigDict(
        dict(model=distill.teacher_model, model_kwargs=_parse_kwargs(distill.teacher_model_kwargs))
    )
    if os.path.isdir(path):
        run_config = _read_run_config(path)
        if not distill.teacher_model:
            teacher_config.model = run_config.model
            teacher_config.model_kwargs = run_config.model_kwargs
        params, state = loop.restore_params(path, run_config, use_ema=distill.teacher_use_ema)
        ema = " (EMA)" if distill.teacher_use_ema and run_config.use_ema else ""
        description = f"run {path}{ema}"
    else:
        if not distill.teacher_model:
            raise ConfigError(
                f"distill.teacher_checkpoint={path!r} is a weights file: also set "
                "distill.teacher_model (and distill.teacher_model_kwargs) to say which model "
                "it holds."
            )
        params = state = None
        description = f"weights {path}"
    teacher_config.bfloat16 = bool(config.bfloat16)
    try:
        model = startup.build_model(teacher_config, num_classes, training=True)
    except (ValueError, TypeError) as error:
        raise ConfigError(
            f"Invalid distillation teacher {teacher_config.model!r}: {error}"
        ) from None
    size = config.dataset.image_size
    sample = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    init = functools.partial(model.init, is_training=True)
    expected_params, expected_state = jax.eval_shape(init, jax.random.PRNGKey(0), sample)
    if params is None:
        params, state = split_variables(
            weights.load_params(path), expected_params, expected_state, source=path
        )
    else:
        params = weights.validate_and_merge(params, expected_params).params
        state = weights.validate_and_merge(state, expected_state).params if state else {}
    logits = jax.eval_shape(
        lambda p, s, x: model.apply(p, s, None, x, False)[0]["logits"], params, state, sample
    )
    if logits.shape[-1] != num_classes:
        raise ConfigError(
            f"The teacher predicts {logits.shape[-1]} classes, the student {num_classes}."
        )
    to_host = lambda tree: jax.tree.map(np.asarray, tree)
    return Teacher(model, to_host(params), to_host(state), description)
