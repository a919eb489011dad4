"""Input pipelines: datasets, the original NFNet preprocessing and augmentation, batching.

Typical use from a training loop:

    info = data.dataset_info('imagenet2012')
    train = data.prefetch_to_device(data.train_iterator(
        'imagenet2012', local_device_count=jax.local_device_count(), per_device_batch=32,
        image_size=192, augment_name='cutmix_mixup_randaugment_405', seed=0,
        start_step=step, process_index=jax.process_index(),
        process_count=jax.process_count()))
"""

import importlib as _importlib

# Names exported here -> the module defining them. Loaded on first use, so importing the
# package (e.g. for `augment` or `prefetch`, or the names start-up validation checks)
# does not load TensorFlow; modules that use it load it through `tf_setup`.
_EXPORTS = {
    "AugmentConfig": "augment",
    "TRAIN_PREPROCS": "augment",
    "parse_augment_name": "augment",
    "EvalIterator": "pipeline",
    "TrainIterator": "pipeline",
    "eval_iterator": "pipeline",
    "num_eval_batches": "pipeline",
    "train_iterator": "pipeline",
    "default_sharding": "prefetch",
    "prefetch_to_device": "prefetch",
    "MEAN_RGB": "preprocess",
    "STDDEV_RGB": "preprocess",
    "eval_preprocess": "preprocess",
    "train_preprocess": "preprocess",
    "DatasetError": "sources",
    "DatasetInfo": "sources",
    "Source": "sources",
    "dataset_info": "sources",
    "get_source": "sources",
    "dataset_class_names": "class_names",
}


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'nfnets_jax.data' has no attribute {name!r}")
    value = getattr(_importlib.import_module(f"nfnets_jax.data.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = [
    "MEAN_RGB",
    "STDDEV_RGB",
    "TRAIN_PREPROCS",
    "AugmentConfig",
    "DatasetError",
    "DatasetInfo",
    "EvalIterator",
    "Source",
    "TrainIterator",
    "dataset_class_names",
    "dataset_info",
    "default_sharding",
    "eval_iterator",
    "eval_preprocess",
    "get_source",
    "num_eval_batches",
    "parse_augment_name",
    "prefetch_to_device",
    "train_iterator",
    "train_preprocess",
]
