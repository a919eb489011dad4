"""Evaluate any checkpoint on a dataset's evaluation split, as the training loop does.

The checkpoint (DeepMind's released file, an exported file or a run directory) is checked
against the config's model, then every example of the split is evaluated exactly once
with the config's evaluation preprocessing (for NFNets ``resize_crop_32`` at the
variant's test size, spec section 6.4) by the training loop's own float32 eval step,
mapped over all devices by :class:`~nfnets_jax.training.parallel.DeviceMapper`.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from nfnets_jax import checkpoint_sources, model_spec, weights
from nfnets_jax.training import config as config_lib
from nfnets_jax.training import loop, parallel, startup, step

__all__ = ["evaluate_checkpoint", "evaluate_params"]


def _classes_or_none(params) -> int | None:
    try:
        return model_spec.head_classes(params)
    except model_spec.UnrecognizedCheckpointError:
        return None


def evaluate_params(
    config: ml_collections.ConfigDict,
    params: Any,
    model_state: Any,
    num_classes: int,
    *,
    mapper: parallel.DeviceMapper | None = None,
) -> dict[str, float]:
    """Top-1/top-5/loss of host ``params`` over the config's whole evaluation split.

    Args:
        config: experiment config (model, ``dataset.*``, ``eval_batch_size``, parallelism).
        params: host (numpy) parameters of the config's model.
        model_state: its Haiku state (``{}`` for NF models).
        num_classes: the classifier's outputs.
        mapper: device mapping (default: ``config.parallelism`` over every device).

    Returns:
        ``top_1_acc``, ``top_5_acc``, ``loss``, ``num_examples``, ``seconds`` and
        ``images_per_sec``.
    """
    mapper = mapper or parallel.DeviceMapper(config.parallelism)
    eval_model = startup.build_model(config, num_classes, training=False)
    eval_fn = mapper.map_eval_step(step.make_eval_step(eval_model.apply, num_classes=num_classes))
    device_params = mapper.to_device_state(mapper.replicate(params))
    device_state = mapper.to_device_state(mapper.replicate(model_state))
    start = time.time()
    results = loop.evaluate(config, mapper, eval_fn, device_params, device_state)
    seconds = time.time() - start
    count = results["num_examples"]
    return {
        **results,
        "seconds": seconds,
        "images_per_sec": count / seconds if seconds > 0 else float("nan"),
    }


def evaluate_checkpoint(
    config: ml_collections.ConfigDict,
    source: str,
    *,
    use_ema: bool = True,
    mapper: parallel.DeviceMapper | None = None,
) -> dict[str, Any]:
    """Evaluates a checkpoint with the config's model on the config's evaluation split.

    Args:
        config: experiment config; ``--config.*`` overrides select the dataset
            (``dataset.name``, ``dataset.eval_split``, ``dataset.data_dir``), resolution
            (``dataset.eval_image_size``), preprocessing and ``eval_batch_size``.
        source: DeepMind's ``{V}_haiku.npz``, an exported file, or a run directory.
        use_ema: for run directories, evaluate the EMA parameters when there are some.
        mapper: device mapping (default: ``config.parallelism`` over every device).

    Returns:
        The metrics of :func:`evaluate_params` plus ``checkpoint`` (a description),
        ``dataset``, ``split``, ``image_size`` and ``eval_preproc``.

    Raises:
        ConfigError: an unusable config or dataset (before any checkpoint is read).
        nfnets_jax.checkpoint_sources.CheckpointNotFoundError: no such checkpoint.
        nfnets_jax.weights.CheckpointMismatchError: the checkpoint does not fit the
            config's model (every difference listed).

    Example:
        >>> from experiments import configs
        >>> evaluate_checkpoint(configs.load_config('nfnet_f0'), 'F0_haiku.npz')  # doctest: +SKIP
        {'top_1_acc': ..., 'top_5_acc': ..., ...}
    """
    mapper = mapper or parallel.DeviceMapper(config.parallelism)
    info = config_lib.validate_eval_config(config, num_devices=mapper.num_devices)
    num_classes = config.dataset.num_classes or info.num_classes
    eval_model = startup.build_model(config, num_classes, training=False)
    image = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    expected_params, expected_state = jax.eval_shape(
        lambda key, x: eval_model.init(key, x, is_training=False), jax.random.key(0), image
    )
    loaded = checkpoint_sources.load_checkpoint(source, use_ema=use_ema)
    try:
        params, _ = weights.validate_and_merge(loaded.params, expected_params)
    except weights.CheckpointMismatchError as error:
        classes = _classes_or_none(loaded.params)
        if classes is not None and classes != num_classes:
            raise weights.CheckpointMismatchError(
                f"{loaded.description} classifies {classes} classes but the config's "
                f"dataset {config.dataset.name!r} has {num_classes}: evaluate it on a "
                f"dataset with {classes} classes (--config.dataset.name=..., e.g. "
                "imagenet2012 for DeepMind's weights), or fine-tune it first "
                f"(--config.init_from=...).\n{error}"
            ) from None
        raise weights.CheckpointMismatchError(
            f"{loaded.description} does not fit the config's model ({config.model} "
            f"{dict(config.model_kwargs)} with {num_classes} classes for "
            f"{config.dataset.name!r}).\n{error}"
        ) from None
    model_state = loaded.model_state
    if model_state is None:
        if jax.tree.leaves(expected_state):
            raise weights.CheckpointMismatchError(
                f"{config.model} keeps state (e.g. BatchNorm statistics) that a parameter "
                "file does not hold: evaluate the training run directory instead."
            )
        model_state = {}
    results: dict[str, Any] = evaluate_params(
        config, params, model_state, num_classes, mapper=mapper
    )
    results.update(
        checkpoint=loaded.description,
        dataset=config.dataset.name,
        split=config.dataset.eval_split or info.eval_split,
        image_size=config.dataset.eval_image_size,
        eval_preproc=config.dataset.eval_preproc,
    )
    return results
