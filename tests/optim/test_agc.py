"""adaptive_grad_clip, unitwise_norm and unitwise_clip against a NumPy reference."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nfnets_jax.optim import (
    AdaptiveGradClipState,
    adaptive_grad_clip,
    default_unit_axes,
    unitwise_clip,
    unitwise_norm,
)
from tests.optim import reference as ref

# A power of two, so thresholds built from exactly representable norms stay exact.
CLIP = 2.0**-6
EPS = 1e-3


# One leaf of each kind, for the tests that are about wrappers and transforms rather than
# layouts: fewer leaves compile faster.
FEW = (
    "net/~/conv/w",
    "net/~/conv/bias",
    "net/~/block/skip_gain",
    "net/~/linear/w",
    "net/~/linear/b",
)


def few(case):
    return tuple({k: t[k] for k in FEW} for t in case)


def random_case(seed: int = 0):
    """Flat params/grads with conv, linear, multi-head, 3-D conv, vector and scalar leaves.

    Includes zero-initialised parameters (threshold clipping*eps) and units whose gradient
    norm equals the threshold exactly.
    """
    rng = np.random.default_rng(seed)
    shapes = {
        "net/~/conv/w": (3, 3, 4, 8),
        "net/~/conv/gain": (8,),
        "net/~/conv/bias": (8,),
        "net/~/zero_conv/w": (1, 1, 8, 6),
        "net/~/block/skip_gain": (),
        "net/~/mha/w": (6, 2, 3),
        "net/~/conv3d/w": (2, 2, 2, 3, 4),
        "net/~/linear/w": (8, 5),
        "net/~/linear/b": (5,),
        "net/~/single_out/w": (7, 1),
    }
    params, grads = {}, {}
    for path, shape in shapes.items():
        params[path] = rng.normal(size=shape).astype(np.float32)
        # Gradient/parameter ratios spread over 10^-3.3 .. 10^-1.3 per unit, around the
        # thresholds 0.01 and 1/64, so some units clip and others do not.
        axes = ref.np_unit_axes(shape)
        unit_shape = (
            () if axes is None else tuple(1 if a in axes else n for a, n in enumerate(shape))
        )
        scale = 10.0 ** rng.uniform(-3.3, -1.3, size=unit_shape)
        grads[path] = (rng.normal(size=shape) * scale).astype(np.float32)
    for path in ("net/~/conv/bias", "net/~/zero_conv/w", "net/~/block/skip_gain"):
        params[path] = np.zeros_like(params[path])
    # Exactly at the threshold: column 0 has ||W|| = 5, max = 5/64, ||G|| = 5/64 exactly;
    # column 1 has ||W|| = 1.25 and a gradient just above its max.
    params["net/~/edge/w"] = np.array([[3.0, 0.75], [4.0, 1.0]], np.float32)
    grads["net/~/edge/w"] = np.array([[3 * CLIP, 0.375], [4 * CLIP, 0.5]], np.float32)
    # Zero parameter, gradient exactly at clipping*eps, and one just below.
    params["net/~/edge/b"] = np.zeros((), np.float32)
    grads["net/~/edge/b"] = -(np.float32(EPS) * np.float32(CLIP))
    params["net/~/edge/gain"] = np.zeros((1,), np.float32)
    grads["net/~/edge/gain"] = np.array([np.nextafter(np.float32(EPS * CLIP), 0)], np.float32)
    return params, grads


@functools.cache
def _jitted_update(tx):
    return jax.jit(lambda g, p: tx.update(g, tx.init(p), p))


def clip(tx, grads, params):
    """One jitted AGC update (eager dispatch of the many small ops is slower to run);
    the compiled function is reused for repeated calls with the same transformation."""
    return _jitted_update(tx)(grads, params)


def to_jax(flat):
    return ref.nest({k: jnp.asarray(v) for k, v in flat.items()})


def from_jax(tree):
    return {k: np.asarray(v) for k, v in ref.flatten(tree).items()}


@pytest.mark.parametrize(
    "shape, axes",
    [
        ((), ()),
        ((5,), (0,)),
        ((1, 5), (0, 1)),
        ((5, 1), (0, 1)),
        ((1, 1, 1, 8), (0, 1, 2, 3)),
        ((8, 5), (0,)),
        ((6, 2, 3), (0,)),
        ((3, 3, 4, 8), (0, 1, 2)),
        ((2, 2, 2, 3, 4), (0, 1, 2, 3)),
    ],
)
def test_default_unit_axes(shape, axes):
    assert default_unit_axes(shape) == axes


def test_default_unit_axes_rejects_rank_6_with_a_hint():
    with pytest.raises(ValueError, match="unit_axes"):
        default_unit_axes((2, 2, 2, 2, 2, 2))


@pytest.mark.parametrize(
    "shape", [(), (7,), (1, 7), (7, 1), (8, 5), (6, 2, 3), (3, 3, 4, 8), (2, 2, 2, 3, 4)]
)
def test_unitwise_norm_matches_numpy(shape):
    x = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    got = np.asarray(unitwise_norm(jnp.asarray(x)))
    want = ref.np_unitwise_norm(x)
    assert got.dtype == np.float32 and got.ndim == x.ndim
    np.testing.assert_allclose(got, np.broadcast_to(want, got.shape), rtol=1e-6)


def test_unitwise_norm_explicit_axes_and_bf16_in_float32():
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    got = unitwise_norm(jnp.asarray(x), axes=(0, -2))
    np.testing.assert_allclose(got, np.sqrt((x**2).sum(axis=(0, 1), keepdims=True)), rtol=1e-6)
    # 257 ones: the squared norm 257 is not representable in bfloat16 (256 and 258 are),
    # so only a float32 reduction gives sqrt(257).
    y = jnp.ones((257,), jnp.bfloat16)
    assert unitwise_norm(y).dtype == jnp.float32
    np.testing.assert_allclose(unitwise_norm(y), np.sqrt(257.0), rtol=1e-6)


def test_unitwise_clip_threshold_is_strict_and_untouched_bit_for_bit():
    g = jnp.array([[3.0, 0.375, 1.0], [4.0, 0.5, 1.0]])
    norm = unitwise_norm(g)  # [5, 0.625, sqrt(2)]
    max_norm = jnp.array([[5.0, 0.5, 2.0]])
    out = np.asarray(unitwise_clip(g, norm, max_norm))
    np.testing.assert_array_equal(out[:, 0], [3.0, 4.0])  # exactly at the threshold
    np.testing.assert_array_equal(out[:, 2], [1.0, 1.0])  # below
    np.testing.assert_allclose(out[:, 1], [0.3, 0.4], rtol=1e-6)  # rescaled to norm 0.5
    assert out.dtype == np.float32
    # Below the 1e-6 division floor a unit at the threshold would not survive a rescale
    # (factor max/1e-6 != 1), so only the strict comparison keeps it.
    tiny = jnp.float32(2.0**-22)
    assert float(unitwise_clip(tiny, jnp.abs(tiny), tiny)) == 2.0**-22


@pytest.mark.parametrize("clipping", [CLIP, 0.01])
def test_agc_matches_numpy_reference_leaf_for_leaf(clipping):
    params, grads = random_case()
    tx = adaptive_grad_clip(clipping, EPS)
    out, state = clip(tx, to_jax(grads), to_jax(params))
    got = from_jax(out)
    want, fraction, max_ratio = ref.np_agc_tree(grads, params, clipping, EPS)
    assert 0.1 < fraction < 0.9, "the case must mix clipped and unclipped units"
    for path in grads:
        assert got[path].dtype == np.float32
        np.testing.assert_allclose(got[path], want[path], rtol=2e-6, atol=0, err_msg=path)
    np.testing.assert_allclose(state.clip_fraction, fraction, rtol=1e-6)
    np.testing.assert_allclose(state.max_ratio, max_ratio, rtol=1e-6)


def test_agc_edge_units_exact():
    params, grads = random_case()
    tx = adaptive_grad_clip(CLIP, EPS)
    got = from_jax(clip(tx, to_jax(grads), to_jax(params))[0])
    # Gradient norm equal to the threshold: untouched, bit for bit.
    np.testing.assert_array_equal(got["net/~/edge/w"][:, 0], grads["net/~/edge/w"][:, 0])
    np.testing.assert_array_equal(got["net/~/edge/b"], grads["net/~/edge/b"])
    np.testing.assert_array_equal(got["net/~/edge/gain"], grads["net/~/edge/gain"])
    # Above it: rescaled to exactly the threshold 1.25/64 (norm 0.625 -> 0.01953125).
    np.testing.assert_allclose(
        got["net/~/edge/w"][:, 1], np.array([0.375, 0.5]) * (1.25 * CLIP / 0.625), rtol=1e-7
    )
    # Zero-initialised leaves get threshold clipping * eps for the whole tensor.
    assert np.linalg.norm(got["net/~/zero_conv/w"][..., 0]) <= EPS * CLIP * (1 + 1e-6)
    np.testing.assert_allclose(abs(got["net/~/block/skip_gain"]), EPS * CLIP, rtol=1e-6)


def test_properties_bound_idempotence_untouched_units():
    params, grads = random_case(seed=3)
    tx = adaptive_grad_clip(0.01, EPS)
    jp = to_jax(params)
    once = clip(tx, to_jax(grads), jp)[0]
    twice = clip(tx, once, jp)[0]
    once_np, twice_np = from_jax(once), from_jax(twice)
    for path, g in grads.items():
        axes = ref.np_unit_axes(np.shape(g))
        g_norm = ref.np_unitwise_norm(once_np[path], axes)
        max_norm = 0.01 * np.maximum(ref.np_unitwise_norm(params[path], axes), EPS)
        assert np.all(g_norm <= max_norm * (1 + 1e-6)), path
        # Idempotent up to one rounding of the rescale factor.
        np.testing.assert_allclose(twice_np[path], once_np[path], rtol=1e-6, err_msg=path)
        # Units that were not clipped come back bit for bit.
        untouched = np.broadcast_to(ref.np_unitwise_norm(g, axes) <= max_norm, np.shape(g))
        np.testing.assert_array_equal(once_np[path][untouched], g[untouched], err_msg=path)


def test_agrees_with_optax_adaptive_grad_clip_in_float32():
    # Where both are defined (float32, ranks 0-5, default units) the rules coincide: optax
    # keeps `g_norm < max_norm` and rescales otherwise, and at equality the factor
    # max/g_norm is exactly 1 (for thresholds above the 1e-6 floor, see the next test), so
    # the exact-threshold units agree too.
    params, grads = random_case(seed=5)
    jp, jg = to_jax(params), to_jax(grads)
    ours = from_jax(clip(adaptive_grad_clip(CLIP, EPS), jg, jp)[0])
    theirs = from_jax(clip(optax.adaptive_grad_clip(CLIP, EPS), jg, jp)[0])
    for path in grads:
        np.testing.assert_allclose(ours[path], theirs[path], rtol=1e-6, atol=0, err_msg=path)


def test_differs_from_optax_at_a_tiny_threshold():
    # Zero parameter, clipping 2^-12: threshold 2^-12 * 1e-3 < 1e-6, and a gradient exactly
    # at it. The original (and this) keeps it; optax clips on `not g_norm < max_norm`, and
    # its factor max_norm / max(g_norm, 1e-6) is then far from 1.
    params = {"m": {"bias": jnp.zeros(())}}
    threshold = np.float32(1e-3) * np.float32(2.0**-12)
    grads = {"m": {"bias": jnp.asarray(threshold)}}
    ours = clip(adaptive_grad_clip(2.0**-12), grads, params)[0]["m"]["bias"]
    theirs = clip(optax.adaptive_grad_clip(2.0**-12), grads, params)[0]["m"]["bias"]
    assert float(ours) == float(threshold)
    assert float(theirs) == pytest.approx(float(threshold) * float(threshold) / 1e-6, rel=1e-6)


def test_differs_from_optax_with_bf16_gradients():
    # optax takes the bfloat16 norm: sqrt(0.6016^2 + 0.8008^2) = 1.0016 rounds to 1.0 in
    # bfloat16, equal to the threshold 0.5 * ||[2, 0]|| = 1, so optax leaves it alone.
    # The float32 norm is above the threshold, so AGC here rescales.
    params = {"m": {"gain": jnp.array([2.0, 0.0], jnp.float32)}}
    grads = {"m": {"gain": jnp.array([0.6, 0.8], jnp.bfloat16)}}
    g32 = np.asarray(grads["m"]["gain"], np.float32)
    ours = adaptive_grad_clip(0.5, EPS).update(grads, None, params)[0]["m"]["gain"]
    theirs = optax.adaptive_grad_clip(0.5, EPS).update(grads, None, params)[0]["m"]["gain"]
    assert ours.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(theirs, np.float32), g32)
    want = (g32 / np.linalg.norm(g32)).astype(jnp.bfloat16)
    np.testing.assert_array_equal(np.asarray(ours), want)


def test_bf16_gradients_norms_in_float32():
    params, grads = random_case(seed=7)
    bf_grads = {k: v.astype(jnp.bfloat16) for k, v in grads.items()}
    tx = adaptive_grad_clip(0.01, EPS)
    got = from_jax(clip(tx, to_jax(bf_grads), to_jax(params))[0])
    want, _, _ = ref.np_agc_tree(bf_grads, params, 0.01, EPS)
    for path, g in bf_grads.items():
        assert got[path].dtype == jnp.bfloat16, path
        np.testing.assert_allclose(
            got[path].astype(np.float32), want[path].astype(np.float32), rtol=2**-8, err_msg=path
        )
        # Untouched units are the bfloat16 input, bit for bit.
        axes = ref.np_unit_axes(np.shape(g))
        max_norm = 0.01 * np.maximum(ref.np_unitwise_norm(params[path], axes), EPS)
        keep = np.broadcast_to(ref.np_unitwise_norm(g, axes) <= max_norm, np.shape(g))
        np.testing.assert_array_equal(got[path][keep], g[keep], err_msg=path)


def test_bf16_params_and_grads():
    params, grads = few(random_case(seed=8))
    bf = lambda t: {k: v.astype(jnp.bfloat16) for k, v in t.items()}
    got = from_jax(clip(adaptive_grad_clip(0.01, EPS), to_jax(bf(grads)), to_jax(bf(params)))[0])
    want, _, _ = ref.np_agc_tree(bf(grads), bf(params), 0.01, EPS)
    for path in grads:
        np.testing.assert_allclose(
            got[path].astype(np.float32), want[path].astype(np.float32), rtol=2**-8, err_msg=path
        )


def test_unit_axes_override_by_path_pattern():
    rng = np.random.default_rng(2)
    # A 1-D conv kernel (W, I, O): one unit per output channel is axes (0, 1), which the
    # rank-3 default (axis 0, multi-head linear) does not give.
    p = rng.normal(size=(3, 4, 5)).astype(np.float32)
    g = (10 * rng.normal(size=(3, 4, 5))).astype(np.float32)
    params, grads = {"conv1d": {"w": jnp.asarray(p)}}, {"conv1d": {"w": jnp.asarray(g)}}
    want = ref.np_agc(g, p, 0.01, EPS, axes=(0, 1))[0]
    by_pattern = adaptive_grad_clip(0.01, unit_axes={r"conv1d/w": (0, 1)})
    default = adaptive_grad_clip(0.01)
    got = by_pattern.update(grads, None, params)[0]["conv1d"]["w"]
    np.testing.assert_allclose(got, want, rtol=2e-6)
    got_default = default.update(grads, None, params)[0]["conv1d"]["w"]
    np.testing.assert_allclose(got_default, ref.np_agc(g, p, 0.01, EPS, axes=(0,))[0], rtol=2e-6)
    assert not np.allclose(got_default, want)
    # Rank 6 works once told its units.
    x6 = jnp.ones((1, 2, 1, 2, 1, 3))
    tx6 = adaptive_grad_clip(0.5, unit_axes={".*": (0, 1, 2, 3, 4)})
    got6 = tx6.update({"a": x6}, None, {"a": 2 * x6})[0]["a"]
    np.testing.assert_allclose(got6, x6)  # ||g|| = 2 = 0.5 * ||p|| per unit: untouched


def test_errors_are_clear():
    tx = adaptive_grad_clip(0.01)
    g = {"m": {"w": jnp.ones((2, 3))}}
    with pytest.raises(ValueError, match="needs the current parameters"):
        tx.update(g, tx.init(g))
    with pytest.raises(ValueError, match="'m/w' has shape"):
        tx.update(g, None, {"m": {"w": jnp.ones((3, 2))}})
    with pytest.raises(ValueError, match="no default unit layout"):
        tx.update({"a": jnp.ones((1, 2, 1, 2, 1, 3))}, None, {"a": jnp.ones((1, 2, 1, 2, 1, 3))})
    with pytest.raises(ValueError, match="clipping must be > 0"):
        adaptive_grad_clip(0.0)
    with pytest.raises(ValueError, match="eps must be >= 0"):
        adaptive_grad_clip(0.01, eps=-1.0)
    with pytest.raises(TypeError, match="clipping must be a float"):
        adaptive_grad_clip(None)
    with pytest.raises(ValueError, match="invalid for a rank-2"):
        adaptive_grad_clip(0.01, unit_axes={".*": (2,)}).update(g, None, g)
    with pytest.raises(ValueError, match="not a valid regular expression"):
        adaptive_grad_clip(0.01, unit_axes={"(": 0})
    with pytest.raises(TypeError, match=r"unit_axes must be None or a mapping"):
        adaptive_grad_clip(0.01, unit_axes=lambda path, x: (0, 1))


def test_state_reports_clip_fraction_and_max_ratio():
    params = {"a": {"w": jnp.array([[3.0, 1.0], [4.0, 0.0]]), "b": jnp.zeros(3)}}
    grads = {"a": {"w": jnp.array([[0.3, 0.001], [0.4, 0.0]]), "b": jnp.zeros(3)}}
    tx = adaptive_grad_clip(0.05)
    state = tx.init(params)
    assert isinstance(state, AdaptiveGradClipState)
    assert float(state.clip_fraction) == 0.0 and float(state.max_ratio) == 0.0
    _, state = tx.update(grads, state, params)
    # Units: w[:, 0] ratio 0.5/5 = 0.1 > 0.05 (clipped), w[:, 1] ratio 0.001, b ratio 0.
    assert float(state.clip_fraction) == pytest.approx(1 / 3)
    assert float(state.max_ratio) == pytest.approx(0.1, rel=1e-6)


def test_state_is_found_through_wrappers_and_numerics_do_not_depend_on_it():
    params, grads = few(random_case(seed=11))
    jp, jg = to_jax(params), to_jax(grads)
    mask = jax.tree_util.tree_map_with_path(lambda p, _: "linear" not in str(p), jp)
    tx = optax.chain(optax.masked(adaptive_grad_clip(0.01), mask), optax.sgd(1.0))
    updates, state = clip(tx, jg, jp)
    kept = {k: v for k, v in grads.items() if "linear" not in k}
    want, fraction, max_ratio = ref.np_agc_tree(kept, params, 0.01, EPS)
    assert float(optax.tree_utils.tree_get(state, "clip_fraction")) == pytest.approx(fraction)
    assert float(optax.tree_utils.tree_get(state, "max_ratio")) == pytest.approx(max_ratio)
    got = from_jax(updates)
    for path, g in grads.items():  # sgd(1.0) negates: -clipped, and the masked-out raw.
        np.testing.assert_allclose(-got[path], want.get(path, g), rtol=2e-6, err_msg=path)

    # The pure helpers (no state at all) give the same numbers bit for bit.
    def helpers_only(g, p):
        max_norm = jnp.maximum(unitwise_norm(p), EPS) * 0.01
        return unitwise_clip(g, unitwise_norm(g), max_norm)

    by_helpers = from_jax(jax.jit(lambda g, p: jax.tree.map(helpers_only, g, p))(jg, jp))
    for path in kept:
        np.testing.assert_array_equal(-got[path], by_helpers[path], err_msg=path)


def test_two_agc_states_need_the_path_api():
    p = {"w": jnp.ones((2, 2))}
    tx = optax.chain(adaptive_grad_clip(0.01), adaptive_grad_clip(0.02))
    state = tx.init(p)
    with pytest.raises(KeyError):
        optax.tree_utils.tree_get(state, "clip_fraction")
    assert len(optax.tree_utils.tree_get_all_with_path(state, "clip_fraction")) == 2


def test_jit_matches_eager():
    # Few leaves: eager dispatch compiles every small op separately.
    params, grads = few(random_case(seed=12))
    jp, jg = to_jax(params), to_jax(grads)
    tx = adaptive_grad_clip(0.01)
    eager, eager_state = tx.update(jg, tx.init(jp), jp)
    jitted, jit_state = jax.jit(tx.update)(jg, tx.init(jp), jp)
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    np.testing.assert_allclose(jit_state.clip_fraction, eager_state.clip_fraction)


def test_vmap_over_independent_trees():
    cases = [few(random_case(seed=s)) for s in (20, 21, 22)]
    stack = lambda i: to_jax({k: np.stack([c[i][k] for c in cases]) for k in cases[0][i]})
    tx = adaptive_grad_clip(0.01)
    out, state = jax.jit(jax.vmap(lambda g, p: tx.update(g, tx.init(p), p)))(stack(1), stack(0))
    got = from_jax(out)
    for i, (params, grads) in enumerate(cases):
        want, fraction, _ = ref.np_agc_tree(grads, params, 0.01, EPS)
        for path in grads:
            np.testing.assert_allclose(got[path][i], want[path], rtol=2e-6, err_msg=path)
        assert float(state.clip_fraction[i]) == pytest.approx(fraction)


def test_pmap_with_cross_device_mean(num_devices):
    params, _ = few(random_case(seed=30))
    rng = np.random.default_rng(31)
    per_device = [
        {k: (rng.normal(size=v.shape) * 0.05).astype(np.float32) for k, v in params.items()}
        for _ in range(num_devices)
    ]
    tx = adaptive_grad_clip(0.01)

    def step(g, p):
        g = jax.lax.pmean(g, "data")
        return tx.update(g, tx.init(p), p)

    rep = lambda t: jax.tree.map(lambda x: jnp.stack([x] * num_devices), to_jax(t))
    grads = to_jax({k: np.stack([d[k] for d in per_device]) for k in params})
    out, state = jax.pmap(step, axis_name="data")(grads, rep(params))
    mean = {k: np.mean([d[k] for d in per_device], axis=0, dtype=np.float32) for k in params}
    want, fraction, _ = ref.np_agc_tree(mean, params, 0.01, EPS)
    got = from_jax(out)
    for path in params:
        for d in range(num_devices):
            np.testing.assert_allclose(got[path][d], want[path], rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(state.clip_fraction, [fraction] * num_devices, rtol=1e-6)


def test_partition_equals_masked():
    params, grads = few(random_case(seed=40))
    jp, jg = to_jax(params), to_jax(grads)
    labels = jax.tree_util.tree_map_with_path(
        lambda p, _: "free" if "linear" in str(p) else "clip", jp
    )
    mask = jax.tree.map(lambda label: label == "clip", labels)
    part = optax.partition({"clip": adaptive_grad_clip(0.01), "free": optax.identity()}, labels)
    masked = optax.masked(adaptive_grad_clip(0.01), mask)
    a, sa = clip(part, jg, jp)
    b, sb = clip(masked, jg, jp)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)
    assert float(optax.tree_utils.tree_get(sa, "clip_fraction")) == float(
        optax.tree_utils.tree_get(sb, "clip_fraction")
    )


def test_multisteps_clips_the_accumulated_mean():
    params, g1 = few(random_case(seed=50))
    _, g2 = few(random_case(seed=51))
    jp = to_jax(params)
    inner = optax.chain(adaptive_grad_clip(0.01), optax.sgd(1.0))
    tx = optax.MultiSteps(inner, every_k_schedule=2)
    state = tx.init(jp)
    update = jax.jit(tx.update)
    u1, state = update(to_jax(g1), state, jp)
    assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(u1))
    u2, state = update(to_jax(g2), state, jp)
    mean = {k: (g1[k] + g2[k]) / np.float32(2) for k in g1}
    want, fraction, _ = ref.np_agc_tree(mean, params, 0.01, EPS)
    got = from_jax(u2)
    for path in mean:
        np.testing.assert_allclose(-got[path], want[path], rtol=1e-5, atol=1e-10, err_msg=path)
    clip_fraction = optax.tree_utils.tree_get(state, "clip_fraction")
    assert float(clip_fraction) == pytest.approx(fraction)


def test_everything_masked_out_reports_zero():
    p = {"w": jnp.ones((2, 2))}
    tx = optax.masked(adaptive_grad_clip(0.01), {"w": False})
    out, state = tx.update({"w": 5 * jnp.ones((2, 2))}, tx.init(p), p)
    np.testing.assert_array_equal(out["w"], 5 * np.ones((2, 2)))
    assert float(optax.tree_utils.tree_get(state, "clip_fraction")) == 0.0
