"""Parameter groups from path patterns: the NFNet defaults reproduce the original grouping."""

import collections
import math
from typing import NamedTuple

import jax
import numpy as np
import pytest

from nfnets_jax.optim import (
    NFNET_NO_CLIP_PATTERNS,
    NFNET_NO_DECAY_PATTERNS,
    compile_patterns,
    labels_from_patterns,
    mask_from_patterns,
    path_to_str,
    tree_paths,
)
from tests.optim import reference as ref


def shape_tree(name):
    """An official tree with ShapeDtypeStruct leaves: paths and shapes, no memory."""
    shapes = ref.load_tree_shapes(name)
    flat = {p: jax.ShapeDtypeStruct(s, np.float32) for p, s in shapes.items()}
    return ref.nest(flat), shapes


def default_masks(tree):
    decay = mask_from_patterns(tree, NFNET_NO_DECAY_PATTERNS, invert=True)
    clip = mask_from_patterns(tree, NFNET_NO_CLIP_PATTERNS, invert=True)
    return ref.flatten(decay), ref.flatten(clip)


def test_f0_grouping_matches_the_original_counts():
    tree, shapes = shape_tree("NFNet-F0")
    assert sum(math.prod(s) for s in shapes.values()) == ref.official_count("NFNet-F0")
    decay, clip = default_masks(tree)
    assert len(decay) == 233
    no_decay = [p for p, d in decay.items() if not d]
    assert len(no_decay) == 151
    kinds = collections.Counter(p.rsplit("/", 1)[1] for p in no_decay)
    assert kinds == {"b": 25, "bias": 57, "gain": 57, "skip_gain": 12}
    assert [p for p, c in clip.items() if not c] == ["NFNet/~/linear/w"]
    # The three groups of the original and their scalar counts.
    size = lambda paths: sum(math.prod(shapes[p]) for p in paths)
    gains_biases = [p for p in decay if not decay[p]]
    fc_weights = [p for p in decay if decay[p] and not clip[p]]
    weights = [p for p in decay if decay[p] and clip[p]]
    assert (len(gains_biases), len(fc_weights), len(weights)) == (151, 1, 81)
    assert (size(gains_biases), size(fc_weights), size(weights)) == (113_492, 3_072_000, 68_303_792)
    # Every gain/bias is clipped, including the classifier bias and all skip gains.
    assert all(clip[p] for p in gains_biases)
    assert clip["NFNet/~/linear/b"] and not decay["NFNet/~/linear/b"]


@pytest.mark.parametrize("name", ["NFNet-F0", "NF_ResNet-ResNet50", "NF_RegNet-B0"])
def test_defaults_equal_the_original_rules(name):
    tree, shapes = shape_tree(name)
    decay, clip = default_masks(tree)
    for path in shapes:
        module, param = ref.split_path(path)
        assert decay[path] == (not ref.original_is_gain_or_bias(module, param)), path
        assert clip[path] == (not ref.original_is_fc_weight(module, param)), path
    top = name.split("-")[0]
    assert [p for p, c in clip.items() if not c] == [f"{top}/~/linear/w"]


def test_norm_layer_scale_and_offset_are_not_decayed():
    tree = {
        "resnet/~/conv": {"w": 0.0},
        "resnet/~/batchnorm": {"scale": 1.0, "offset": 0.0},
        "resnet/~/linear": {"w": 0.0, "b": 0.0},
        "resnet/~/my_bias_like": {"bias_free_w": 0.0},
    }
    decay = mask_from_patterns(tree, NFNET_NO_DECAY_PATTERNS, invert=True)
    assert decay == {
        "resnet/~/batchnorm": {"offset": False, "scale": False},
        "resnet/~/conv": {"w": True},
        "resnet/~/linear": {"b": False, "w": True},
        "resnet/~/my_bias_like": {"bias_free_w": False},  # the name contains 'bias'
    }
    assert all(isinstance(v, bool) for v in jax.tree.leaves(decay))


def test_patterns_match_whole_paths_only():
    tree = {"m": {"b": 0, "bb": 0, "w": 0}, "b": {"w": 0}}
    assert mask_from_patterns(tree, [r".*/b"]) == {
        "b": {"w": False},
        "m": {"b": True, "bb": False, "w": False},
    }


def test_unmatched_pattern_is_an_error_naming_it():
    tree = {"NFNet/~/conv": {"w": 0, "bias": 0}}
    with pytest.raises(ValueError, match=r"\['\.\*/bais'\] match no parameter path") as e:
        mask_from_patterns(tree, [r".*/bias", r".*/bais"], what="opt_config.no_decay_patterns")
    assert "opt_config.no_decay_patterns" in str(e.value)
    assert "'NFNet/~/conv/bias'" in str(e.value)  # shows what paths look like
    got = mask_from_patterns(tree, [r".*/bais"], allow_unmatched=True)
    assert got == {"NFNet/~/conv": {"bias": False, "w": False}}


def test_bad_patterns():
    with pytest.raises(ValueError, match="not a valid regular expression"):
        mask_from_patterns({"a": 0}, ["(unclosed"])
    with pytest.raises(TypeError, match="wrap it in a list"):
        mask_from_patterns({"a": 0}, ".*")
    with pytest.raises(TypeError, match="must hold strings"):
        compile_patterns([3])


def test_labels_first_rule_wins_and_default():
    tree, shapes = shape_tree("NFNet-F0")
    labels = ref.flatten(
        labels_from_patterns(
            tree,
            [("no_decay", NFNET_NO_DECAY_PATTERNS), ("fc", NFNET_NO_CLIP_PATTERNS)],
            default="weights",
        )
    )
    counts = collections.Counter(labels.values())
    assert counts == {"no_decay": 151, "fc": 1, "weights": 81}
    assert labels["NFNet/~/linear/b"] == "no_decay" and labels["NFNet/~/linear/w"] == "fc"
    with pytest.raises(ValueError, match="label 'x'"):
        labels_from_patterns({"a": 0}, {"x": ["nope"]}, default="y")


class Pair(NamedTuple):
    first: int
    second: int


def test_paths_of_other_containers():
    tree = {"layers": [{"w": 1}, Pair(2, 3)], "t": (4,)}
    assert jax.tree.leaves(tree_paths(tree)) == [
        "layers/0/w",
        "layers/1/first",
        "layers/1/second",
        "t/0",
    ]
    flat, _ = jax.tree_util.tree_flatten_with_path({"NFNet/~/linear": {"w": 0}})
    assert path_to_str(flat[0][0]) == "NFNet/~/linear/w"
