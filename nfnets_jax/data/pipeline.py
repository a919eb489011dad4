"""tf.data assembly: sharded, shuffled, preprocessed, mixed and batched numpy streams.

`train_iterator` yields an endless stream of host-local batches

    {'images': [D, B, S, S, 3] float32, 'labels': [D, B] int32,
     'mix_labels': [D, B] int32, 'ratio': [D, B] float32}      (mixing fields only if mixing)

with D = local devices and B = per-device batch (`flatten_devices=True` gives
[D * B, ...] instead, for `jit`/`shard_map` steps). `eval_iterator` yields a finite
stream that covers its split exactly once, padded to whole batches: padded rows have
`mask == 0`, and every process yields the same number of batches.

Order of operations (the original's, spec section 6): read this process's contiguous
shard -> shuffle per epoch -> decode + crop -> flip -> bicubic resize -> (RandAugment +
normalize here if `augment_before_mix` or not mixing) -> batch 2B -> MixUp on the first
half / CutMix on the second half -> RandAugment -> normalize -> batch B -> batch D.
Mixing consumes 2B examples per device batch, as in the original.

Determinism and resume: every random draw is a stateless function of
`(seed, process_index, stream, position)`, where the position counts examples (or
device batches) from the start of the process's stream, and each epoch's order is a
function of `(seed, process_index, epoch)`. So with a fixed `seed`, the iterator built
with `start_step=k` yields exactly batches k, k+1, ... of the uninterrupted stream. The
resume starts in epoch `k * examples_per_step // n` and skips the examples of that epoch
already used: an index permutation (free) for folder/digits sources; for tfds sources the
skipped records are read but not decoded: for ImageNet at most one epoch of the
process's shard (1.28M records / process_count), about 4 minutes for a whole epoch at the
~5,000 raw records/s that one reader thread reached on this project's 2-core machine
(local disk). `seed=None`
draws a fresh seed and lets tf.data reorder elements for throughput, as the original.

tfds sources shuffle each epoch with a buffer of `shuffle_buffer` records over the
records in their stored order (tfds shuffles records when it builds a dataset). The
default is the original's `10 * per-host batch`: 10 host batches of output examples,
10 x D x B records, also when mixing reads 2 records per output example. Folder and
digits sources get a full permutation per epoch.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator

import numpy as np

from nfnets_jax.data import preprocess
from nfnets_jax.data.augment import AugmentConfig, parse_augment_name
from nfnets_jax.data.mix import mix_batch
from nfnets_jax.data.sources import DatasetInfo, Source, get_source, parse_split, shard_range
from nfnets_jax.data.tf_setup import tf

__all__ = ["EvalIterator", "TrainIterator", "eval_iterator", "num_eval_batches", "train_iterator"]

# Independent random streams derived from (seed, process_index).
_SHUFFLE_STREAM, _EXAMPLE_STREAM, _MIX_STREAM, _AUGMENT_STREAM, _MIXED_AUGMENT_STREAM = range(1, 6)
# Upper bound on epochs of the endless training stream.
_MAX_EPOCHS = 2**40
# Default tfds shuffle buffer, in host batches of output examples (the original's
# `10 * np.prod(batch_dims)`, whatever mixing reads).
_SHUFFLE_BUFFER_BATCHES = 10
_IMAGE_DTYPES = {"float32": tf.float32, "bfloat16": tf.bfloat16}


def _fold_in(key: tf.Tensor, data) -> tf.Tensor:
    return tf.random.experimental.stateless_fold_in(key, tf.cast(data, tf.int64))


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")


def _options(deterministic: bool, num_threads: int | None) -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = deterministic
    # One thread per op invocation and parallelism across elements, as the original.
    options.threading.max_intra_op_parallelism = 1
    if num_threads:
        options.threading.private_threadpool_size = num_threads
    options.experimental_optimization.map_parallelization = True
    options.experimental_optimization.parallel_batch = True
    return options


class _NumpyBatches:
    """Iterates a batched tf.data pipeline as numpy dicts (optionally device-flattened).

    `close()` (or leaving a ``with`` block) releases the tf.data iterator and its
    background work; the stream then ends.
    """

    def __init__(self, ds: tf.data.Dataset, flatten_devices: bool) -> None:
        self._ds = ds
        self._flatten = flatten_devices
        self._iterator: Iterator | None = None
        self._closed = False

    def __iter__(self):
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Releases the tf.data iterator; later calls to `next` raise StopIteration."""
        self._closed = True
        self._iterator = None

    def __next__(self) -> dict[str, np.ndarray]:
        if self._closed:
            raise StopIteration
        if self._iterator is None:
            self._iterator = self._ds.as_numpy_iterator()
        batch = next(self._iterator)
        if self._flatten:
            batch = {k: v.reshape((-1,) + v.shape[2:]) for k, v in batch.items()}
        return batch


