"""Class names of the datasets this project reads, in label order, known offline.

``imagenet2012`` gets the packaged WordNet names (:mod:`nfnets_jax.data.imagenet`),
``digits`` '0'..'9', an image folder its sorted class directory names, other tfds
datasets their prepared metadata. TensorFlow is imported only for that last case.
"""

from __future__ import annotations

import os

from nfnets_jax.data import imagenet

__all__ = ["dataset_class_names"]


def dataset_class_names(name: str, data_dir: str | None = None) -> tuple[str, ...] | None:
    """Class names of a dataset in label order, or None when they cannot be known offline.

    ``imagenet2012`` gets the packaged WordNet names, ``digits`` '0'..'9', an image folder
    its sorted class directory names, other tfds datasets their prepared metadata.
    """
    if name == "imagenet2012":
        return imagenet.class_names()
    if name == "digits":
        return tuple(str(d) for d in range(10))
    if name.startswith("folder:"):
        root = os.path.expanduser(name[len("folder:") :])
        if not os.path.isdir(root):
            return None
        classes = set()
        for split in os.listdir(root):
            split_dir = os.path.join(root, split)
            if os.path.isdir(split_dir):
                classes.update(
                    c for c in os.listdir(split_dir) if os.path.isdir(os.path.join(split_dir, c))
                )
        return tuple(sorted(classes)) or None
    try:
        from nfnets_jax.data.tf_setup import import_tensorflow

        import_tensorflow()  # before tfds loads it: quietly, off the GPUs
        import tensorflow_datasets as tfds

        builder = tfds.builder(name, data_dir=data_dir)
        if not builder.is_prepared():  # never download metadata
            return None
        return tuple(builder.info.features["label"].names)
    except Exception:  # noqa: BLE001 - names are a nicety; an unknown dataset has none.
        return None
