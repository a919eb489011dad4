"""Recognising networks from parameter trees; specs from configs and sidecar files."""

import json

import jax
import numpy as np
import pytest

from experiments import configs
from nfnets_jax import checkpoints
from nfnets_jax.checkpoints import ModelSpec, UnrecognizedCheckpointError, infer_model_spec
from tests.models.conftest import GOLDEN


def shapes(tree):
    return {f"{m}/{n}": tuple(v.shape) for m, sub in tree.items() for n, v in sub.items()}


@pytest.fixture(scope="module")
def official_trees():
    trees = json.loads((GOLDEN / "official_param_trees.json").read_text())["trees"]
    return {
        name: checkpoints.unflatten_params(
            {p: jax.ShapeDtypeStruct(tuple(s), np.float32) for p, s in tree.items()}
        )
        for name, tree in trees.items()
    }


# name in official_param_trees.json -> (model, variant, test size, preprocessing, modules)
OFFICIAL = {
    "NFNet-F0": ("NFNet", "F0", 256, "resize_crop_32", 94),  # spec 3.1: 94 modules
    "NFNet-F1": ("NFNet", "F1", 320, "resize_crop_32", 178),
    "NF_RegNet-B0": ("NF_RegNet", "B0", 224, "crop_resize", None),  # spec 1.2: B0 tests at 224
    "NF_ResNet-ResNet50": ("NF_ResNet", "ResNet50", 224, "crop_resize", None),
}


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_deepminds_trees_are_recognised_exactly(official_trees, name):
    model, variant, size, preproc, modules = OFFICIAL[name]
    tree = official_trees[name]
    if modules is not None:
        assert len(tree) == modules
    spec = infer_model_spec(tree)
    assert (spec.model, spec.variant, spec.image_size, spec.eval_preproc) == (
        model,
        variant,
        size,
        preproc,
    )
    assert dict(spec.model_kwargs) == {"variant": variant}  # nothing beyond the defaults
    assert spec.num_classes == 1000 and spec.class_names[945] == "bell pepper"
    # The spec rebuilds DeepMind's tree exactly.
    assert shapes(spec.abstract_params()) == shapes(tree)


@pytest.mark.parametrize("variant,modules", [("F6", 598), ("F3+", None)])
def test_other_variants_are_recognised(variant, modules):
    tree = ModelSpec("NFNet", {"variant": variant}, 1000, 0, "").abstract_params()
    if modules is not None:
        assert len(tree) == modules  # spec 3.1: 6 + 7 * 84 blocks + 4
    spec = infer_model_spec(tree)
    assert spec.variant == variant and dict(spec.model_kwargs) == {"variant": variant}
    assert spec.image_size == {"F6": 576, "F3+": 416}[variant]  # Table 1 test sizes


CUSTOM = [
    # The demo preset's narrow NFNet.
    dict(width_pattern=(32, 64, 128, 128), depth_pattern=(1, 1, 1, 1), group_width=8,
         stem_widths=(8, 16, 16)),
    # Two stages, per-stage groups, one conv per block, odd SE ratio and final width.
    dict(width_pattern=(24, 48), depth_pattern=(2, 1), group_width=(8, 16),
         se_ratio=0.3, use_two_convs=False, final_conv_mult=None, final_conv_ch=40,
         stem_widths=(4, 6, 8)),
    # A width multiplier (the stem keeps the unscaled width) and a bottleneck ratio.
    dict(width=0.75, width_pattern=(32, 64), depth_pattern=(1, 2), group_width=8,
         expansion=0.75),
]  # fmt: skip


@pytest.mark.parametrize("kwargs", CUSTOM, ids=["demo", "two_stages", "width_mult"])
def test_custom_nfnets_are_rebuilt_from_their_tree(kwargs):
    tree = ModelSpec("NFNet", {"variant": "F0", **kwargs}, 7, 0, "").abstract_params()
    spec = infer_model_spec(tree)
    assert spec.variant is None and spec.num_classes == 7 and spec.class_names is None
    assert spec.image_size == 256  # no standard depth: F0's test size
    assert shapes(spec.abstract_params()) == shapes(tree)


def test_custom_nfnet_of_a_standard_depth_gets_that_variants_test_size():
    tree = ModelSpec("NFNet", {"variant": "F2", "width_pattern": (64, 64, 64, 64),
                               "group_width": 16, "stem_widths": (8, 8, 8)}, 5, 0,
                     "").abstract_params()  # fmt: skip
    spec = infer_model_spec(tree)
    assert spec.variant is None and spec.model_kwargs["depth_pattern"] == (3, 6, 18, 9)
    assert spec.image_size == 352  # F2's


def test_broken_trees_raise_clear_errors(official_trees):
    tree = dict(official_trees["NFNet-F0"])
    for module in [m for m in tree if m.startswith("NFNet/~/nf_block_5")]:
        del tree[module]
    with pytest.raises(UnrecognizedCheckpointError, match="nf_block_5 are missing"):
        infer_model_spec(tree)
    with pytest.raises(UnrecognizedCheckpointError, match="not an NFNet"):
        infer_model_spec({"ResNet/~/conv": {"w": np.zeros((3, 3, 3, 8))}})
    with pytest.raises(UnrecognizedCheckpointError, match="several top-level modules"):
        infer_model_spec({"A/~/x": {"w": np.zeros(1)}, "B/~/y": {"w": np.zeros(1)}})
    with pytest.raises(UnrecognizedCheckpointError, match="no parameters"):
        infer_model_spec({})
    regnet = dict(official_trees["NF_RegNet-B0"])
    regnet["NF_RegNet/~/final_conv"] = {"w": jax.ShapeDtypeStruct((1, 1, 330, 7), np.float32)}
    with pytest.raises(UnrecognizedCheckpointError, match="matches none of its variants"):
        infer_model_spec(regnet)


def test_spec_from_config_names_only_exact_variants():
    f1 = checkpoints.spec_from_config(configs.load_config("nfnet_f1"), 1000)
    assert (f1.variant, f1.image_size, f1.eval_preproc, f1.dataset) == (
        "F1",
        320,
        "resize_crop_32",
        "imagenet2012",
    )
    demo = checkpoints.spec_from_config(configs.load_config("nfnet_demo"), 10)
    assert demo.variant is None and demo.image_size == 32 and demo.eval_preproc == "resize"
    assert demo.model_kwargs["width_pattern"] == (32, 64, 128, 128)


def test_sidecar_round_trip(tmp_path):
    spec = ModelSpec(
        "NFNet",
        {"variant": "F0", "width_pattern": (16, 32), "depth_pattern": (1, 1), "group_width": 8},
        3,
        48,
        "resize",
        class_names=("cat", "dog", "bird"),
        dataset="folder:/data/pets",
    )
    checkpoint = tmp_path / "mine.npz"
    assert checkpoints.read_sidecar(checkpoint) is None
    path = checkpoints.write_sidecar(spec, checkpoint)
    assert path == str(checkpoint) + ".json"
    back = checkpoints.read_sidecar(checkpoint)
    assert back.class_names == ("cat", "dog", "bird") and back.dataset == "folder:/data/pets"
    assert back.model_kwargs["width_pattern"] == [16, 32]  # JSON lists; NFNet takes them
    assert shapes(back.abstract_params()) == shapes(spec.abstract_params())
    (tmp_path / "bad.npz.json").write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match="not an nfnets_jax model spec"):
        checkpoints.read_sidecar(tmp_path / "bad.npz")
    with pytest.raises(ValueError, match="2 class names for a model with 3 classes"):
        ModelSpec("NFNet", {}, 3, 8, "resize", class_names=("a", "b"))
