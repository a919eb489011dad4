"""NF-RegNet: DeepMind's tree, the B0-B8 size table and the fixed activation default."""

import haiku as hk
import jax
import jax.numpy as jnp
import pytest

from nfnets_jax.models import NF_RegNet, NFRegNet, count_flops, nf_regnet_params, traced_macs
from tests.models.conftest import abstract_params, count, tree_shapes

# Spec 1.2: millions of parameters, and "FLOPs" (MACs, billions) at the test resolution.
TABLE = {
    "B0": (8.595, 0.444),
    "B1": (10.019, 0.734),
    "B2": (13.786, 1.099),
    "B3": (18.137, 1.999),
    "B4": (29.316, 4.467),
    "B5": (48.707, 10.561),
    "B6": (70.046, 19.687),
    "B7": (101.743, 37.448),
    "B8": (142.314, 63.719),
}
FINAL_CONV_CH = {"B0": 960, "B2": 1064, "B3": 1152, "B4": 1344, "B8": 2112}


def test_b0_tree_and_count_equal_deepminds(official):
    params = abstract_params(lambda: NFRegNet(1000, "B0"))
    assert tree_shapes(params) == official["trees"]["NF_RegNet-B0"]
    assert count(params) == 8_595_372 == official["counts"]["NF_RegNet-B0"]


@pytest.mark.parametrize("variant", sorted(TABLE))
def test_params_and_flops_at_test_px(variant):
    params_m, flops_b = TABLE[variant]
    params = abstract_params(lambda: NFRegNet(1000, variant))
    tree = tree_shapes(params)
    assert round(count(params) / 1e6, 3) == params_m
    px = nf_regnet_params[variant]["test_imsize"]
    assert round(count_flops(lambda: NFRegNet(1000, variant), px, px) / 1e9, 3) == flops_b
    if variant in FINAL_CONV_CH:
        assert tree["NF_RegNet/~/final_conv/w"][-1] == FINAL_CONV_CH[variant]


def test_analytic_flops_equal_traced_macs_at_224px():
    forward = hk.transform(lambda x: NFRegNet(1000, "B0")(x, is_training=False))
    x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
    params = jax.eval_shape(forward.init, jax.random.key(0), x)
    analytic = count_flops(lambda: NFRegNet(1000, "B0"), 224, 224)
    assert traced_macs(forward.apply, params, None, x) == analytic


def test_defaults_fixed_and_documented():
    def facts():
        net = NFRegNet(10, "B0")
        return net.activation.__name__, net.drop_rate, net.fc_init is jnp.zeros

    assert hk.transform(facts).apply({}, None) == ("scaled_silu", 0.2, True)
    with pytest.raises(ValueError, match="'swish' is called 'silu'"):
        hk.transform(lambda: NFRegNet(10, "B0", activation="swish")).apply({}, None)
    assert NF_RegNet is NFRegNet
    with pytest.raises(ValueError, match="Known variants: B0, B1"):
        hk.transform(lambda: NFRegNet(10, "B9")).apply({}, None)


def test_forward_outputs_and_metrics_shapes():
    forward = hk.transform(lambda x: NFRegNet(10, "B0")(x, is_training=True, return_metrics=True))
    x = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
    params = jax.eval_shape(forward.init, jax.random.key(0), x)
    out = jax.eval_shape(forward.apply, params, jax.random.key(1), x)
    assert out["logits"].shape == (2, 10) and out["pool"].shape == (2, 960)
    assert len(out) == 2 + 17 + 17 + 16  # pool, logits, avg_sq_mean/avg_var 0..16, res 0..15


def test_depth_pattern_override_builds_fewer_blocks():
    params = abstract_params(lambda: NFRegNet(10, "B0", depth_pattern=(1, 1, 2, 1)))
    blocks = {k.split("/~/")[1] for k in params if "nf_block" in k}
    assert len(blocks) == 5
    with pytest.raises(ValueError, match="positive"):
        abstract_params(lambda: NFRegNet(10, "B0", depth_pattern=(1, 0, 1, 1)))
