"""ImageNet's class names, in the label order of the tfds build and DeepMind's checkpoints.

The 1,000 ILSVRC 2012 classes are listed in label order (the sorted WordNet ids, which is
tensorflow_datasets' ``imagenet2012/labels.txt`` and the order DeepMind's checkpoints
were trained with) in the package data file ``nfnets_jax/data/imagenet2012_classes.txt``
with their WordNet synset words. No TensorFlow or JAX is imported here.

References:
    Russakovsky et al. ImageNet Large Scale Visual Recognition Challenge.
    arXiv:1409.0575.
"""

from __future__ import annotations

import functools
import importlib.resources

__all__ = ["NUM_CLASSES", "class_names", "wordnet_ids"]

NUM_CLASSES = 1000
_CLASSES_FILE = "data/imagenet2012_classes.txt"


@functools.lru_cache(maxsize=1)
def _entries() -> tuple[tuple[str, str], ...]:
    text = importlib.resources.files("nfnets_jax").joinpath(_CLASSES_FILE).read_text("utf-8")
    entries = []
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            wnid, words = line.split("\t")
            entries.append((wnid, words))
    if len(entries) != NUM_CLASSES:  # a damaged installation, not a user error
        raise RuntimeError(f"{_CLASSES_FILE} lists {len(entries)} classes, expected 1000.")
    return tuple(entries)


def wordnet_ids() -> tuple[str, ...]:
    """The 1,000 WordNet ids in label order (``'n01440764'`` is label 0).

    Example:
        >>> wordnet_ids()[:2]
        ('n01440764', 'n01443537')
    """
    return tuple(wnid for wnid, _ in _entries())


def class_names(full: bool = False) -> tuple[str, ...]:
    """Human-readable names of the 1,000 classes in label order.

    Args:
        full: all synset words (``'tabby, tabby cat'``) instead of the first one
            (``'tabby'``). First words are not unique: 'crane' (bird, 134; machine, 517)
            and 'maillot' (638, 639) appear twice.

    Example:
        >>> class_names()[945], class_names(full=True)[281]
        ('bell pepper', 'tabby, tabby cat')
    """
    if full:
        return tuple(words for _, words in _entries())
    return tuple(words.split(",")[0].strip() for _, words in _entries())
