"""Dataset names, split sizes, slicing, host shards and the errors for missing data."""

import os
import time

import numpy as np
import pytest

from nfnets_jax.data import prepare
from nfnets_jax.data.sources import (
    DatasetError,
    dataset_info,
    digits_arrays,
    get_source,
    parse_split,
    shard_range,
)


def test_digits_info_and_arrays():
    from sklearn.datasets import load_digits

    info = dataset_info("digits")
    assert info.num_classes == 10
    assert dict(info.splits) == {"train": 1437, "validation": 360}
    assert (info.train_split, info.eval_split) == ("train", "validation")
    images, labels = digits_arrays()
    assert images.shape == (1797, 8, 8, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int32
    raw = load_digits()
    # Grey levels 0..16 -> round(v * 255 / 16), replicated over RGB.
    np.testing.assert_array_equal(images[..., 0], np.rint(raw.images * 255 / 16))
    np.testing.assert_array_equal(images[..., 0], images[..., 2])
    assert images.max() == 255 and images.min() == 0
    np.testing.assert_array_equal(labels, raw.target)
    # The fixed split: the first 1,437 train, the last 360 validation, all classes in both.
    assert set(labels[:1437]) == set(labels[1437:]) == set(range(10))


def test_parse_split():
    info = dataset_info("digits")
    assert parse_split(info, "train") == ("train", 0, 1437)
    assert parse_split(info, "train[:1000]") == ("train", 0, 1000)
    assert parse_split(info, "train[1000:]") == ("train", 1000, 1437)
    assert parse_split(info, "validation[-60:]") == ("validation", 300, 360)
    assert parse_split(info, "validation[10:20]") == ("validation", 10, 20)
    assert info.num_examples("train[100:]") == 1337
    assert info.num_examples() == 1437
    with pytest.raises(DatasetError, match="has no split 'test'.*'train': 1437"):
        parse_split(info, "test")
    with pytest.raises(DatasetError, match="selects no examples"):
        parse_split(info, "train[5:5]")
    with pytest.raises(DatasetError, match="malformed"):
        parse_split(info, "train[1.5:]")


@pytest.mark.parametrize("n", [1, 7, 10, 50000])
@pytest.mark.parametrize("count", [1, 2, 3, 8])
def test_shard_range_is_array_split(n, count):
    blocks = np.array_split(np.arange(100, 100 + n), count)
    for index, block in enumerate(blocks):
        start, stop = shard_range(100, 100 + n, index, count)
        np.testing.assert_array_equal(np.arange(start, stop), block)


def test_shard_range_rejects_bad_process():
    with pytest.raises(ValueError, match="process_index=2 must be in"):
        shard_range(0, 10, 2, 2)


def test_image_folder(image_folder):
    source = get_source("folder:" + image_folder)
    info = source.info
    assert info.num_classes == 3 and source.classes == ["cat", "dog", "rocket"]
    assert dict(info.splits) == {"train": 12, "validation": 5}
    assert (info.train_split, info.eval_split) == ("train", "validation")
    lookup = source.element("validation")
    # Files are ordered by class then name: validation = cat x2, dog x2, rocket x1.
    labels = [int(lookup(np.int64(i))["label"]) for i in range(5)]
    assert labels == [0, 0, 1, 1, 2]
    assert bytes(lookup(np.int64(1))["image"].numpy())[:4] == b"\x89PNG"


def test_image_folder_errors(tmp_path):
    with pytest.raises(DatasetError, match="does not exist.*<root>/<split>/<class>"):
        dataset_info(f"folder:{tmp_path}/missing")
    (tmp_path / "train" / "cls").mkdir(parents=True)
    (tmp_path / "train" / "cls" / "notes.txt").write_text("x")
    with pytest.raises(DatasetError, match="holds no images"):
        dataset_info(f"folder:{tmp_path}")


def test_real_imagenet2012_build(tiny_imagenet):
    info = dataset_info("imagenet2012", data_dir=tiny_imagenet)
    assert info.num_classes == 1000
    assert dict(info.splits) == {"train": 12, "validation": 10}
    assert (info.train_split, info.eval_split) == ("train", "validation")
    assert info.data_dir == tiny_imagenet


def test_mocked_imagenet2012(mock_imagenet_dir):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(
        num_examples=8, policy=tfds.testing.MockPolicy.USE_FILES, data_dir=mock_imagenet_dir
    ):
        info = dataset_info("imagenet2012", data_dir=mock_imagenet_dir)
    assert info.num_classes == 1000 and dict(info.splits) == {"train": 8, "validation": 8}


def test_missing_imagenet_explains_the_manual_download(tmp_path):
    began = time.monotonic()
    with pytest.raises(DatasetError) as error:
        dataset_info("imagenet2012", data_dir=str(tmp_path))
    message = str(error.value)
    assert "not prepared in data_dir" in message
    for needed in (
        "ILSVRC2012_img_train.tar",
        "ILSVRC2012_img_val.tar",
        "python -m nfnets_jax.data.prepare imagenet2012",
        "--manual_dir",
    ):
        assert needed in message
    # Fails fast: no download attempt, no retries.
    assert time.monotonic() - began < 20


def test_missing_data_dir_and_unknown_names(tmp_path):
    with pytest.raises(DatasetError, match="data_dir .* does not exist"):
        dataset_info("cifar10", data_dir=str(tmp_path / "nowhere"))
    with pytest.raises(DatasetError, match="Prepare it once"):
        dataset_info("cifar10", data_dir=str(tmp_path))
    with pytest.raises(DatasetError, match="Unknown dataset 'imagenet2021'"):
        dataset_info("imagenet2021", data_dir=str(tmp_path))
    with pytest.raises(DatasetError, match="A dataset name is needed"):
        dataset_info("")


def test_prepare_checks_the_imagenet_tars_first(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="ILSVRC2012_img_train.tar"):
        prepare.prepare_dataset("imagenet2012", str(tmp_path / "tfds"), str(tmp_path))
    assert prepare.main(["imagenet2012", f"--data_dir={tmp_path}/tfds"]) == 1
    assert "image-net.org" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "tfds" / "imagenet2012")
