"""ImageNet facts the pretrained models need: class names, released weights, reported numbers.

The 1,000 ILSVRC 2012 classes are listed in label order (the sorted WordNet ids, which is
tensorflow_datasets' ``imagenet2012/labels.txt`` and the order DeepMind's checkpoints
were trained with) in the package data file ``nfnets_jax/data/imagenet2012_classes.txt``
with their WordNet synset words. No TensorFlow or JAX is imported here.

References:
    Russakovsky et al. ImageNet Large Scale Visual Recognition Challenge.
    arXiv:1409.0575.
    Brock, De, Smith, Simonyan. High-Performance Large-Scale Image Recognition Without
    Normalization. arXiv:2102.06171 (Table 3; released weights in the authors' README).
"""

from __future__ import annotations

import functools
import importlib.resources

__all__ = [
    "NUM_CLASSES",
    "RELEASED_VARIANTS",
    "REPORTED_ACCURACY",
    "WEIGHTS_URL",
    "class_names",
    "released_weights_url",
    "wordnet_ids",
]

NUM_CLASSES = 1000
#: Where DeepMind publishes the NFNet ImageNet weights (spec section 3.2).
WEIGHTS_URL = "https://storage.googleapis.com/dm-nfnets/{variant}_haiku.npz"
#: Variants with released weights: F0-F5 trained without SAM, F6 with SAM.
RELEASED_VARIANTS = ("F0", "F1", "F2", "F3", "F4", "F5", "F6")
#: ImageNet top-1/top-5 (%) reported for the released checkpoints (spec section 3.2; the
#: paper's numbers, means of 3 seeds except F6+SAM), at the variant's test resolution.
REPORTED_ACCURACY = {
    "F0": (83.6, 96.8),
    "F1": (84.7, 97.1),
    "F2": (85.1, 97.3),
    "F3": (85.7, 97.5),
    "F4": (85.9, 97.6),
    "F5": (86.0, 97.6),
    "F6": (86.5, 97.9),
}
_CLASSES_FILE = "data/imagenet2012_classes.txt"


def released_weights_url(variant: str) -> str:
    """Download address of DeepMind's weights for ``variant`` ('F0' ... 'F6').

    Raises:
        ValueError: for variants without released weights.

    Example:
        >>> released_weights_url('F0')
        'https://storage.googleapis.com/dm-nfnets/F0_haiku.npz'
    """
    if variant not in RELEASED_VARIANTS:
        raise ValueError(
            f"DeepMind released weights for {', '.join(RELEASED_VARIANTS)} only, not {variant!r}."
        )
    return WEIGHTS_URL.format(variant=variant)


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
