"""SkipInit and Fixup ResNets (nfnets.md 2.13): trees, initialisation, identity at init.

Narrow networks (width 1: stem 16, stages 64-512 channels) at 32 px; the first stage has
two blocks, so there is one identity block (64 -> 64) besides the projection blocks.
"""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nfnets_jax.models import FixupResNet, SkipInitResNet, get_model
from nfnets_jax.models.fixup_resnet import FixupBlock
from nfnets_jax.models.skipinit_resnet import SkipInitBlock, resnet_layout

DEPTHS = (2, 1, 1, 1)
NUM_BLOCKS = sum(DEPTHS)


def skipinit(**kwargs):
    kwargs = {"drop_rate": 0.0, "depth_pattern": DEPTHS, **kwargs}
    return SkipInitResNet(10, "ResNet26", width=1, **kwargs)


def fixup(**kwargs):
    return FixupResNet(10, "ResNet26", width=1, depth_pattern=DEPTHS, **kwargs)


def init(make_model, x, seed=0):
    forward = hk.transform(lambda x: make_model()(x, is_training=True, return_metrics=True))
    params = jax.jit(forward.init)(jax.random.key(seed), x)
    return forward, params


@pytest.fixture(scope="module")
def images():
    return jax.random.normal(jax.random.key(1), (2, 32, 32, 3))


def test_layout_is_the_nf_resnets():
    depths, layout = resnet_layout("ResNet50", 4, None)
    assert depths == [3, 4, 6, 3]
    assert layout[0] == (64, 256, 1) and layout[3] == (256, 512, 2)
    assert layout[-1] == (2048, 2048, 1) and len(layout) == 16
    with pytest.raises(ValueError, match="Known variants: ResNet26"):
        resnet_layout("ResNet51", 1, None)
    with pytest.raises(ValueError, match="needs 4 stages"):
        resnet_layout("ResNet26", 1, (1, 1))


@pytest.mark.slow
def test_skipinit_tree_and_identity_at_init(images):
    forward, params = init(skipinit, images)
    top = "SkipInit_ResNet/~/"
    # The stem conv has no bias, block convs have `b`, one scalar skip_gain per block.
    assert set(params[top + "initial_conv"]) == {"w"}
    assert params[top + "initial_conv"]["w"].shape == (7, 7, 3, 16)
    for k in range(NUM_BLOCKS):
        block = f"{top}res_block_{k}"
        assert params[block]["skip_gain"].shape == () and float(params[block]["skip_gain"]) == 0
        for conv in ("conv0", "conv1", "conv2"):
            assert set(params[f"{block}/~/{conv}"]) == {"w", "b"}
        assert (f"{block}/~/conv_shortcut" in params) == (k != 1)  # block 1: 64 -> 64
    assert params[top + "res_block_1/~/conv1"]["w"].shape == (3, 3, 16, 16)
    np.testing.assert_array_equal(params[top + "linear"]["w"], 0.0)
    assert len(params) == 1 + NUM_BLOCKS * 4 + (NUM_BLOCKS - 1) + 1

    outputs = jax.jit(forward.apply)(params, None, images)
    np.testing.assert_array_equal(outputs["logits"], 0.0)  # zero-initialised classifier
    # skip_gain = 0: the identity block returns its input exactly, although its branch
    # is live (non-zero variance).
    assert float(outputs["avg_var_2"]) == float(outputs["avg_var_1"])
    assert float(outputs["avg_sq_mean_2"]) == float(outputs["avg_sq_mean_1"])
    assert float(outputs["res_avg_var_1"]) > 0


