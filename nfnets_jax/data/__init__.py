"""Input pipelines: datasets, the original NFNet preprocessing and augmentation, batching.

Typical use from a training loop:

    info = data.dataset_info('imagenet2012')
    train = data.prefetch_to_device(data.train_iterator(
        'imagenet2012', local_device_count=jax.local_device_count(), per_device_batch=32,
        image_size=192, augment_name='cutmix_mixup_randaugment_405', seed=0,
        start_step=step, process_index=jax.process_index(),
        process_count=jax.process_count()))
"""

import contextlib as _contextlib

import tensorflow as _tf

from nfnets_jax.data.augment import AugmentConfig, parse_augment_name
from nfnets_jax.data.pipeline import (
    EvalIterator,
    TrainIterator,
    eval_iterator,
    num_eval_batches,
    train_iterator,
)
from nfnets_jax.data.prefetch import default_sharding, prefetch_to_device
from nfnets_jax.data.preprocess import (
    MEAN_RGB,
    STDDEV_RGB,
    TRAIN_PREPROCS,
    eval_preprocess,
    train_preprocess,
)
from nfnets_jax.data.sources import DatasetError, DatasetInfo, dataset_info

# TensorFlow only feeds the input pipeline: keep it off accelerators that JAX uses. A
# RuntimeError means TF already initialised its devices: leave them as they are.
with _contextlib.suppress(RuntimeError):
    _tf.config.set_visible_devices([], "GPU")

__all__ = [
    "MEAN_RGB",
    "STDDEV_RGB",
    "TRAIN_PREPROCS",
    "AugmentConfig",
    "DatasetError",
    "DatasetInfo",
    "EvalIterator",
    "TrainIterator",
    "dataset_info",
    "default_sharding",
    "eval_iterator",
    "eval_preprocess",
    "num_eval_batches",
    "parse_augment_name",
    "prefetch_to_device",
    "train_iterator",
    "train_preprocess",
]
