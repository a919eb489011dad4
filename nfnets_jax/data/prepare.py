"""Builds a tfds dataset once, so the input pipelines can read it offline.

ImageNet 2012 is built from the two official tar files placed in a manual directory
(nothing is downloaded):

    python -m nfnets_jax.data.prepare imagenet2012 --data_dir=~/tensorflow_datasets \\
        --manual_dir=/path/with/ILSVRC2012_img_train.tar_and_ILSVRC2012_img_val.tar

Other tfds datasets (cifar10, imagenette, ...) are downloaded by tfds when built, so
they need internet once:

    python -m nfnets_jax.data.prepare cifar10 --data_dir=~/tensorflow_datasets

The output uses the tfrecord format, which `tfds.load` and these pipelines read.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tarfile
from collections.abc import Mapping, Sequence

from nfnets_jax import cli
from nfnets_jax.data.sources import DatasetError, DatasetInfo, _resolved_data_dir, dataset_info

__all__ = ["prepare_dataset", "write_imagenet_tars"]

# Files the imagenet2012 builder needs in the manual directory.
IMAGENET_TARS = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")


def prepare_dataset(
    name: str, data_dir: str | None = None, manual_dir: str | None = None
) -> DatasetInfo:
    """Builds tfds dataset `name` in `data_dir` (a no-op if it is already built).

    Args:
        name: tfds name, e.g. `'imagenet2012'` or `'cifar10'`.
        data_dir: where to write it (default: `$TFDS_DATA_DIR` or
            `~/tensorflow_datasets`).
        manual_dir: directory holding manually downloaded files (for ImageNet, the two
            tars; default: `<data_dir>/downloads/manual`).

    Returns:
        The built dataset's `DatasetInfo`.

    Raises:
        FileNotFoundError: ImageNet tars missing from `manual_dir` (checked before any
            work).
        DatasetError: `name` is not a tfds dataset.

    Example:
        ImageNet from the two official tars (they need an image-net.org account):

        >>> prepare_dataset('imagenet2012', '/data/tfds', '/data/imagenet_tars')  # doctest: +SKIP

        The same build on a toy ImageNet of three blank images (see
        `write_imagenet_tars`); tfds reports its progress:

        >>> import tempfile
        >>> import tensorflow as tf
        >>> jpeg = tf.io.encode_jpeg(tf.zeros([8, 8, 3], tf.uint8)).numpy()
        >>> root = tempfile.TemporaryDirectory()
        >>> manual_dir = os.path.join(root.name, 'manual')
        >>> write_imagenet_tars(manual_dir, {'n01440764': [jpeg, jpeg]}, [jpeg])
        >>> info = prepare_dataset('imagenet2012', os.path.join(root.name, 'tfds'), manual_dir)
        Downloading and preparing dataset ...
        Dataset imagenet2012 downloaded and prepared to ...
        >>> info.splits, info.num_classes
        ({'train': 2, 'validation': 1}, 1000)
        >>> root.cleanup()
    """
    import tensorflow_datasets as tfds

    data_dir = _resolved_data_dir(data_dir)
    manual_dir = os.path.expanduser(manual_dir or os.path.join(data_dir, "downloads", "manual"))
    if name.split(":")[0].split("/")[0] == "imagenet2012":
        present = [f for f in IMAGENET_TARS if os.path.exists(os.path.join(manual_dir, f))]
        if not present:
            raise FileNotFoundError(
                f"Neither of {IMAGENET_TARS} is in the manual directory {manual_dir!r}. "
                "Download them from https://image-net.org/download-images (registration "
                "needed) and put them there, or pass --manual_dir."
            )
    try:
        builder = tfds.builder(name, data_dir=data_dir, file_format="tfrecord")
    except tfds.core.registered.DatasetNotFoundError:
        raise DatasetError(
            f"Unknown tfds dataset {name!r}: check the name in the tfds catalog "
            "(https://www.tensorflow.org/datasets/catalog), e.g. imagenet2012 or cifar10."
        ) from None
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir, try_download_gcs=False)
    )
    return dataset_info(name, data_dir)


def _add_file(archive: tarfile.TarFile, name: str, payload: bytes) -> None:
    member = tarfile.TarInfo(name)
    member.size = len(payload)
    archive.addfile(member, io.BytesIO(payload))


def write_imagenet_tars(
    manual_dir: str, train: Mapping[str, Sequence[bytes]], validation: Sequence[bytes]
) -> None:
    """Writes JPEG files in the layout of the two official ImageNet 2012 tars.

    `ILSVRC2012_img_train.tar` holds one uncompressed `<wnid>.tar` per class, each with
    `<wnid>_<k>.JPEG` files; `ILSVRC2012_img_val.tar` holds `ILSVRC2012_val_%08d.JPEG`
    files, whose labels the tfds builder takes from its `validation_labels.txt` in
    file-name order. Useful to try the ImageNet path end to end on a few images.

    Args:
        manual_dir: output directory (created).
        train: WordNet id (one of the 1000 in tfds' `labels.txt`) -> JPEG bytes.
        validation: JPEG bytes of validation images 1, 2, ...

    Example:
        >>> import tarfile, tempfile
        >>> import tensorflow as tf
        >>> jpeg = tf.io.encode_jpeg(tf.zeros([8, 8, 3], tf.uint8)).numpy()
        >>> root = tempfile.TemporaryDirectory()
        >>> write_imagenet_tars(root.name, {'n01440764': [jpeg, jpeg]}, [jpeg])
        >>> sorted(os.listdir(root.name))
        ['ILSVRC2012_img_train.tar', 'ILSVRC2012_img_val.tar']
        >>> with tarfile.open(os.path.join(root.name, 'ILSVRC2012_img_val.tar')) as val:
        ...     val.getnames()
        ['ILSVRC2012_val_00000001.JPEG']
        >>> root.cleanup()
    """
    os.makedirs(manual_dir, exist_ok=True)
    with tarfile.open(os.path.join(manual_dir, IMAGENET_TARS[0]), "w") as outer:
        for wnid, images in train.items():
            buffer = io.BytesIO()
            with tarfile.open(fileobj=buffer, mode="w") as inner:
                for k, jpeg in enumerate(images):
                    _add_file(inner, f"{wnid}_{k}.JPEG", jpeg)
            _add_file(outer, f"{wnid}.tar", buffer.getvalue())
    with tarfile.open(os.path.join(manual_dir, IMAGENET_TARS[1]), "w") as archive:
        for k, jpeg in enumerate(validation, start=1):
            _add_file(archive, f"ILSVRC2012_val_{k:08d}.JPEG", jpeg)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", help="tfds dataset name, e.g. imagenet2012")
    parser.add_argument("--data_dir", default=None, help="tfds data directory to write")
    parser.add_argument("--manual_dir", default=None, help="directory of manual downloads")
    parser.add_argument("--verbose", action="store_true", help="show library start-up output")
    args = parser.parse_args(argv)
    cli.quiet_console(args.verbose)

    def prepare() -> int:
        try:
            info = prepare_dataset(args.name, args.data_dir, args.manual_dir)
        except FileNotFoundError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        print(
            f"Built {info.name} in {info.data_dir}: {dict(info.splits)}, "
            f"{info.num_classes} classes."
        )
        return 0

    return cli.run_main(prepare)


if __name__ == "__main__":
    sys.exit(main())
