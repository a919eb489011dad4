"""Train and eval iterators: coverage, host shards, determinism, resume, sources."""

import itertools
import math

import numpy as np
import pytest
import tensorflow as tf

from nfnets_jax import data
from nfnets_jax.data import preprocess as pp
from nfnets_jax.data.sources import digits_arrays

S = 16  # tiny images keep the pipelines fast


def take(iterator, n):
    return list(itertools.islice(iterator, n))


def assert_batches_equal(first, second):
    assert len(first) == len(second)
    for a, b in zip(first, second, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


# ---------------------------------------------------------------- evaluation


@pytest.mark.parametrize("devices", [1, 3, 4])
def test_eval_covers_every_example_once(devices):
    # 360 validation digits; 7 per device never divides 360 (nor 21 or 28).
    it = data.eval_iterator(
        "digits",
        local_device_count=devices,
        per_device_batch=7,
        image_size=S,
        eval_preproc="resize",
        with_index=True,
    )
    batches = list(it)
    expected_batches = math.ceil(360 / (devices * 7))
    assert len(batches) == len(it) == it.num_batches == expected_batches
    assert it.num_examples == 360
    assert data.num_eval_batches("digits", local_device_count=devices, per_device_batch=7) == (
        expected_batches
    )
    first = batches[0]
    assert first["images"].shape == (devices, 7, S, S, 3) and first["images"].dtype == np.float32
    assert first["labels"].dtype == np.int32 and first["mask"].dtype == np.float32
    index = np.concatenate([b["index"].ravel() for b in batches])
    mask = np.concatenate([b["mask"].ravel() for b in batches])
    labels = np.concatenate([b["labels"].ravel() for b in batches])
    images = np.concatenate([b["images"].reshape(-1, S, S, 3) for b in batches])
    real = mask == 1
    assert real.sum() == 360 and set(np.unique(mask)) <= {0.0, 1.0}
    np.testing.assert_array_equal(np.sort(index[real]), np.arange(360))
    assert np.all(index[~real] == -1) and np.all(images[~real] == 0)
    _, all_labels = digits_arrays()
    np.testing.assert_array_equal(labels[real], all_labels[1437 + index[real]])
    # Each row is the eval preprocessing of its example.
    digits, _ = digits_arrays()
    for row in (0, 5, 200):
        expected = pp.eval_preprocess(tf.constant(digits[1437 + index[row]]), S, "resize")
        np.testing.assert_allclose(images[row], expected, atol=1e-6)


def test_eval_hosts_read_disjoint_shards_with_equal_batch_counts():
    kwargs = dict(
        split="validation[:355]",
        local_device_count=2,
        per_device_batch=4,
        image_size=S,
        eval_preproc="resize",
        with_index=True,
        process_count=2,
    )
    iterators = [data.eval_iterator("digits", process_index=p, **kwargs) for p in range(2)]
    per_host = []
    for it in iterators:
        batches = list(it)
        assert len(batches) == it.num_batches == 23  # ceil(178 / 8) on both hosts
        index = np.concatenate([b["index"].ravel() for b in batches])
        per_host.append(index[index >= 0])
    # Contiguous np.array_split blocks: 178 + 177 examples.
    np.testing.assert_array_equal(np.sort(per_host[0]), np.arange(0, 178))
    np.testing.assert_array_equal(np.sort(per_host[1]), np.arange(178, 355))
    assert (
        data.num_eval_batches(
            "digits",
            split="validation[:355]",
            local_device_count=2,
            per_device_batch=4,
            process_count=2,
        )
        == 23
    )


def test_eval_with_more_processes_than_examples():
    kwargs = dict(
        split="validation[:3]",
        local_device_count=1,
        per_device_batch=2,
        image_size=S,
        eval_preproc="resize",
        process_count=5,
    )
    masks = [
        [b["mask"] for b in data.eval_iterator("digits", process_index=p, **kwargs)]
        for p in range(5)
    ]
    # One batch everywhere; processes 0-2 hold one example each, 3-4 only padding.
    assert [len(m) for m in masks] == [1] * 5
    assert [float(m[0].sum()) for m in masks] == [1, 1, 1, 0, 0]


def test_eval_flat_layout_and_bfloat16():
    it = data.eval_iterator(
        "digits",
        split="validation[:10]",
        local_device_count=4,
        per_device_batch=2,
        image_size=S,
        eval_preproc="resize",
        flatten_devices=True,
        image_dtype="bfloat16",
    )
    batches = list(it)
    assert len(batches) == 2  # ceil(10 / (4 x 2))
    for batch in batches:
        assert batch["images"].shape == (8, S, S, 3) and batch["mask"].shape == (8,)
        assert batch["images"].dtype.name == "bfloat16"
    assert batches[0]["mask"].sum() + batches[1]["mask"].sum() == 10


# ---------------------------------------------------------------- training


def test_train_hosts_read_disjoint_shards_and_reshuffle_each_epoch():
    kwargs = dict(
        split="train[:100]",
        local_device_count=2,
        per_device_batch=5,
        image_size=S,
        train_preproc="resize",
        seed=0,
        with_index=True,
        process_count=2,
    )
    epochs = []
    for process in range(2):
        it = data.train_iterator("digits", process_index=process, **kwargs)
        assert it.num_local_examples == 50 and it.examples_per_step == 10
        batches = take(it, 10)  # two epochs of 5 steps
        assert batches[0]["images"].shape == (2, 5, S, S, 3)
        assert set(batches[0]) == {"images", "labels", "index"}
        order = np.concatenate([b["index"].ravel() for b in batches])
        epochs.append((order[:50], order[50:]))
    for process, (first, second) in enumerate(epochs):
        block = np.arange(50 * process, 50 * (process + 1))
        np.testing.assert_array_equal(np.sort(first), block)
        np.testing.assert_array_equal(np.sort(second), block)
        assert not np.array_equal(first, second)


@pytest.fixture(scope="module")
def mixed_kwargs():
    # 40 examples and 16 examples per step (2 devices x 4, x2 for mixing): epochs end
    # mid-step, so resuming at step 3 starts inside the second epoch.
    return dict(
        split="train[:40]",
        local_device_count=2,
        per_device_batch=4,
        image_size=S,
        train_preproc="resize_shift",
        augment_name="cutmix_mixup_randaugment_405",
        with_index=True,
    )


@pytest.fixture(scope="module")
def uninterrupted(mixed_kwargs):
    return take(data.train_iterator("digits", seed=3, **mixed_kwargs), 6)


def test_mixed_train_batches(uninterrupted):
    batch = uninterrupted[0]
    assert set(batch) == {"images", "labels", "mix_labels", "ratio", "index", "mix_index"}
    assert batch["images"].shape == (2, 4, S, S, 3) and batch["images"].dtype == np.float32
    assert batch["mix_labels"].dtype == np.int32 and batch["ratio"].dtype == np.float32
    _, labels = digits_arrays()
    for b in uninterrupted:
        np.testing.assert_array_equal(b["labels"], labels[b["index"]])
        np.testing.assert_array_equal(b["mix_labels"], labels[b["mix_index"]])
        assert np.all((b["ratio"] >= 0) & (b["ratio"] <= 1))
    # Per device: rows 0-1 MixUp (any ratio), rows 2-3 CutMix (box fractions of 16x16).
    cut = np.concatenate([b["ratio"][:, 2:].ravel() for b in uninterrupted])
    np.testing.assert_allclose(cut * 256, np.round(cut * 256), atol=1e-3)
    # Normalized images: the uint8 range maps into about [-2.2, 2.7].
    images = np.concatenate([b["images"] for b in uninterrupted])
    assert images.min() >= -2.2 and images.max() <= 2.7


def test_seeded_stream_is_reproducible(mixed_kwargs, uninterrupted):
    again = take(data.train_iterator("digits", seed=3, **mixed_kwargs), 2)
    assert_batches_equal(again, uninterrupted[:2])
    other = take(data.train_iterator("digits", seed=4, **mixed_kwargs), 1)
    assert not np.array_equal(other[0]["images"], uninterrupted[0]["images"])


def test_resume_yields_the_uninterrupted_batches(mixed_kwargs, uninterrupted):
    it = data.train_iterator("digits", seed=3, start_step=3, **mixed_kwargs)
    assert it.step == 3
    assert_batches_equal(take(it, 3), uninterrupted[3:])
    assert it.step == 6


def test_resume_with_augment_before_mix():
    kwargs = dict(
        split="train[:24]",
        local_device_count=1,
        per_device_batch=4,
        image_size=S,
        train_preproc="resize_flip",
        augment_name="mixup_cutmix",
        augment_before_mix=True,
        seed=1,
    )
    full = take(data.train_iterator("digits", **kwargs), 5)
    assert_batches_equal(take(data.train_iterator("digits", start_step=2, **kwargs), 3), full[2:])


def test_unseeded_stream_favours_throughput():
    kwargs = dict(local_device_count=1, per_device_batch=4, image_size=S, train_preproc="resize")
    first = data.train_iterator("digits", **kwargs)
    second = data.train_iterator("digits", **kwargs)
    assert first.seed != second.seed
    assert not first.deterministic and first._ds.options().deterministic is False
    seeded = data.train_iterator("digits", seed=0, **kwargs)
    assert seeded.deterministic and seeded._ds.options().deterministic is True
    assert not np.array_equal(next(first)["images"], next(second)["images"])


def test_train_flat_layout():
    it = data.train_iterator(
        "digits",
        local_device_count=4,
        per_device_batch=2,
        image_size=S,
        train_preproc="resize",
        augment_name="mixup",
        seed=0,
        flatten_devices=True,
    )
    batch = next(it)
    assert batch["images"].shape == (8, S, S, 3)
    assert batch["labels"].shape == batch["mix_labels"].shape == batch["ratio"].shape == (8,)


def test_argument_errors():
    kwargs = dict(local_device_count=1, image_size=S, train_preproc="resize")
    with pytest.raises(ValueError, match="per_device_batch must be even"):
        data.train_iterator("digits", per_device_batch=3, augment_name="mixup_cutmix", **kwargs)
    with pytest.raises(ValueError, match="per_device_batch must be a positive integer"):
        data.train_iterator("digits", per_device_batch=0, **kwargs)
    with pytest.raises(ValueError, match="unknown token"):
        data.train_iterator("digits", per_device_batch=2, augment_name="mixup_blur", **kwargs)
    with pytest.raises(ValueError, match="start_step must be >= 0"):
        data.train_iterator("digits", per_device_batch=2, start_step=-1, **kwargs)
    with pytest.raises(ValueError, match="image_dtype"):
        data.train_iterator("digits", per_device_batch=2, image_dtype="float16", **kwargs)
    with pytest.raises(ValueError, match="Unknown train_preproc"):
        data.train_iterator(
            "digits", per_device_batch=2, local_device_count=1, image_size=S, train_preproc="center"
        )
    with pytest.raises(ValueError, match="gets no examples"):
        data.train_iterator(
            "digits",
            split="train[:2]",
            per_device_batch=2,
            process_index=2,
            process_count=3,
            **kwargs,
        )
    with pytest.raises(ValueError, match="Unknown eval_preproc"):
        data.eval_iterator(
            "digits",
            local_device_count=1,
            per_device_batch=2,
            image_size=S,
            eval_preproc="resize_crop",
        )
    with pytest.raises(data.DatasetError, match="has no split"):
        data.eval_iterator(
            "digits", split="test", local_device_count=1, per_device_batch=2, image_size=S
        )


# ---------------------------------------------------------------- other sources


def test_real_imagenet2012_pipelines(tiny_imagenet, imagenet_validation_labels):
    it = data.eval_iterator(
        "imagenet2012",
        data_dir=tiny_imagenet,
        local_device_count=3,
        per_device_batch=4,
        image_size=32,
        with_index=True,
    )
    (batch,) = list(it)
    assert batch["images"].shape == (3, 4, 32, 32, 3)
    real = batch["mask"].ravel() == 1
    assert real.sum() == 10
    index = batch["index"].ravel()[real]
    np.testing.assert_array_equal(np.sort(index), np.arange(10))
    # tfds shuffled the records when building: match labels through the file order.
    labels = batch["labels"].ravel()[real]
    assert sorted(labels.tolist()) == sorted(imagenet_validation_labels)

    # Training: the tfds streaming path (shuffle buffer + raw-record skip on resume).
    kwargs = dict(
        data_dir=tiny_imagenet,
        local_device_count=1,
        per_device_batch=2,
        image_size=32,
        augment_name="mixup_cutmix",
        seed=5,
        with_index=True,
    )
    full = take(data.train_iterator("imagenet2012", **kwargs), 7)  # 4 examples per step
    assert full[0]["images"].shape == (1, 2, 32, 32, 3)
    order = np.concatenate(
        [
            np.stack(
                [b["index"][0, 0], b["mix_index"][0, 0], b["index"][0, 1], b["mix_index"][0, 1]]
            )
            for b in full
        ]
    )
    # The order consumed: [mixup first, mixup partner, cutmix first, cutmix partner] per step.
    for epoch in range(2):
        np.testing.assert_array_equal(np.sort(order[12 * epoch : 12 * (epoch + 1)]), np.arange(12))
    assert not np.array_equal(order[:12], order[12:24])
    labels = np.concatenate([b["labels"].ravel() for b in full])
    assert set(labels.tolist()) <= {0, 1, 999}
    resumed = take(data.train_iterator("imagenet2012", start_step=4, **kwargs), 3)
    assert_batches_equal(resumed, full[4:])


@pytest.mark.slow
def test_shuffle_buffer_holds_ten_host_batches_of_output_examples(tiny_imagenet):
    # The original's `shuffle(10 * per-host batch)`: counted in output examples, also when
    # mixing reads two records per example. One device x 1 example -> 10 records.
    kwargs = dict(
        data_dir=tiny_imagenet,
        local_device_count=1,
        per_device_batch=1,
        image_size=16,
        augment_name="mixup",
        with_index=True,
    )
    first_records = []
    for seed in range(20):
        it = data.train_iterator("imagenet2012", seed=seed, **kwargs)
        assert it.shuffle_buffer == 10
        first_records.append(int(next(it)["index"][0, 0]))
        it.close()
    # A buffer of 10 over the 12 records in stored order can only start with one of the
    # first 10 (with 20, as before, records 10 and 11 would come first 1 time in 6).
    assert max(first_records) < 10 and len(set(first_records)) > 3
    assert (
        data.train_iterator(
            "digits",
            local_device_count=1,
            per_device_batch=1,
            image_size=8,
            train_preproc="resize",
            seed=0,
        ).shuffle_buffer
        is None
    )


@pytest.mark.slow
def test_mocked_imagenet2012_pipelines(mock_imagenet_dir):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(
        num_examples=8, policy=tfds.testing.MockPolicy.USE_FILES, data_dir=mock_imagenet_dir
    ):
        train = data.train_iterator(
            "imagenet2012",
            data_dir=mock_imagenet_dir,
            local_device_count=2,
            per_device_batch=2,
            image_size=32,
            augment_name="cutmix_mixup_randaugment_405",
            seed=0,
        )
        batches = take(train, 3)
        evaluation = data.eval_iterator(
            "imagenet2012",
            data_dir=mock_imagenet_dir,
            local_device_count=3,
            per_device_batch=2,
            image_size=40,
        )
        eval_batches = list(evaluation)
    assert train.info.num_classes == 1000
    for batch in batches:
        assert batch["images"].shape == (2, 2, 32, 32, 3)
        assert np.all(np.isfinite(batch["images"]))
        assert batch["labels"].min() >= 0 and batch["labels"].max() < 1000
        assert np.all((batch["ratio"] >= 0) & (batch["ratio"] <= 1))
    assert len(eval_batches) == 2 and eval_batches[0]["images"].shape == (3, 2, 40, 40, 3)
    assert sum(b["mask"].sum() for b in eval_batches) == 8


def test_image_folder_pipelines(image_folder):
    name = "folder:" + image_folder
    train = data.train_iterator(
        name,
        local_device_count=1,
        per_device_batch=4,
        image_size=24,
        augment_name="randaugment_210",
        seed=0,
    )
    batch = next(train)
    assert batch["images"].shape == (1, 4, 24, 24, 3)
    assert set(batch["labels"].ravel().tolist()) <= {0, 1, 2}
    evaluation = data.eval_iterator(
        name, local_device_count=2, per_device_batch=2, image_size=24, eval_preproc="crop_resize"
    )
    batches = list(evaluation)
    labels = np.concatenate([b["labels"].ravel() for b in batches])
    mask = np.concatenate([b["mask"].ravel() for b in batches])
    np.testing.assert_array_equal(labels[mask == 1], [0, 0, 1, 1, 2])
