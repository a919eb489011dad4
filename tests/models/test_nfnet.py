"""NFNet: exact sizes, trees, FLOPs, options, conv implementations and mixed precision."""

import json

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nfnets_jax.models import NFNet, conv, count_flops, nfnet_params, traced_macs
from tests.models.conftest import GOLDEN, abstract_params, count, random_params, tree_shapes

# Exact parameter counts (spec 1.1; official_param_trees.json for the + variants).
PARAM_COUNTS = {
    "F0": 71_489_284,
    "F1": 132_634_256,
    "F2": 193_779_228,
    "F3": 254_924_200,
    "F4": 316_069_172,
    "F5": 377_214_144,
    "F6": 438_359_116,
    "F7": 499_504_088,
    "F0+": 118_824_516,
    "F1+": 220_357_008,
    "F2+": 321_889_500,
    "F3+": 423_421_992,
    "F4+": 524_954_484,
    "F5+": 626_486_976,
    "F6+": 728_019_468,
    "F7+": 829_551_960,
}
# "FLOPs" (MACs) in billions, to the printed digits: at test px, train px and 224 px.
FLOPS_B = {
    "F0": (12.384, 6.977, 9.487),
    "F1": (35.539, 17.438, 17.438),
    "F2": (62.593, 33.139, 25.388),
    "F3": (114.764, 67.944, 33.339),
    "F4": (215.241, 121.122, 41.289),
    "F5": (289.757, 169.498, 49.240),
    "F6": (377.280, 228.293, 57.190),
    "F7": (478.782, 298.477, 65.141),
}
FLOPS_PLUS_TEST_B = {"F0+": 19.520, "F4+": 333.390}
MODULE_COUNTS = {"F0": 94, "F1": 178}

# A narrow, shallow NFNet covering every shortcut kind (projection without pooling,
# pooled projection, identity) and real grouped convs (groups of 8: 1 and 2 groups).
NARROW = dict(width_pattern=[16, 32], depth_pattern=[1, 2], group_width=8, stem_widths=(8, 8, 8))


@pytest.mark.parametrize("variant", sorted(PARAM_COUNTS))
def test_exact_parameter_count(variant, official):
    params = abstract_params(lambda: NFNet(1000, variant))
    assert count(params) == PARAM_COUNTS[variant] == official["counts"][f"NFNet-{variant}"]


@pytest.mark.parametrize("variant", ["F0", "F1"])
def test_parameter_tree_equals_deepminds(variant, official):
    params = abstract_params(lambda: NFNet(1000, variant))
    assert tree_shapes(params) == official["trees"][f"NFNet-{variant}"]
    assert len(params) == MODULE_COUNTS[variant]
    if variant == "F0":
        golden = json.loads((GOLDEN / "nfnet_f0_tree.json").read_text())
        assert tree_shapes(params) == golden


@pytest.mark.parametrize("variant", sorted(FLOPS_B))
def test_flops_at_test_train_and_224_px(variant):
    test_px, train_px = nfnet_params[variant]["test_imsize"], nfnet_params[variant]["train_imsize"]
    for px, want in zip((test_px, train_px, 224), FLOPS_B[variant], strict=True):
        got = count_flops(lambda: NFNet(1000, variant), px, px)
        assert round(got / 1e9, 3) == want


def test_flops_of_plus_variants_at_test_px():
    for variant, want in FLOPS_PLUS_TEST_B.items():
        px = nfnet_params[variant]["test_imsize"]
        assert round(count_flops(lambda v=variant: NFNet(1000, v), px, px) / 1e9, 3) == want


def test_analytic_flops_equal_traced_macs_at_224px():
    forward = hk.transform(lambda x: NFNet(1000, "F0")(x, is_training=False))
    x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
    params = jax.eval_shape(forward.init, jax.random.key(0), x)
    assert traced_macs(forward.apply, params, None, x) == count_flops(
        lambda: NFNet(1000, "F0"), 224, 224
    )


