"""Where examples come from: tfds datasets, image folders and scikit-learn's digits.

A dataset is named by one string:

* `'imagenet2012'` or any other tfds image-classification name (`'cifar10'`,
  `'imagenette/320px-v2'`, ...), read from a prepared tfds `data_dir` (never downloaded
  here: see `nfnets_jax.data.prepare`);
* `'folder:/path/to/root'`: image files laid out as `root/<split>/<class>/<image>`
  (JPEG, PNG, BMP or GIF); classes are the sorted union of class directory names;
* `'digits'`: scikit-learn's 1,797 real 8x8 handwritten digits (offline), split into
  the first 1,437 examples for `'train'` and the last 360 for `'validation'`. Grey
  levels 0-16 become uint8 RGB (`round(v * 255 / 16)`, replicated over 3 channels).

Splits may be sliced with absolute example indices, Python style: `'train[:10000]'`,
`'train[10000:]'` (the original's hold-out split), `'validation[-500:]'`.

Each source yields examples as `{'image': <encoded bytes> or uint8 [h, w, 3],
'label': int32}`. tfds sources are streamed in their stored record order; folder and
digits sources allow random access, so shuffling them is a cheap index permutation.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from collections.abc import Callable, Mapping

import numpy as np

from nfnets_jax.data.tf_setup import tf
from nfnets_jax.errors import NFNetsError

__all__ = [
    "DIGITS",
    "DatasetError",
    "DatasetInfo",
    "FOLDER_PREFIX",
    "Source",
    "dataset_info",
    "digits_arrays",
    "get_source",
    "parse_split",
    "shard_range",
]

DIGITS = "digits"
FOLDER_PREFIX = "folder:"
# Fixed digits split: the first 80% (1,437 examples) train, the last 360 validate.
DIGITS_TRAIN_SIZE = 1437
# load_digits() grey levels run 0..16.
DIGITS_MAX_LEVEL = 16.0
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
# Preferred evaluation split names, most preferred first.
_EVAL_SPLIT_NAMES = ("validation", "val", "test")

_IMAGENET_STEPS = """\
ImageNet (ILSVRC 2012) needs a manual download:
  1. Register at https://image-net.org/download-images and download
     ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar.
  2. Put both tar files in one directory, e.g. {data_dir}/downloads/manual/.
  3. Build the tfds dataset once (about 150 GB written to data_dir):
       python -m nfnets_jax.data.prepare imagenet2012 --data_dir={data_dir} \\
           --manual_dir={data_dir}/downloads/manual"""


class DatasetError(NFNetsError, ValueError):
    """A dataset name, split or directory that cannot be used; the message says what to do."""

    exit_code = 2


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a dataset holds, known without reading images.

    Attributes:
        name: the dataset name as given.
        num_classes: number of classes (labels are 0..num_classes-1).
        splits: split name -> number of examples.
        train_split: the split training uses by default.
        eval_split: the split evaluation uses by default.
        data_dir: the tfds data directory (None for folders and digits).
    """

    name: str
    num_classes: int
    splits: Mapping[str, int]
    train_split: str
    eval_split: str
    data_dir: str | None = None

    def num_examples(self, split: str | None = None) -> int:
        """Number of examples in `split` (default: the train split), slices included."""
        _, begin, end = parse_split(self, split or self.train_split)
        return end - begin


_SLICE = re.compile(r"^([^\[\]]+?)(?:\[(-?\d*):(-?\d*)\])?$")


def parse_split(info: DatasetInfo, split: str) -> tuple[str, int, int]:
    """Resolves `'name'` or `'name[a:b]'` into `(name, begin, end)` example indices.

    Args:
        info: the dataset's info.
        split: a split name, optionally sliced with integer indices (Python rules,
            negatives count from the end).

    Returns:
        `(split_name, begin, end)` with `0 <= begin < end <= size`.

    Raises:
        DatasetError: for unknown split names, malformed or empty slices.

    Example:
        >>> parse_split(dataset_info('digits'), 'train[:1000]')
        ('train', 0, 1000)
    """
    match = _SLICE.match(split.strip())
    if not match:
        raise DatasetError(
            f"Split {split!r} of {info.name!r} is malformed: use 'name' or 'name[a:b]' with "
            "integer example indices, e.g. 'train[10000:]'."
        )
    name, start, stop = match.groups()
    if name not in info.splits:
        raise DatasetError(
            f"Dataset {info.name!r} has no split {name!r}; its splits are {dict(info.splits)}."
        )
    size = info.splits[name]
    begin, end, _ = slice(int(start) if start else None, int(stop) if stop else None).indices(size)
    if end <= begin:
        raise DatasetError(f"Split {split!r} of {info.name!r} (size {size}) selects no examples.")
    return name, begin, end