class TrainIterator(_NumpyBatches):
    """Endless training batches; see `train_iterator`.

    Attributes:
        info: the dataset's `DatasetInfo`.
        split: the split read.
        examples_per_step: source examples consumed per batch on this process
            (local devices x per-device batch, x2 when mixing).
        num_local_examples: size of this process's shard.
        seed: the seed in use (drawn at random when None was passed).
        deterministic: whether the stream is reproducible (a seed was passed).
        step: the step of the next batch.
        shuffle_buffer: records in the shuffle buffer of a tfds source (None for folder
            and digits sources, which are fully permuted).
    """

    def __init__(
        self,
        ds: tf.data.Dataset,
        flatten_devices: bool,
        *,
        info: DatasetInfo,
        split: str,
        examples_per_step: int,
        num_local_examples: int,
        seed: int,
        deterministic: bool,
        step: int,
        shuffle_buffer: int | None,
    ) -> None:
        super().__init__(ds, flatten_devices)
        self.info = info
        self.split = split
        self.examples_per_step = examples_per_step
        self.num_local_examples = num_local_examples
        self.seed = seed
        self.deterministic = deterministic
        self.step = step
        self.shuffle_buffer = shuffle_buffer

    def __next__(self) -> dict[str, np.ndarray]:
        batch = super().__next__()
        self.step += 1
        return batch


class EvalIterator(_NumpyBatches):
    """One pass over an evaluation split; see `eval_iterator`.

    Attributes:
        info: the dataset's `DatasetInfo`.
        split: the split read.
        num_batches: batches yielded (the same on every process).
        num_examples: real (unpadded) examples on this process.
    """

    def __init__(
        self,
        ds: tf.data.Dataset,
        flatten_devices: bool,
        *,
        info: DatasetInfo,
        split: str,
        num_batches: int,
        num_examples: int,
    ) -> None:
        super().__init__(ds, flatten_devices)
        self.info = info
        self.split = split
        self.num_batches = num_batches
        self.num_examples = num_examples

    def __len__(self) -> int:
        return self.num_batches


