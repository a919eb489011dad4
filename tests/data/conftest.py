"""Shared data-test fixtures: real images shipped in packages, a tiny ImageNet, a folder."""

import json
import os

import numpy as np
import pytest

# ImageNet classes used by the tiny manual ImageNet (indices into tfds' labels.txt).
TINY_IMAGENET_CLASSES = (0, 1, 999)
TINY_IMAGENET_TRAIN_PER_CLASS = 4
TINY_IMAGENET_VALIDATION = 10


def _photos() -> list[np.ndarray]:
    import matplotlib.cbook
    from skimage import data as skdata
    from skimage import io as skio
    from sklearn.datasets import load_sample_images

    photos = [skdata.astronaut(), skdata.chelsea(), skdata.coffee(), skdata.rocket()]
    photos += list(load_sample_images().images)
    photos.append(skio.imread(matplotlib.cbook.get_sample_data("grace_hopper.jpg")))
    return [np.ascontiguousarray(p[..., :3]) for p in photos]


@pytest.fixture(scope="session")
def photos() -> list[np.ndarray]:
    """Seven real RGB photographs (300-640 px) from skimage, sklearn and matplotlib."""
    return _photos()


def small_views(photos: list[np.ndarray], count: int) -> list[np.ndarray]:
    """`count` distinct small real images (40-90 px, varied aspect) cut from `photos`."""
    views = []
    for i in range(count):
        photo = photos[i % len(photos)]
        stride = 4 + (i // len(photos)) % 3
        h = 40 + (7 * i) % 50
        w = 40 + (13 * i) % 50
        view = photo[::stride, ::stride][:h, :w]
        views.append(np.ascontiguousarray(view))
    return views


def encode(image: np.ndarray, fmt: str = "jpeg") -> bytes:
    """JPEG (quality 90) or PNG bytes of a uint8 RGB array, encoded by TensorFlow."""
    import tensorflow as tf

    if fmt == "jpeg":
        return tf.io.encode_jpeg(image, quality=90).numpy()
    return tf.io.encode_png(image).numpy()


@pytest.fixture(scope="session")
def imagenet_wnids() -> list[str]:
    import tensorflow_datasets as tfds

    return list(tfds.builder("imagenet2012").info.features["label"].names)


@pytest.fixture(scope="session")
def tiny_imagenet(tmp_path_factory, photos, imagenet_wnids):
    """A real `imagenet2012` tfds build from 12 train + 10 validation real JPEGs.

    Returns:
        `(data_dir, train_labels_by_file_stem, validation_labels)`.
    """
    from nfnets_jax.data.prepare import prepare_dataset, write_imagenet_tars

    root = tmp_path_factory.mktemp("tiny_imagenet")
    views = small_views(
        photos,
        len(TINY_IMAGENET_CLASSES) * TINY_IMAGENET_TRAIN_PER_CLASS + TINY_IMAGENET_VALIDATION,
    )
    train = {}
    for c, label in enumerate(TINY_IMAGENET_CLASSES):
        chunk = views[c * TINY_IMAGENET_TRAIN_PER_CLASS : (c + 1) * TINY_IMAGENET_TRAIN_PER_CLASS]
        train[imagenet_wnids[label]] = [encode(v) for v in chunk]
    validation = [encode(v) for v in views[-TINY_IMAGENET_VALIDATION:]]
    write_imagenet_tars(str(root / "manual"), train, validation)
    prepare_dataset("imagenet2012", str(root / "tfds"), str(root / "manual"))
    return str(root / "tfds")


@pytest.fixture(scope="session")
def imagenet_validation_labels() -> list[int]:
    """Labels tfds gives validation images 1, 2, ... (from its validation_labels.txt)."""
    import tensorflow_datasets as tfds

    path = os.path.join(
        os.path.dirname(tfds.__file__), "datasets", "imagenet2012", "validation_labels.txt"
    )
    with open(path) as f:
        wnids = [line.strip() for line in f]
    names = list(tfds.builder("imagenet2012").info.features["label"].names)
    return [names.index(w) for w in wnids[:TINY_IMAGENET_VALIDATION]]


@pytest.fixture(scope="session")
def mock_imagenet_dir(tmp_path_factory):
    """tfds metadata (dataset_info.json) for a mocked imagenet2012 with 8 + 8 examples."""
    import tensorflow_datasets as tfds

    data_dir = str(tmp_path_factory.mktemp("mock_imagenet"))
    builder = tfds.builder("imagenet2012", data_dir=data_dir)

    def split(name: str, n: int):
        template = tfds.core.ShardedFileTemplate(
            data_dir=builder.data_path,
            dataset_name="imagenet2012",
            split=name,
            filetype_suffix="tfrecord",
        )
        return tfds.core.SplitInfo(
            name=name, shard_lengths=[n], num_bytes=0, filename_template=template
        )

    builder.info.set_splits(tfds.core.SplitDict([split("train", 8), split("validation", 8)]))
    os.makedirs(builder.data_path, exist_ok=True)
    builder.info.write_to_directory(builder.data_path)
    with open(os.path.join(builder.data_path, "dataset_info.json")) as f:
        assert json.load(f)["splits"], "metadata without splits"
    return data_dir


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory, photos):
    """`root/<split>/<class>/` with real images, JPEG and PNG mixed, 3 classes.

    train: 5 + 4 + 3 images; validation: 2 + 2 + 1 images. Returns the root.
    """
    root = tmp_path_factory.mktemp("folder")
    layout = {"train": (5, 4, 3), "validation": (2, 2, 1)}
    views = iter(small_views(photos, 17))
    for split, counts in layout.items():
        for cls, count in zip(("cat", "dog", "rocket"), counts, strict=True):
            os.makedirs(root / split / cls)
            for k in range(count):
                fmt = "png" if k % 2 else "jpeg"
                ext = "png" if fmt == "png" else "jpg"
                (root / split / cls / f"img{k}.{ext}").write_bytes(encode(next(views), fmt))
    (root / "README.txt").write_text("not a split")
    return str(root)
