"""Normalized ResNets: exact counts and MACs, layouts, zero-init, batch (in)dependence.

Parameter counts use `jax.eval_shape` at full size; behaviour uses narrow 16 px models
run eagerly (op by op, which on CPU is faster than compiling each tiny network), with
inits keyed by the cheap `unsafe_rbg` PRNG.
"""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs.resnet import RESNET_NO_DECAY_PATTERNS
from nfnets_jax.models import ResNet, count_flops, get_model, traced_macs
from nfnets_jax.models.resnet import VERSIONS, NormFactory, ResNetBlock
from nfnets_jax.optim import masks
from tests.models.resnet_helpers import (
    abstract_variables,
    count,
    realistic_variables,
    tiny_resnet,
    transform,
)


def cheap_key(seed=0):
    return jax.random.key(seed, impl="unsafe_rbg")


def full_size(version="v1b", norm="batch", depth=50, **kwargs):
    forward = transform(lambda: ResNet(1000, depth, version, norm, **kwargs))
    return abstract_variables(forward, px=224, batch=1)


@pytest.mark.parametrize(
    "version, params, norm_params",
    [
        ("v1", 25_557_032, 53_120),
        ("v1b", 25_557_032, 53_120),
        ("v1c", 25_576_264, 53_248),
        ("v1d", 25_576_264, 53_248),
        ("v1e", 25_680_808, None),
        ("v1s", 25_680_808, None),
        ("v2", 25_549_352, 45_440),
    ],
)
def test_resnet50_parameter_counts_match_the_published_ones(version, params, norm_params):
    p, state = full_size(version)
    assert count(p) == params
    if norm_params is not None:
        affine = sum(
            int(np.prod(leaf.shape))
            for path, leaf in zip(
                jax.tree.leaves(masks.tree_paths(p)), jax.tree.leaves(p), strict=True
            )
            if path.endswith(("/scale", "/offset"))
        )
        assert affine == norm_params
        assert count(state) == norm_params  # one running mean and variance per channel


@pytest.mark.parametrize(
    "depth, expected",
    [(18, 11_689_512), (34, 21_797_672), (101, 44_549_160), (152, 60_192_808)],
)
def test_other_depths_match_torchvision_counts(depth, expected):
    assert count(full_size("v1b", depth=depth)[0]) == expected


def test_macs_match_the_exact_conv_and_fc_counts():
    macs = {v: count_flops(lambda v=v: ResNet(1000, 50, v), 224, 224) for v in VERSIONS}
    assert round(macs["v1"] / 1e9, 3) == 3.858
    assert round(macs["v1b"] / 1e9, 3) == 4.089
    assert round(macs["v1c"] / 1e9, 3) == round(macs["v1d"] / 1e9, 3) == 4.329
    # The analytic count agrees with the traced convolutions and matmuls of ResNet-D.
    forward = transform(lambda: ResNet(1000, 50, "v1d"))
    params, state = abstract_variables(forward, px=224, batch=1)
    x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
    traced = traced_macs(lambda p, s, x: forward.apply(p, s, None, x, False), params, state, x)
    assert traced == int(macs["v1d"])


def test_bt7_no_bias_decay_mask_counts():
    for version, expected in (("v1b", 25_502_912), ("v1d", 25_522_016)):
        params, _ = full_size(version)
        decay = masks.mask_from_patterns(params, RESNET_NO_DECAY_PATTERNS, invert=True)
        decayed = lambda tree, mask: sum(
            int(np.prod(leaf.shape))
            for leaf, on in zip(jax.tree.leaves(tree), jax.tree.leaves(mask), strict=True)
            if on
        )
        assert decayed(params, decay) == expected
        # A new bias or norm parameter is not decayed.
        extra = dict(params)
        extra["ResNet/~/extra"] = {
            "b": jax.ShapeDtypeStruct((7,), jnp.float32),
            "scale": jax.ShapeDtypeStruct((5,), jnp.float32),
            "offset": jax.ShapeDtypeStruct((5,), jnp.float32),
        }
        extra_decay = masks.mask_from_patterns(extra, RESNET_NO_DECAY_PATTERNS, invert=True)
        assert decayed(extra, extra_decay) == expected


def record_shapes(make_model, px=224):
    """Output shapes of the stem conv, max-pool input, every block, and conv0/conv1 calls."""
    shapes = {}

    def interceptor(next_f, args, kwargs, context):
        out = next_f(*args, **kwargs)
        value = out[0] if isinstance(out, tuple) else out
        if context.method_name == "__call__" and hasattr(value, "shape"):
            shapes[context.module.module_name] = (tuple(args[0].shape), tuple(value.shape))
        return out

    def run(x):
        with hk.intercept_methods(interceptor):
            return make_model()(x, is_training=False)

    forward = hk.transform_with_state(run)
    x = jax.ShapeDtypeStruct((1, px, px, 3), jnp.float32)
    params, state = jax.eval_shape(forward.init, jax.random.key(0), x)
    jax.eval_shape(forward.apply, params, state, None, x)
    return shapes