def _epoch_stream(
    source,
    split: str,
    start: int,
    stop: int,
    *,
    shuffle_key,
    first_epoch: int,
    skip: int,
    shuffle_buffer: int | None,
) -> tf.data.Dataset:
    """Endless `{'image', 'label', 'index'}` stream in per-epoch shuffled order."""

    def skip_count(epoch):
        return tf.where(epoch == first_epoch, tf.constant(skip, tf.int64), tf.constant(0, tf.int64))

    epochs = tf.data.Dataset.range(first_epoch, _MAX_EPOCHS)
    if source.random_access:
        local = tf.range(start, stop, dtype=tf.int64)
        element = source.element(split)

        def epoch_indices(epoch):
            order = tf.random.experimental.stateless_shuffle(local, _fold_in(shuffle_key, epoch))
            return tf.data.Dataset.from_tensor_slices(order).skip(skip_count(epoch))

        return epochs.flat_map(epoch_indices).map(
            lambda index: {**element(index), "index": index},
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    records = source.read(split, start, stop).enumerate(start)
    records = records.map(lambda index, ex: {**ex, "index": index})

    def epoch_records(epoch):
        epoch_seed = tf.random.stateless_uniform(
            [], _fold_in(shuffle_key, epoch), minval=None, maxval=None, dtype=tf.int64
        )
        shuffled = records.shuffle(shuffle_buffer, seed=epoch_seed, reshuffle_each_iteration=False)
        return shuffled.skip(skip_count(epoch))

    return epochs.flat_map(epoch_records)


def _source(name: str | Source, data_dir: str | None) -> Source:
    """The source of a dataset name, or the already resolved `Source` itself."""
    return name if isinstance(name, Source) else get_source(name, data_dir)


def train_iterator(
    name: str | Source,
    *,
    split: str | None = None,
    data_dir: str | None = None,
    local_device_count: int,
    per_device_batch: int,
    image_size: int,
    train_preproc: str = "inception_crop",
    augment_name: str | AugmentConfig | None = None,
    augment_before_mix: bool = False,
    seed: int | None = None,
    start_step: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    flatten_devices: bool = False,
    shuffle_buffer: int | None = None,
    image_dtype: str = "float32",
    with_index: bool = False,
    num_threads: int | None = None,
) -> TrainIterator:
    """An endless stream of training batches for this process.

    Args:
        name: dataset name (`'imagenet2012'`, a tfds name, `'folder:<root>'`, `'digits'`),
            or its already resolved `Source` (no metadata is read again).
        split: split to read, optionally sliced (`'train[10000:]'`); default: the
            dataset's train split.
        data_dir: tfds data directory.
        local_device_count: devices on this process (D).
        per_device_batch: examples per device per step (B).
        image_size: training resolution S.
        train_preproc: `'inception_crop'` (the original) or one of the tiny-image crops
            `'resize'`, `'resize_flip'`, `'resize_shift'`, `'resize_shift_flip'`.
        augment_name: e.g. `'cutmix_mixup_randaugment_405'` (see
            `nfnets_jax.data.augment`), or its parsed `AugmentConfig`; None for crop and
            flip only.
        augment_before_mix: run RandAugment + normalization before mixing (NF-RegNet
            path) instead of after it (NFNet path).
        seed: makes the stream reproducible; None favours throughput.
        start_step: first batch to yield, for resuming a seeded stream exactly.
        process_index: this process (`jax.process_index()`).
        process_count: number of processes (`jax.process_count()`).
        flatten_devices: yield `[D * B, ...]` instead of `[D, B, ...]`.
        shuffle_buffer: records in the shuffle buffer of tfds sources (default 10 host
            batches of output examples, `10 * local_device_count * per_device_batch`, as
            the original); folder and digits sources are fully permuted.
        image_dtype: `'float32'` or `'bfloat16'` images.
        with_index: add `'index'` (position of each example in the split; for tfds
            sources in its read order) and, when mixing, `'mix_index'`.
        num_threads: size of tf.data's private thread pool (default: TF's).

    Returns:
        A `TrainIterator` of numpy dicts (see the module docstring).

    Raises:
        DatasetError: unknown or unavailable dataset, bad split.
        ValueError: bad sizes, names or mixing with an odd per-device batch.

    Example:
        >>> it = train_iterator('digits', local_device_count=1, per_device_batch=8,
        ...                     image_size=32, train_preproc='resize_shift', seed=0)
        >>> next(it)['images'].shape
        (1, 8, 32, 32, 3)
    """
    _check_positive(
        local_device_count=local_device_count,
        per_device_batch=per_device_batch,
        image_size=image_size,
    )
    if start_step < 0:
        raise ValueError(f"start_step must be >= 0, got {start_step}.")
    if image_dtype not in _IMAGE_DTYPES:
        raise ValueError(f"image_dtype must be one of {tuple(_IMAGE_DTYPES)}, got {image_dtype!r}.")
    if train_preproc not in preprocess.TRAIN_PREPROCS:
        raise ValueError(
            f"Unknown train_preproc {train_preproc!r}; expected one of {preprocess.TRAIN_PREPROCS}."
        )
    config = (
        augment_name
        if isinstance(augment_name, AugmentConfig)
        else parse_augment_name(augment_name)
    )
    if config.mixup and config.cutmix and per_device_batch % 2:
        raise ValueError(
            f"augment_name {augment_name!r} mixes the first half of each per-device batch "
            f"with MixUp and the second with CutMix: per_device_batch must be even, got "
            f"{per_device_batch}."
        )
    source = _source(name, data_dir)
    info = source.info
    split = split or info.train_split
    base_split, begin, end = parse_split(info, split)
    start, stop = shard_range(begin, end, process_index, process_count)
    num_local = stop - start
    if num_local == 0:
        raise ValueError(
            f"Process {process_index} of {process_count} gets no examples of {split!r} "
            f"({end - begin} examples): use fewer processes or a larger split."
        )
    host_batch = local_device_count * per_device_batch
    examples_per_step = host_batch * (2 if config.mixing else 1)
    start_position = start_step * examples_per_step
    first_epoch, skip = divmod(start_position, num_local)
    deterministic = seed is not None
    if seed is None:
        seed = random.SystemRandom().randrange(2**31)
    base_key = tf.constant([seed, process_index], tf.int64)
    keys = {s: _fold_in(base_key, s) for s in range(1, 6)}
    # RandAugment + normalization run per example before mixing when asked to (or when
    # nothing is mixed), otherwise on the mixed examples.
    augment_first = augment_before_mix or not config.mixing

    shuffle_buffer = (
        None if source.random_access else (shuffle_buffer or _SHUFFLE_BUFFER_BATCHES * host_batch)
    )
    ds = _epoch_stream(
        source,
        base_split,
        start,
        stop,
        shuffle_key=keys[_SHUFFLE_STREAM],
        first_epoch=first_epoch,
        skip=skip,
        shuffle_buffer=shuffle_buffer,
    )
    ds = ds.enumerate(start_position)

    def preprocess_example(position, example):
        key = _fold_in(keys[_EXAMPLE_STREAM], position)
        image = preprocess.train_preprocess(example["image"], key, image_size, train_preproc)
        if augment_first:
            aug_key = _fold_in(keys[_AUGMENT_STREAM], position)
            image = preprocess.augment_and_normalize(image, config, aug_key)
        return {"images": image, "labels": example["label"], "index": example["index"]}

    ds = ds.map(preprocess_example, num_parallel_calls=tf.data.AUTOTUNE)
    if config.mixing:
        ds = ds.batch(2 * per_device_batch, drop_remainder=True)
        ds = ds.enumerate(start_step * local_device_count)

        def mix(batch_number, batch):
            mixed = mix_batch(
                batch,
                _fold_in(keys[_MIX_STREAM], batch_number),
                mixup=config.mixup,
                cutmix=config.cutmix,
                mixup_alpha=config.mixup_alpha,
            )
            mixed["position"] = batch_number * per_device_batch + tf.range(
                per_device_batch, dtype=tf.int64
            )
            return mixed

        ds = ds.map(mix, num_parallel_calls=tf.data.AUTOTUNE)
        if not augment_first:
            # RandAugment (if any) and normalization of the mixed images, per example.
            def augment_mixed(example):
                example = dict(example)
                aug_key = _fold_in(keys[_MIXED_AUGMENT_STREAM], example.pop("position"))
                example["images"] = preprocess.augment_and_normalize(
                    example["images"], config, aug_key
                )
                return example

            ds = ds.unbatch().map(augment_mixed, num_parallel_calls=tf.data.AUTOTUNE)
            ds = ds.batch(per_device_batch, drop_remainder=True)
        else:
            ds = ds.map(lambda b: {k: v for k, v in b.items() if k != "position"})
    else:
        ds = ds.batch(per_device_batch, drop_remainder=True)
    ds = ds.batch(local_device_count, drop_remainder=True)
    dtype = _IMAGE_DTYPES[image_dtype]

    def finalize(batch):
        batch = dict(batch)
        batch["images"] = tf.cast(batch["images"], dtype)
        for key in ("index", "mix_index"):
            if key in batch:
                if with_index:
                    batch[key] = tf.cast(batch[key], tf.int32)
                else:
                    del batch[key]
        return batch

    ds = ds.map(finalize, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.prefetch(tf.data.AUTOTUNE).with_options(_options(deterministic, num_threads))
    return TrainIterator(
        ds,
        flatten_devices,
        info=info,
        split=split,
        examples_per_step=examples_per_step,
        num_local_examples=num_local,
        seed=seed,
        deterministic=deterministic,
        step=start_step,
        shuffle_buffer=shuffle_buffer,
    )


def _eval_layout(
    info: DatasetInfo,
    split: str,
    local_device_count: int,
    per_device_batch: int,
    process_index: int,
    process_count: int,
) -> tuple[str, int, int, int]:
    base_split, begin, end = parse_split(info, split)
    start, stop = shard_range(begin, end, process_index, process_count)
    largest_shard = math.ceil((end - begin) / process_count)
    num_batches = math.ceil(largest_shard / (local_device_count * per_device_batch))
    return base_split, start, stop, num_batches


def num_eval_batches(
    name: str,
    *,
    split: str | None = None,
    data_dir: str | None = None,
    local_device_count: int,
    per_device_batch: int,
    process_count: int = 1,
) -> int:
    """Number of batches every process's `eval_iterator` yields.

    `ceil(ceil(n / process_count) / (local_device_count * per_device_batch))` for a split
    of n examples: enough for the largest process shard.

    Example:
        >>> num_eval_batches('digits', local_device_count=4, per_device_batch=7)  # 360 ex.
        13
    """
    _check_positive(local_device_count=local_device_count, per_device_batch=per_device_batch)
    info = _source(name, data_dir).info
    return _eval_layout(
        info, split or info.eval_split, local_device_count, per_device_batch, 0, process_count
    )[3]


def eval_iterator(
    name: str | Source,
    *,
    split: str | None = None,
    data_dir: str | None = None,
    local_device_count: int,
    per_device_batch: int,
    image_size: int,
    eval_preproc: str = "resize_crop_32",
    process_index: int = 0,
    process_count: int = 1,
    flatten_devices: bool = False,
    image_dtype: str = "float32",
    with_index: bool = False,
    num_threads: int | None = None,
) -> EvalIterator:
    """One pass over an evaluation split, each example exactly once, padded and masked.

    Every process reads its contiguous shard of the split and yields
    `num_eval_batches(...)` batches (the same number on every process, so collectives
    inside the evaluation step cannot hang); rows past the end of the shard are zeros
    with `mask == 0`.

    Args:
        name: dataset name, or its resolved `Source`.
        split: split to read, optionally sliced; default: the dataset's eval split.
        data_dir: tfds data directory.
        local_device_count: devices on this process (D).
        per_device_batch: examples per device per batch (B); need not divide the split.
        image_size: evaluation resolution S (the variant's test size).
        eval_preproc: `'resize_crop_32'` (NFNets), `'resize_crop_{p}'`, `'crop_resize'`
            (NF-RegNets) or `'resize'`.
        process_index: this process.
        process_count: number of processes.
        flatten_devices: yield `[D * B, ...]` instead of `[D, B, ...]`.
        image_dtype: `'float32'` or `'bfloat16'` images.
        with_index: add `'index'` (position in the split, -1 for padding).
        num_threads: size of tf.data's private thread pool (default: TF's).

    Returns:
        An `EvalIterator` of `{'images', 'labels', 'mask'}` numpy dicts (`mask` float32).

    Raises:
        DatasetError: unknown or unavailable dataset, bad split.
        ValueError: bad sizes or preprocessing name.

    Example:
        >>> it = eval_iterator('digits', local_device_count=4, per_device_batch=7,
        ...                    image_size=32, eval_preproc='resize')
        >>> len(it), int(sum(b['mask'].sum() for b in it))  # 4 * 7 * 13 = 364 slots
        (13, 360)
    """
    _check_positive(
        local_device_count=local_device_count,
        per_device_batch=per_device_batch,
        image_size=image_size,
    )
    if image_dtype not in _IMAGE_DTYPES:
        raise ValueError(f"image_dtype must be one of {tuple(_IMAGE_DTYPES)}, got {image_dtype!r}.")
    preprocess.parse_eval_preproc(eval_preproc)
    source = _source(name, data_dir)
    info = source.info
    split = split or info.eval_split
    base_split, start, stop, num_batches = _eval_layout(
        info, split, local_device_count, per_device_batch, process_index, process_count
    )
    host_batch = local_device_count * per_device_batch
    num_padding = num_batches * host_batch - (stop - start)
    dtype = _IMAGE_DTYPES[image_dtype]

    def prepare(index, example):
        image = preprocess.eval_preprocess(example["image"], image_size, eval_preproc)
        return {
            "images": tf.cast(image, dtype),
            "labels": example["label"],
            "mask": tf.constant(1.0),
            "index": index,
        }

    ds = source.read(base_split, start, stop).enumerate(start)
    ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
    padding = {
        "images": tf.zeros([image_size, image_size, 3], dtype),
        "labels": tf.constant(0, tf.int32),
        "mask": tf.constant(0.0),
        "index": tf.constant(-1, tf.int64),
    }
    ds = ds.concatenate(tf.data.Dataset.from_tensors(padding).repeat(num_padding))
    if with_index:
        ds = ds.map(lambda ex: {**ex, "index": tf.cast(ex["index"], tf.int32)})
    else:
        ds = ds.map(lambda ex: {k: v for k, v in ex.items() if k != "index"})
    ds = ds.batch(per_device_batch, drop_remainder=True)
    ds = ds.batch(local_device_count, drop_remainder=True)
    ds = ds.prefetch(tf.data.AUTOTUNE).with_options(_options(True, num_threads))
    return EvalIterator(
        ds,
        flatten_devices,
        info=info,
        split=split,
        num_batches=num_batches,
        num_examples=stop - start,
    )
