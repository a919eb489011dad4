"""A run's input streams, built from its config and what start-up validation resolved.

Both take the dataset's `Source` that `config.validate_config` resolved (and, for
training, the parsed augmentation), so the metadata is read and an image folder scanned
once per run, not once per iterator.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections

from nfnets_jax import data
from nfnets_jax.training import parallel

__all__ = ["eval_iterator", "train_iterator"]


def train_iterator(
    config: ml_collections.ConfigDict,
    plan: Any,
    mapper: parallel.DeviceMapper,
    start_step: int = 0,
    *,
    source: Any = None,
    augment: Any = None,
) -> data.TrainIterator:
    """This process's stream of training batches, starting at batch `start_step`.

    Args:
      config: the run's config. `config.dataset.seed` must be resolved (set;
        `train_and_evaluate` draws and records one when it is unset), so the stream is
        reproducible and a resume continues it exactly.
      plan: the run's `startup.RunPlan` (per-device batch).
      mapper: the device mapping (local devices, batch layout).
      start_step: the first batch to yield.
      source: the dataset's resolved `data.Source` (default: resolved from the config).
      augment: the parsed augmentation (default: parsed from the config).
    """
    dataset = config.dataset
    return data.train_iterator(
        dataset.name if source is None else source,
        split=dataset.train_split or None,
        data_dir=dataset.data_dir,
        local_device_count=mapper.num_local_devices,
        per_device_batch=plan.per_device_batch,
        image_size=dataset.image_size,
        train_preproc=dataset.train_preproc,
        augment_name=(dataset.augment_name or None) if augment is None else augment,
        augment_before_mix=dataset.augment_before_mix,
        seed=dataset.seed,
        start_step=start_step,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        flatten_devices=mapper.flatten_batches,
    )


def eval_iterator(
    config: ml_collections.ConfigDict, mapper: parallel.DeviceMapper, *, source: Any = None
) -> data.EvalIterator:
    """One pass over the config's evaluation split, each example once (padding masked).

    Args:
      config: the run's (or the evaluation's) config.
      mapper: the device mapping.
      source: the dataset's resolved `data.Source` (default: resolved from the config).
    """
    dataset = config.dataset
    return data.eval_iterator(
        dataset.name if source is None else source,
        split=dataset.eval_split or None,
        data_dir=dataset.data_dir,
        local_device_count=mapper.num_local_devices,
        per_device_batch=config.eval_batch_size // mapper.num_devices,
        image_size=dataset.eval_image_size,
        eval_preproc=dataset.eval_preproc,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        flatten_devices=mapper.flatten_batches,
    )
