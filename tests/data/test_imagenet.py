"""ImageNet class names: 1,000 entries in tfds' label order, and the released-weights facts."""

import importlib.resources

import pytest

from nfnets_jax import checkpoints
from nfnets_jax.data import imagenet


def tfds_wordnet_ids():
    text = (
        importlib.resources.files("tensorflow_datasets")
        .joinpath("datasets/imagenet2012/labels.txt")
        .read_text()
    )
    return tuple(text.split())


def test_wordnet_ids_follow_the_tfds_label_order():
    assert imagenet.wordnet_ids() == tfds_wordnet_ids()
    assert len(set(imagenet.wordnet_ids())) == 1000


def test_class_names_are_wordnet_synset_words():
    names, full = imagenet.class_names(), imagenet.class_names(full=True)
    assert len(names) == len(full) == 1000
    # A few well-known labels (ILSVRC 2012 devkit).
    assert names[0] == "tench" and full[0] == "tench, Tinca tinca"
    assert names[1] == "goldfish"
    assert names[281] == "tabby" and full[281] == "tabby, tabby cat"
    assert names[945] == "bell pepper"  # what DeepMind's colab predicts for its demo image
    assert names[999] == "toilet tissue"
    # Every short name is the first synset word; only two first words repeat.
    assert all(f.startswith(n) for n, f in zip(names, full, strict=True))
    assert sorted(n for n in set(names) if names.count(n) > 1) == ["crane", "maillot"]


def test_released_weights():
    assert checkpoints.released_weights_url("F3") == (
        "https://storage.googleapis.com/dm-nfnets/F3_haiku.npz"
    )
    assert set(checkpoints.REPORTED_ACCURACY) == set(checkpoints.RELEASED_VARIANTS)
    assert checkpoints.REPORTED_ACCURACY["F0"] == (83.6, 96.8)
    with pytest.raises(ValueError, match="F0, F1, F2, F3, F4, F5, F6"):
        checkpoints.released_weights_url("F7")