def test_bt8_feature_map_sizes_for_224_px():
    shapes = record_shapes(lambda: ResNet(1000, 50, "v1d"))
    assert shapes["ResNet/~/stem_conv0"][1] == (1, 112, 112, 32)
    assert shapes["ResNet/~/stem_conv2"][1] == (1, 112, 112, 64)
    assert shapes["ResNet/~/block_0"][0] == (1, 56, 56, 64)  # after the 3x3/2 max-pool
    last_of_stage = {2: (56, 256), 6: (28, 512), 12: (14, 1024), 15: (7, 2048)}
    for index, (size, channels) in last_of_stage.items():
        assert shapes[f"ResNet/~/block_{index}"][1] == (1, size, size, channels)
    # ResNet-D: the stage-1 projection sees the block input unpooled (stride 1, no
    # pooling); later projections see a 2x2/2-pooled input with a stride-1 conv.
    assert shapes["ResNet/~/block_0/~/conv_shortcut"] == ((1, 56, 56, 64), (1, 56, 56, 256))
    assert shapes["ResNet/~/block_3/~/conv_shortcut"] == ((1, 28, 28, 256), (1, 28, 28, 512))


def test_bt8_resnet_d_pooled_shortcut_preserves_a_constant_input():
    seen = {}

    def interceptor(next_f, args, kwargs, context):
        if context.module.module_name.endswith("conv_shortcut") and (
            context.method_name == "__call__"
        ):
            seen["input"] = args[0]
        return next_f(*args, **kwargs)

    def run(x):
        block = ResNetBlock(
            4,
            2,
            2,
            bottleneck=True,
            version=VERSIONS["v1d"],
            norms=NormFactory(),
            zero_init_residual=True,
        )
        with hk.intercept_methods(interceptor):
            return block(x, True)[0], seen["input"]

    forward = hk.transform_with_state(run)
    x = jnp.full((1, 7, 7, 4), 3.0)  # odd size: the last window is half padding
    params, state = forward.init(cheap_key(), x)
    (_, pooled), _ = forward.apply(params, state, None, x)
    assert pooled.shape == (1, 4, 4, 4)
    np.testing.assert_array_equal(pooled, 3.0)  # padding does not dilute the average


@pytest.mark.parametrize("version, first, second", [("v1b", 16, 8), ("v1", 8, 8)])
def test_bt9_stride_placement_in_a_downsampling_block(version, first, second):
    shapes = record_shapes(lambda: ResNet(10, 50, version, depth_pattern=(1, 1, 1, 1)), px=64)
    conv0_in, conv0_out = shapes["ResNet/~/block_1/~/conv0"]
    conv1_out = shapes["ResNet/~/block_1/~/conv1"][1]
    assert conv0_in[1] == 16  # stage 2 input
    assert (conv0_out[1], conv1_out[1]) == (first, second)


def run_blocks(forward_model, params, state, x, is_training):
    """Every block's (input, output, norm_shortcut output) in one eager apply."""
    records = {}

    def interceptor(next_f, args, kwargs, context):
        out = next_f(*args, **kwargs)
        name = context.module.module_name
        if context.method_name != "__call__":
            return out
        if isinstance(context.module, ResNetBlock):
            records.setdefault(name, {}).update(input=args[0], output=out[0])
        elif name.endswith("norm_shortcut"):
            records.setdefault(name.rsplit("/~/", 1)[0], {})["shortcut"] = out
        return out

    def run(x, is_training):
        with hk.intercept_methods(interceptor):
            forward_model()(x, is_training=is_training)
        return records

    forward = hk.transform_with_state(run)
    return forward.apply(params, state, None, x, is_training)[0]


@pytest.mark.slow
@pytest.mark.parametrize(
    "version, norm",
    [
        ("v1", "batch"),
        ("v1b", "batch"),
        ("v1c", "batch"),
        ("v1d", "batch"),
        ("v1b", "group"),
        ("v2", "group_proxy"),
    ],
)
def test_bt6_zero_gamma_makes_every_block_the_identity(version, norm):
    make = tiny_resnet(version, norm, depth_pattern=(2, 1, 2, 1))
    forward = transform(make)
    x = jax.random.normal(jax.random.key(1), (3, 16, 16, 3))
    params, state = forward.init(cheap_key(), x, True)
    if version == "v2":
        # Zero-init sits on the last convolution kernel, not on Proxy Norm's gamma (a zero
        # gamma before a ReLU would get no gradient, ever).
        for block in range(6):
            assert float(jnp.abs(params[f"ResNet/~/block_{block}/~/conv2"]["w"]).max()) == 0.0
            assert float(jnp.abs(params[f"ResNet/~/block_{block}/~/conv1"]["w"]).max()) > 0.0
            np.testing.assert_array_equal(params[f"ResNet/~/block_{block}/~/act2"]["gamma"], 1.0)
    identity_blocks = 0
    for is_training in (True, False):
        records = run_blocks(make, params, state, x, is_training)
        for name, record in records.items():
            x_in, out = record["input"], record["output"]
            if x_in.shape == out.shape and "shortcut" not in record and version != "v2":
                assert float(jnp.min(x_in)) >= 0.0  # outputs of the previous block's ReLU
                np.testing.assert_array_equal(out, x_in, err_msg=name)
                identity_blocks += 1
            elif "shortcut" in record:
                np.testing.assert_array_equal(out, jax.nn.relu(record["shortcut"]), err_msg=name)
            elif x_in.shape == out.shape:  # v2 identity blocks: any input
                np.testing.assert_array_equal(out, x_in, err_msg=name)
                identity_blocks += 1
    assert identity_blocks >= 2


