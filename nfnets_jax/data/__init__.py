"""Input pipelines: datasets, the original NFNet preprocessing and augmentation, batching.

Typical use from a training loop:

    info = data.dataset_info('imagenet2012')
    train = data.prefetch_to_device(data.train_iterator(
        'imagenet2012', local_device_count=jax.local_device_count(), per_device_batch=32,
        image_size=192, augment_name='cutmix_mixup_randaugment_405', seed=0,
        start_step=step, process_index=jax.process_index(),
        process_count=jax.process_count()))
"""

# ruff: noqa: E402 - TensorFlow is loaded (quietly, off the GPUs) before the modules that
# use it are imported.
from nfnets_jax.data.tf_setup import import_tensorflow as _import_tensorflow

_import_tensorflow()

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