def shard_range(begin: int, end: int, process_index: int, process_count: int) -> tuple[int, int]:
    """The contiguous block of `[begin, end)` read by one process.

    Blocks follow `np.array_split(np.arange(begin, end), process_count)`: the first
    `n % process_count` processes get one extra example. This is the original's
    per-host sharding.

    Args:
        begin: first example index.
        end: one past the last example index.
        process_index: this process, in `[0, process_count)`.
        process_count: number of processes.

    Returns:
        `(start, stop)` of this process's block (possibly empty).

    Raises:
        ValueError: for an out-of-range `process_index` or a non-positive count.

    Example:
        >>> shard_range(0, 10, 1, 3)
        (4, 7)
    """
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(
            f"process_index={process_index} must be in [0, process_count={process_count})."
        )
    base, extra = divmod(end - begin, process_count)
    start = begin + process_index * base + min(process_index, extra)
    return start, start + base + (1 if process_index < extra else 0)


class Source:
    """Reads the examples of one dataset.

    Attributes:
        info: the dataset's `DatasetInfo`.
        random_access: whether `element` is available (cheap index lookups).
    """

    info: DatasetInfo
    random_access: bool = False

    def read(self, split: str, start: int, stop: int) -> tf.data.Dataset:
        """Examples `start..stop-1` of `split`, always in the same order."""
        if not self.random_access:
            raise NotImplementedError
        return tf.data.Dataset.range(start, stop).map(
            self.element(split), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
        )

    def element(self, split: str) -> Callable[[tf.Tensor], dict[str, tf.Tensor]]:
        """A graph function from an int64 example index of `split` to the example."""
        raise NotImplementedError


@functools.lru_cache(maxsize=1)
def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits as uint8 RGB [1797, 8, 8, 3] (0..255) and int32 labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    grey = np.rint(digits.images * (255.0 / DIGITS_MAX_LEVEL)).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1), digits.target.astype(np.int32)


class _DigitsSource(Source):
    random_access = True

    def __init__(self) -> None:
        images, _ = digits_arrays()
        self.info = DatasetInfo(
            name=DIGITS,
            num_classes=10,
            splits={"train": DIGITS_TRAIN_SIZE, "validation": len(images) - DIGITS_TRAIN_SIZE},
            train_split="train",
            eval_split="validation",
        )

    def element(self, split: str):
        images, labels = digits_arrays()
        offset = 0 if split == "train" else DIGITS_TRAIN_SIZE
        images_t = tf.constant(images)
        labels_t = tf.constant(labels)

        def lookup(index: tf.Tensor) -> dict[str, tf.Tensor]:
            position = tf.cast(index, tf.int32) + offset
            return {"image": tf.gather(images_t, position), "label": tf.gather(labels_t, position)}

        return lookup


class _FolderSource(Source):
    random_access = True

    def __init__(self, name: str) -> None:
        root = os.path.expanduser(name[len(FOLDER_PREFIX) :])
        if not os.path.isdir(root):
            raise DatasetError(
                f"Image folder {root!r} (from {name!r}) does not exist. Lay images out as "
                "<root>/<split>/<class>/<image>.jpg|png and pass 'folder:<root>'."
            )
        files: dict[str, list[tuple[str, str]]] = {}
        for split in sorted(os.listdir(root)):
            split_dir = os.path.join(root, split)
            if not os.path.isdir(split_dir):
                continue
            entries = []
            for cls in sorted(os.listdir(split_dir)):
                class_dir = os.path.join(split_dir, cls)
                if not os.path.isdir(class_dir):
                    continue
                for fname in sorted(os.listdir(class_dir)):
                    if fname.lower().endswith(IMAGE_EXTENSIONS):
                        entries.append((os.path.join(class_dir, fname), cls))
            if entries:
                files[split] = entries
        if not files:
            raise DatasetError(
                f"Image folder {root!r} holds no images in <root>/<split>/<class>/ "
                f"directories (extensions {IMAGE_EXTENSIONS})."
            )
        classes = sorted({cls for entries in files.values() for _, cls in entries})
        class_index = {cls: i for i, cls in enumerate(classes)}
        self.classes = classes
        self._paths = {s: np.array([p for p, _ in e]) for s, e in files.items()}
        self._labels = {
            s: np.array([class_index[c] for _, c in e], np.int32) for s, e in files.items()
        }
        splits = {s: len(e) for s, e in files.items()}
        train = "train" if "train" in splits else next(iter(splits))
        evals = [s for s in _EVAL_SPLIT_NAMES if s in splits]
        self.info = DatasetInfo(
            name=name,
            num_classes=len(classes),
            splits=splits,
            train_split=train,
            eval_split=evals[0] if evals else train,
        )

    def element(self, split: str):
        paths = tf.constant(self._paths[split])
        labels = tf.constant(self._labels[split])

        def lookup(index: tf.Tensor) -> dict[str, tf.Tensor]:
            return {
                "image": tf.io.read_file(tf.gather(paths, index)),
                "label": tf.gather(labels, index),
            }

        return lookup