def test_original_constructor_and_call_signature():
    def forward(x):
        net = NFNet(1000, "F0", 1.0, 0.5, 0.2, 0.1, None, "gelu", None, 2, None, True, "NFNet")
        return net(x, is_training=False, return_metrics=False)

    f = hk.transform(forward)
    x = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
    params = jax.eval_shape(f.init, jax.random.key(0), x)
    out = jax.eval_shape(f.apply, params, None, x)
    assert sorted(out) == ["logits", "pool"]
    assert out["logits"].shape == (2, 1000) and out["logits"].dtype == jnp.float32


def test_options_change_the_tree_as_the_original():
    def build(**kw):
        return tree_shapes(abstract_params(lambda: NFNet(10, "F0", **kw)))

    half = build(width=0.5, group_width=64)
    assert half["NFNet/~/stem_conv3/w"] == [3, 3, 64, 128]  # the stem ignores `width`
    assert half["NFNet/~/nf_block/~/conv2/w"] == [1, 1, 64, 128]  # int(256 * 0.5)
    assert half["NFNet/~/nf_block_3/~/conv1/w"] == [3, 3, 64, 384]  # 6 groups of 64
    assert half["NFNet/~/final_conv/w"] == [1, 1, 768, 1536]
    one_conv = build(use_two_convs=False)
    assert not any("conv1b" in k for k in one_conv)
    fixed = build(final_conv_mult=None, final_conv_ch=512)
    assert fixed["NFNet/~/final_conv/w"] == [1, 1, 1536, 512]
    assert fixed["NFNet/~/linear/w"] == [512, 10]
    se = build(se_ratio=0.25)
    assert se["NFNet/~/nf_block_3/~/squeeze_excite/~/linear/w"] == [1536, 384]
    narrow = build(**NARROW)
    assert narrow["NFNet/~/stem_conv0/w"] == [3, 3, 3, 8]
    assert narrow["NFNet/~/nf_block_2/~/conv1/w"] == [3, 3, 8, 16]  # 2 groups of 8
    assert "NFNet/~/nf_block_2/~/conv_shortcut/w" not in narrow
    assert len([k for k in narrow if k.endswith("skip_gain")]) == 3


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(variant="F9"), "Known variants: F0, F0\\+"),
        (dict(group_width=256), "gives 0 groups. Use group_width <= 128"),
        (dict(width_pattern=[16, 32], depth_pattern=[1, 1, 1, 1]), "same length"),
        (dict(depth_pattern=[1, 0, 1, 1]), "positive integers"),
        (dict(expansion=[0.5, 0.5]), "expansion has 2 entries"),
        (dict(stem_widths=(8, 8)), "needs 3 values"),
        (dict(drop_rate=1.0), "drop_rate must be a number in \\[0, 1\\)"),
        (dict(activation="swish"), "'silu'"),
        (dict(compute_dtype=jnp.int32), "compute_dtype must be one of"),
        (dict(conv_impl="cudnn"), "conv_impl must be one of"),
        (dict(final_conv_mult=None), "final_conv_mult or final_conv_ch"),
        (dict(num_classes=0), "num_classes must be a positive integer"),
    ],
)
def test_bad_options_raise_clear_errors(kwargs, match):
    kwargs = {"num_classes": 10, **kwargs}
    with pytest.raises(ValueError, match=match):
        hk.transform(lambda: NFNet(**kwargs)).apply({}, None)


def _narrow_forward(conv_impl="auto", compute_dtype=None, **kw):
    return hk.transform(
        lambda x, t: NFNet(
            10, "F0", conv_impl=conv_impl, compute_dtype=compute_dtype, **NARROW, **kw
        )(x, is_training=t)
    )


@pytest.fixture(scope="module")
def narrow_params():
    forward = _narrow_forward()
    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    return random_params(
        jax.eval_shape(lambda k, x: forward.init(k, x, True), jax.random.key(0), x)
    )


