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

from nfnets_jax import checkpoints, data
from nfnets_jax.errors import ConfigError
from nfnets_jax.training import config as config_lib
from nfnets_jax.training import inputs, parallel, startup, step

__all__ = ["evaluate_checkpoint", "evaluate_params", "evaluate_split"]


def evaluate_split(
    config: ml_collections.ConfigDict,
    mapper: parallel.DeviceMapper,
    eval_fn: Any,
    params: Any,
    model_state: Any,
    *,
    source: Any = None,
) -> dict[str, float]:
    """Top-1/top-5/loss of (device-layout) ``params`` over the whole eval split.

    Every example is counted once (padding is masked out); ``eval_fn`` is the mapped
    ``step.make_eval_step``. The input thread and iterator are closed before it returns.

    Args:
        config: the config (``dataset.*``, ``eval_batch_size``).
        mapper: the device mapping.
        eval_fn: the mapped evaluation step.
        params: parameters in the device layout.
        model_state: Haiku state in the device layout.
        source: the dataset's resolved ``data.Source`` (default: from the config).

    Returns:
        ``loss``, ``top_1_acc``, ``top_5_acc`` and ``num_examples``.
    """
    totals = None
    batches = inputs.eval_iterator(config, mapper, source=source)
    with data.prefetch_to_device(batches, size=2, sharding=mapper.batch_sharding) as batches:
        for batch in batches:
            sums = eval_fn(params, model_state, batch)
            totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    if totals is None:
        raise ConfigError(f"The eval split of {config.dataset.name!r} yielded no batches.")
    totals = jax.device_get(totals)
    count = float(totals["count"])
    return {
        "loss": float(totals["loss"]) / count,
        "top_1_acc": float(totals["top_1"]) / count,
        "top_5_acc": float(totals["top_5"]) / count,
        "num_examples": count,
    }


def evaluate_params(
    config: ml_collections.ConfigDict,
    params: Any,
    model_state: Any,
    num_classes: int,
    *,
    mapper: parallel.DeviceMapper | None = None,
    source: Any = None,
) -> dict[str, float]:
    """Top-1/top-5/loss of host ``params`` over the config's whole evaluation split.

    Args:
        config: experiment config (model, ``dataset.*``, ``eval_batch_size``, parallelism).
        params: host (numpy) parameters of the config's model.
        model_state: its Haiku state (``{}`` for NF models).
        num_classes: the classifier's outputs.
        mapper: device mapping (default: ``config.parallelism`` over every device).
        source: the dataset's resolved ``data.Source`` (default: from the config).

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
    results = evaluate_split(config, mapper, eval_fn, device_params, device_state, source=source)
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
        nfnets_jax.checkpoints.CheckpointNotFoundError: no such checkpoint.
        nfnets_jax.checkpoints.CheckpointMismatchError: the checkpoint does not fit the
            config's model (every difference listed; a classifier of another size is
            named as such).

    Example:
        >>> from experiments import configs
        >>> evaluate_checkpoint(configs.load_config('nfnet_f0'), 'F0_haiku.npz')  # doctest: +SKIP
        {'top_1_acc': ..., 'top_5_acc': ..., ...}
    """
    mapper = mapper or parallel.DeviceMapper(config.parallelism)
    checked = config_lib.validate_eval_config(config, num_devices=mapper.num_devices)
    info = checked.info
    num_classes = config.dataset.num_classes or info.num_classes
    eval_model = startup.build_model(config, num_classes, training=False)
    image = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    expected_params, expected_state = jax.eval_shape(
        lambda key, x: eval_model.init(key, x, is_training=False), jax.random.key(0), image
    )
    loaded = checkpoints.load_checkpoint(source, use_ema=use_ema)
    fitted = checkpoints.fit_checkpoint(
        loaded,
        expected_params,
        expected_state,
        target=f"the config's {config.model} for dataset {config.dataset.name!r}",
        hint=(
            "Evaluate it on a dataset with its number of classes (--config.dataset.name=..., "
            "e.g. imagenet2012 for DeepMind's weights), or fine-tune it first "
            "(--config.init_from=...)."
        ),
    )
    results: dict[str, Any] = evaluate_params(
        config, fitted.params, fitted.state, num_classes, mapper=mapper, source=checked.source
    )
    results.update(
        checkpoint=loaded.description,
        dataset=config.dataset.name,
        split=config.dataset.eval_split or info.eval_split,
        image_size=config.dataset.eval_image_size,
        eval_preproc=config.dataset.eval_preproc,
    )
    return results