def _resolved_data_dir(data_dir: str | None) -> str:
    if data_dir is not None:
        return os.path.expanduser(data_dir)
    return os.path.expanduser(
        os.environ.get("TFDS_DATA_DIR", os.path.join("~", "tensorflow_datasets"))
    )


class _TfdsSource(Source):
    random_access = False

    def __init__(self, name: str, data_dir: str | None) -> None:
        import tensorflow_datasets as tfds

        resolved = _resolved_data_dir(data_dir)
        try:
            builder = tfds.builder(name, data_dir=resolved)
        except tfds.core.registered.DatasetNotFoundError as e:
            raise DatasetError(
                f"Unknown dataset {name!r}: it is not 'digits', not 'folder:<root>' and not a "
                "tfds dataset name (e.g. 'imagenet2012', 'cifar10'). Check the spelling."
            ) from e
        if not builder.is_prepared():
            base = name.split(":")[0].split("/")[0]
            if not os.path.isdir(resolved):
                where = f"The data_dir {resolved!r} does not exist."
            else:
                where = f"It is not prepared in data_dir {resolved!r}."
            if base == "imagenet2012":
                steps = _IMAGENET_STEPS.format(data_dir=resolved)
            else:
                steps = (
                    "Prepare it once (downloads, needs internet):\n"
                    f"  python -m nfnets_jax.data.prepare {name} --data_dir={resolved}\n"
                    "or pass data_dir= (or set TFDS_DATA_DIR) to where it was prepared."
                )
            raise DatasetError(f"Dataset {name!r} is not available. {where}\n{steps}")
        keys = builder.info.supervised_keys
        features = builder.info.features
        if (
            not keys
            or len(keys) != 2
            or not isinstance(features[keys[0]], tfds.features.Image)
            or not isinstance(features[keys[1]], tfds.features.ClassLabel)
        ):
            raise DatasetError(
                f"Dataset {name!r} is not an image classification dataset (its supervised "
                f"keys are {keys}); an (Image, ClassLabel) pair is needed."
            )
        self._builder = builder
        self._image_key, self._label_key = keys
        splits = {s: info.num_examples for s, info in builder.info.splits.items()}
        train = "train" if "train" in splits else next(iter(splits))
        evals = [s for s in _EVAL_SPLIT_NAMES if s in splits]
        self.info = DatasetInfo(
            name=name,
            num_classes=features[keys[1]].num_classes,
            splits=splits,
            train_split=train,
            eval_split=evals[0] if evals else train,
            data_dir=resolved,
        )

    def read(self, split: str, start: int, stop: int) -> tf.data.Dataset:
        import tensorflow_datasets as tfds

        if stop <= start:
            return tf.data.Dataset.from_tensor_slices(
                {"image": tf.constant([], tf.string), "label": tf.constant([], tf.int32)}
            )
        instruction = tfds.core.ReadInstruction(split, from_=start, to=stop, unit="abs")
        ds = self._builder.as_dataset(
            split=instruction,
            decoders={self._image_key: tfds.decode.SkipDecoding()},
            shuffle_files=False,
            read_config=tfds.ReadConfig(try_autocache=False),
        )
        image_key, label_key = self._image_key, self._label_key
        return ds.map(
            lambda ex: {"image": ex[image_key], "label": tf.cast(ex[label_key], tf.int32)},
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )


def get_source(name: str, data_dir: str | None = None) -> Source:
    """The `Source` for a dataset name (see the module docstring for the names).

    Args:
        name: `'digits'`, `'folder:<root>'` or a tfds name.
        data_dir: tfds data directory (default: `$TFDS_DATA_DIR` or
            `~/tensorflow_datasets`); ignored for folders and digits.

    Returns:
        The source.

    Raises:
        DatasetError: unknown name, missing folder or unprepared tfds dataset, with the
            steps to fix it.
    """
    if not isinstance(name, str) or not name.strip():
        raise DatasetError(f"A dataset name is needed (got {name!r}).")
    name = name.strip()
    if name == DIGITS:
        return _DigitsSource()
    if name.startswith(FOLDER_PREFIX):
        return _FolderSource(name)
    return _TfdsSource(name, data_dir)


def dataset_info(name: str, data_dir: str | None = None) -> DatasetInfo:
    """Classes, split sizes and default splits of a dataset, without reading images.

    Args:
        name: `'digits'`, `'folder:<root>'`, `'imagenet2012'` or another tfds name.
        data_dir: tfds data directory (default: `$TFDS_DATA_DIR` or
            `~/tensorflow_datasets`).

    Returns:
        The `DatasetInfo`.

    Raises:
        DatasetError: unknown name, missing folder/data_dir or unprepared dataset (for
            ImageNet the message lists the manual-download steps).

    Example:
        >>> info = dataset_info('digits')
        >>> info.num_classes, info.splits
        (10, {'train': 1437, 'validation': 360})
    """
    return get_source(name, data_dir).info