@pytest.mark.slow
@pytest.mark.parametrize("impl", ["per_group", "dot", "patches"])
def test_conv_impls_give_native_numbers_and_trees(impl, narrow_params, monkeypatch):
    # Every 3x3 kernel gradient from patches, not only those with 32 x 32 outputs.
    monkeypatch.setattr(conv, "PATCHES_MIN_POSITIONS", 1)
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    labels = jnp.array([3, 7])
    results = {}
    for name in ("native", impl):
        forward = _narrow_forward(name, stochdepth_rate=0.5, drop_rate=0.3)
        tree = tree_shapes(
            jax.eval_shape(lambda k, x: forward.init(k, x, True), jax.random.key(0), x)
        )

        def loss(params, rng, forward=forward):
            logits = forward.apply(params, rng, x, True)["logits"]
            return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(2), labels]), logits

        grad_fn = jax.value_and_grad(loss, has_aux=True)
        jaxpr = jax.make_jaxpr(grad_fn)(narrow_params, jax.random.key(2))
        convs = str(jaxpr).count("conv_general_dilated")
        (value, logits), grads = jax.jit(grad_fn)(narrow_params, jax.random.key(2))
        results[name] = (tree, value, logits, grads, convs)
    (tree, value, logits, grads, convs), (tree2, value2, logits2, grads2, convs2) = results.values()
    assert tree2 == tree
    assert convs2 != convs  # the lowering really differs (groups split, dots, patches)
    scale = float(jnp.max(jnp.abs(logits)))
    np.testing.assert_allclose(logits2, logits, rtol=1e-5, atol=1e-5 * scale)
    np.testing.assert_allclose(value2, value, rtol=1e-5)
    other = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(grads2)}
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        key = jax.tree_util.keystr(path)
        np.testing.assert_allclose(other[key], g, rtol=1e-4, atol=1e-6, err_msg=key)


@pytest.mark.slow
def test_bfloat16_compute_keeps_float32_params_and_matches_float32(narrow_params):
    x = jax.random.normal(jax.random.key(3), (2, 32, 32, 3))
    f32, bf16 = _narrow_forward(), _narrow_forward(compute_dtype=jnp.bfloat16)
    created = jax.eval_shape(lambda k, x: bf16.init(k, x, True), jax.random.key(0), x)
    assert {leaf.dtype for leaf in jax.tree.leaves(created)} == {jnp.dtype(jnp.float32)}

    def loss(params):
        out = bf16.apply(params, None, x, False)
        return jnp.sum(out["logits"]), out

    grads, out16 = jax.jit(jax.grad(loss, has_aux=True))(narrow_params)
    out32 = jax.jit(f32.apply, static_argnums=3)(narrow_params, None, x, False)
    assert out16["logits"].dtype == jnp.float32 and out16["pool"].dtype == jnp.float32
    scale = float(jnp.max(jnp.abs(out32["pool"])))
    np.testing.assert_allclose(out16["pool"], out32["pool"], atol=0.03 * scale)
    assert float(jnp.max(jnp.abs(out16["pool"] - out32["pool"]))) > 0  # really bf16
    assert {g.dtype for g in jax.tree.leaves(grads)} == {jnp.dtype(jnp.float32)}
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))


@pytest.mark.slow
def test_dropout_is_applied_in_training_only_and_rescales():
    """With an identity classifier, logits = dropout(pool): kept values are pool / keep."""
    forward = _narrow_forward(
        drop_rate=0.5, stochdepth_rate=0.0, final_conv_ch=10, final_conv_mult=None
    )
    x = jax.random.normal(jax.random.key(4), (2, 32, 32, 3))
    params = random_params(
        jax.eval_shape(lambda k, x: forward.init(k, x, True), jax.random.key(0), x)
    )
    params["NFNet/~/linear"] = {"w": jnp.eye(10), "b": jnp.zeros(10)}
    apply = jax.jit(forward.apply, static_argnums=3)
    train = apply(params, jax.random.key(5), x, True)
    evaluation = apply(params, None, x, False)
    np.testing.assert_allclose(train["pool"], evaluation["pool"], rtol=1e-6)
    np.testing.assert_allclose(evaluation["logits"], evaluation["pool"], rtol=1e-6)
    pool, logits = np.asarray(train["pool"]), np.asarray(train["logits"])
    kept = np.isclose(logits, 2 * pool, rtol=1e-5)
    assert np.all(kept | (logits == 0)) and 0 < kept.mean() < 1
