"""NF-ResNet: DeepMind's tree and sizes, the fixed defaults and FLOP count."""

import haiku as hk
import jax
import jax.numpy as jnp
import pytest

from nfnets_jax.models import NF_ResNet, NFResNet, count_flops, nf_resnet_params, traced_macs
from tests.models.conftest import abstract_params, count, tree_shapes

# Millions of parameters with width 4, to the printed digits (spec 1.3).
PARAMS_M = {"ResNet101": 44.549, "ResNet152": 60.193, "ResNet200": 64.674, "ResNet288": 146.461}


def test_resnet50_tree_and_count_equal_deepminds(official):
    params = abstract_params(lambda: NFResNet(1000, "ResNet50"))
    assert tree_shapes(params) == official["trees"]["NF_ResNet-ResNet50"]
    assert count(params) == 25_557_048 == official["counts"]["NF_ResNet-ResNet50"]


@pytest.mark.parametrize("variant", sorted(PARAMS_M))
def test_parameter_counts(variant):
    params = abstract_params(lambda: NFResNet(1000, variant))
    assert round(count(params) / 1e6, 3) == PARAMS_M[variant]


def test_resnet26_and_the_variant_table():
    assert {k: v["depth"] for k, v in nf_resnet_params.items()} == {
        "ResNet26": [2, 2, 2, 2],
        "ResNet50": [3, 4, 6, 3],
        "ResNet101": [3, 4, 23, 3],
        "ResNet152": [3, 8, 36, 3],
        "ResNet200": [3, 24, 36, 3],
        "ResNet288": [24, 24, 24, 24],
        "ResNet600": [50, 50, 50, 50],
    }
    tree = tree_shapes(abstract_params(lambda: NFResNet(1000, "ResNet26")))
    assert len([k for k in tree if k.endswith("skip_gain")]) == 8
    assert tree["NF_ResNet/~/nf_res_block_7/~/conv2/w"] == [1, 1, 512, 2048]


def test_drop_rate_default_is_per_variant_and_overridable():
    def rate(**kw):
        return hk.transform(lambda: NFResNet(10, **kw).drop_rate).apply({}, None)

    assert rate(variant="ResNet50") == 0.25  # the original raised KeyError here
    assert rate(variant="ResNet152") == 0.3
    assert rate(variant="ResNet50", drop_rate=0.1) == 0.1


@pytest.mark.parametrize("use_se", [False, True])
def test_count_flops_works_without_se_and_counts_the_max_pool(use_se):
    make = lambda: NFResNet(1000, "ResNet50", use_se=use_se)
    forward = hk.transform(lambda x: make()(x, is_training=False))
    x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
    params = jax.eval_shape(forward.init, jax.random.key(0), x)
    analytic = count_flops(make, 224, 224)
    assert traced_macs(forward.apply, params, None, x) == analytic
    if not use_se:
        assert analytic == 4_089_184_256  # ResNet-50 conv + fc MACs at 224 px
    else:
        tree = tree_shapes(params)
        assert tree["NF_ResNet/~/nf_res_block/~/squeeze_excite/~/linear/w"] == [256, 64]


def test_names_alias_and_errors():
    assert NF_ResNet is NFResNet
    with pytest.raises(ValueError, match="Known variants: ResNet26, ResNet50"):
        hk.transform(lambda: NFResNet(10, "ResNet18")).apply({}, None)
    with pytest.raises(ValueError, match="width must be a positive integer"):
        hk.transform(lambda: NFResNet(10, width=0)).apply({}, None)


def test_depth_pattern_override_builds_fewer_blocks():
    params = abstract_params(lambda: NFResNet(10, "ResNet50", width=1, depth_pattern=(1, 2, 1, 1)))
    blocks = {k.split("/~/")[1] for k in params if "nf_res_block" in k}
    assert len(blocks) == 5
    with pytest.raises(ValueError, match="depth_pattern needs 4 stages"):
        abstract_params(lambda: NFResNet(10, "ResNet50", depth_pattern=(1, 1)))
