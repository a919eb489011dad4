"""Knowledge-distillation teachers: any model of the project, loaded from a checkpoint.

A teacher is a fixed model whose logits on the training step's (possibly mixed) images
enter the distillation loss (`losses.distillation_loss`). It comes from either

* a run directory of this project (`train_and_evaluate`'s `workdir`): the model and its
  options are read from the run's `config.json`, the (EMA by default) parameters and
  Haiku state (BatchNorm statistics) from its newest checkpoint; or
* a weights file (a DeepMind pickle, an exported pickle or `.npz`): the model is the
  one its export sidecar records, or the one named by `distill.teacher_model` and
  `distill.teacher_model_kwargs`. Models with Haiku state (BatchNorm) need their
  running statistics in the same file:
  `nfnets_jax.checkpoints.save_model_variables` writes parameters and state together.

Either way the checkpoint is read by `nfnets_jax.checkpoints.load_checkpoint` and fitted
to the teacher model by `nfnets_jax.checkpoints.fit_checkpoint`, as every other
consumer of weights does.

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
from collections.abc import Mapping
from typing import Any

import haiku as hk
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from nfnets_jax import checkpoints, models
from nfnets_jax.training.config import ConfigError

__all__ = ["Teacher", "load_teacher"]


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
      ConfigError: no model named for a bare weights file, or bad model options.
      CheckpointNotFoundError: nothing at `distill.teacher_checkpoint`.
      CheckpointMismatchError: the checkpoint does not fit the teacher model (classes,
        shapes, missing BatchNorm statistics: every difference listed).
    """
    distill = config.distill
    path = distill.teacher_checkpoint
    loaded = checkpoints.load_checkpoint(path, use_ema=distill.teacher_use_ema)
    if distill.teacher_model:
        name, kwargs = distill.teacher_model, _parse_kwargs(distill.teacher_model_kwargs)
    elif loaded.spec is not None:
        name, kwargs = loaded.spec.model, dict(loaded.spec.model_kwargs)
    else:
        raise ConfigError(
            f"distill.teacher_checkpoint={path!r} is a weights file that does not say which "
            "model it holds: set distill.teacher_model (and distill.teacher_model_kwargs)."
        )
    compute_dtype = jnp.bfloat16 if config.bfloat16 else None
    try:
        model = models.transform_model(name, num_classes, kwargs, compute_dtype=compute_dtype)
        size = config.dataset.image_size
        sample = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
        expected_params, expected_state = jax.eval_shape(
            functools.partial(model.init, is_training=True), jax.random.PRNGKey(0), sample
        )
    except (ValueError, TypeError) as error:
        raise ConfigError(f"Invalid distillation teacher {name!r}: {error}") from None
    fitted = checkpoints.fit_checkpoint(
        loaded,
        expected_params,
        expected_state,
        target=f"the distillation teacher ({name}, {num_classes} classes)",
    )
    to_host = lambda tree: jax.tree.map(np.asarray, tree)
    return Teacher(model, to_host(fitted.params), to_host(fitted.state), loaded.description)