def first_example(make_model, x, is_training, variables):
    forward = transform(make_model)
    out, _ = forward.apply(*variables, None, x, is_training)
    return np.asarray(out["logits"][0])


@pytest.mark.slow
@pytest.mark.parametrize(
    "version, norm",
    [("v2", "group_proxy"), ("v1b", "group_proxy"), ("v2", "layer_proxy"), ("v1b", "layer_proxy")],
)
def test_pn7_pn8_proxy_norm_networks_are_batch_independent_and_stateless(version, norm):
    make = tiny_resnet(version, norm)
    abstract_params, abstract_state = abstract_variables(transform(make))
    assert abstract_state == {}
    variables = realistic_variables(abstract_params, abstract_state, seed=1)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 16, 16, 3)).astype(np.float32)
    reference = first_example(make, x[:8], True, variables)
    others = x[:8].copy()
    others[1:] = rng.normal(size=(7, 16, 16, 3)) * 3.0 + 1.0
    # Float32 logits of order 1 whose convolutions' CPU kernels tile, and so sum, in another
    # order for other batch sizes: that moved a logit by 2.2e-5 on an AVX2-only CPU,
    # whatever its own size (it stayed within 1e-5 + 2e-5 relative with AVX-512). Batch
    # statistics move them by more than 1e-2 (asserted in the BatchNorm test below), 50x
    # the tolerance.
    tolerance = dict(atol=2e-4, rtol=0)
    np.testing.assert_allclose(first_example(make, others, True, variables), reference, **tolerance)
    for batch in (1, 64):
        np.testing.assert_allclose(
            first_example(make, x[:batch], True, variables), reference, **tolerance
        )
    # PN-8: evaluation computes exactly the training function.
    np.testing.assert_array_equal(first_example(make, x[:8], False, variables), reference)


def test_batch_norm_training_depends_on_the_batch_and_evaluation_does_not():
    make = tiny_resnet("v1b", "batch", zero_init_residual=False, fc_init=jnp.ones)
    abstract_params, abstract_state = abstract_variables(transform(make))
    assert count(abstract_state) > 0
    variables = realistic_variables(abstract_params, abstract_state, seed=2)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, 16, 16, 3)).astype(np.float32)
    others = x.copy()
    others[1:] = rng.normal(size=(7, 16, 16, 3)) * 3.0 + 1.0
    train = [first_example(make, batch, True, variables) for batch in (x, others)]
    assert np.abs(train[0] - train[1]).max() > 1e-2
    evaluate = [first_example(make, batch, False, variables) for batch in (x, others, x[:1])]
    np.testing.assert_allclose(evaluate[1], evaluate[0], atol=2e-4)  # as above
    np.testing.assert_allclose(evaluate[2], evaluate[0], atol=2e-4)


def test_metrics_bf16_and_registry():
    make = tiny_resnet("v1d", "batch", compute_dtype=jnp.bfloat16)
    forward = hk.transform_with_state(lambda x: make()(x, is_training=True, return_metrics=True))
    x = jax.ShapeDtypeStruct((2, 16, 16, 3), jnp.float32)
    params, state = jax.eval_shape(forward.init, jax.random.key(0), x)
    outputs, new_state = jax.eval_shape(forward.apply, params, state, None, x)
    assert {leaf.dtype for leaf in jax.tree.leaves((params, new_state))} == {jnp.dtype(jnp.float32)}
    assert outputs["logits"].dtype == outputs["pool"].dtype == jnp.float32
    assert sorted(k for k in outputs if k.startswith("res_avg_var")) == [
        f"res_avg_var_{i}" for i in range(4)
    ]
    assert len([k for k in outputs if k.startswith("avg_var_")]) == 5
    assert get_model("ResNet") is ResNet


def test_bad_arguments_say_what_to_use():
    cases = [
        (dict(depth=42), "Unknown ResNet depth 42"),
        (dict(version="v3"), "Unknown ResNet version 'v3'"),
        (dict(norm="instance"), "Unknown norm 'instance'"),
        (dict(norm="batch", num_groups=8), "num_groups applies to"),
        (dict(activation="tanh"), "Unknown activation 'tanh'"),
        (dict(depth_pattern=(1, 1)), "depth_pattern needs 4 stages"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            hk.transform(lambda kw=kwargs: ResNet(10, **kw)).init(None)
    # Aliases of the paper's names.
    assert hk.transform(lambda: ResNet(10, version="D").version_name).apply({}, None) == "v1d"