@pytest.mark.slow
def test_skipinit_block_is_the_pre_activation_formula():
    x = jax.random.normal(jax.random.key(2), (2, 8, 8, 32))
    act = jax.nn.relu
    block = hk.transform(lambda x: SkipInitBlock(32, 64, 2, act, name="b")(x, True))
    params = block.init(jax.random.key(3), x)
    params["b"]["skip_gain"] = jnp.asarray(0.7)
    out, branch = block.apply(params, None, x)

    def conv(h, name, stride=1):
        p = params[f"b/~/{name}"]
        y = jax.lax.conv_general_dilated(
            h, p["w"], (stride, stride), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        return y + p["b"]

    a = act(x)
    h = conv(act(conv(act(conv(a, "conv0")), "conv1", 2)), "conv2")
    np.testing.assert_allclose(branch, h, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out, 0.7 * h + conv(a, "conv_shortcut", 2), rtol=1e-5, atol=1e-5)


def test_skipinit_drop_rate_must_be_given_and_activation_known():
    with pytest.raises(TypeError, match="drop_rate"):
        hk.transform(lambda x: SkipInitResNet(10)(x)).init(None, jnp.zeros((1, 32, 32, 3)))
    with pytest.raises(ValueError, match="must be one of"):
        hk.transform(lambda x: skipinit(activation="gelu")(x)).init(None, jnp.zeros((1, 32, 32, 3)))


@pytest.mark.slow
def test_fixup_tree_and_initial_stddevs():
    # ResNet50 at width 1: L = 16 blocks; the last stage's convs have enough weights to
    # pin each initial stddev to about 1%.
    forward = hk.transform(lambda x: FixupResNet(10, "ResNet50", width=1)(x, is_training=True))
    params = forward.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    top = "Fixup_ResNet/~/"
    assert set(params["Fixup_ResNet"]) == {"bias1", "bias2"}
    scalars = {"bias1a", "bias1b", "bias2a", "bias2b", "bias3a", "bias3b", "scale"}
    block = top + "res_block_15"
    assert set(params[block]) == scalars
    assert float(params[block]["scale"]) == 1.0
    assert all(float(params[block][s]) == 0.0 for s in scalars - {"scale"})
    for conv in ("conv0", "conv1", "conv2"):
        assert set(params[f"{block}/~/{conv}"]) == {"w"}  # bias-free convolutions
    width, depth_scale = 128, 16**-0.25  # the last stage: 512 outputs, bottleneck 128
    expected = {
        "conv0": np.sqrt(2 / width) * depth_scale,
        "conv1": np.sqrt(2 / (width * 9)) * depth_scale,
        "conv2": 0.0,
    }
    for name, std in expected.items():
        w = np.asarray(params[f"{block}/~/{name}"]["w"])
        assert w.std() == pytest.approx(std, rel=0.02, abs=1e-12), name
    shortcut = np.asarray(params[top + "res_block_13/~/conv_shortcut"]["w"])  # 256 -> 512
    assert shortcut.shape == (1, 1, 256, 512)
    assert shortcut.std() == pytest.approx(np.sqrt(2 / 512), rel=0.01)


@pytest.mark.slow
def test_fixup_blocks_start_as_the_identity_and_train(images):
    forward, params = init(fixup, images)
    outputs = jax.jit(forward.apply)(params, None, images)
    for k in range(NUM_BLOCKS):
        assert float(outputs[f"res_avg_var_{k}"]) == 0.0  # conv2 = 0: every branch is 0
    # The identity block passes its (post-ReLU, non-negative) input through unchanged.
    assert float(outputs["avg_var_2"]) == float(outputs["avg_var_1"]) > 0

    def loss(p):
        return jnp.sum(forward.apply(p, None, images)["pool"] ** 2)

    grads = jax.jit(jax.grad(loss))(params)
    # Zero conv2 still receives a gradient, so the branches learn.
    assert float(jnp.abs(grads["Fixup_ResNet/~/res_block_1/~/conv2"]["w"]).max()) > 0


def test_a_fixup_block_alone_is_the_identity_at_init():
    # Its branch is zero, and a non-negative input comes back unchanged.
    x = jnp.abs(jax.random.normal(jax.random.key(4), (1, 8, 8, 64)))
    block = hk.transform(lambda x: FixupBlock(64, 64, 1, 4, name="b")(x, True))
    out, branch = block.apply(block.init(jax.random.key(5), x), None, x)
    np.testing.assert_array_equal(branch, 0.0)
    np.testing.assert_array_equal(out, x)


def test_registered_for_configs():
    assert get_model("SkipInitResNet") is SkipInitResNet
    assert get_model("FixupResNet") is FixupResNet
