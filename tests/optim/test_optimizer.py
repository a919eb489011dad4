"""The NFNet recipe and build_optimizer against hand-written NumPy optimizers."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from nfnets_jax.optim import (
    IMAGENET_TRAIN_EXAMPLES,
    NFNET_NO_CLIP_PATTERNS,
    NFNET_NO_DECAY_PATTERNS,
    OPTIMIZERS,
    adaptive_grad_clip,
    build_optimizer,
    mask_from_patterns,
    nfnet_optimizer_config,
)
from tests.optim import reference as ref


def to_jax(flat):
    return ref.nest({k: jnp.asarray(v) for k, v in flat.items()})


def from_jax(tree):
    return {k: np.asarray(v) for k, v in ref.flatten(tree).items()}


# A few leaves of every group (conv, gain, bias, skip gain, SE linear, classifier), for the
# tests about other optimizers: fewer leaves compile faster.
FEW = [
    "NFNet/~/stem_conv0/w",
    "NFNet/~/stem_conv0/gain",
    "NFNet/~/stem_conv0/bias",
    "NFNet/~/nf_block/skip_gain",
    "NFNet/~/nf_block/~/squeeze_excite/~/linear/w",
    "NFNet/~/nf_block/~/squeeze_excite/~/linear/b",
    "NFNet/~/linear/w",
    "NFNet/~/linear/b",
]


def few_params(seed):
    params = ref.small_nfnet_params(seed=seed)
    return {k: params[k] for k in FEW}


# ImageNet, batch 4096, 360 epochs: the original's 112,602 steps of 312.78 per epoch.
NFNET_RUN = dict(
    batch_size=4096,
    steps_per_epoch=IMAGENET_TRAIN_EXAMPLES / 4096,
    total_steps=IMAGENET_TRAIN_EXAMPLES * 360 // 4096,
)


def run_steps(tx, params, grads_list):
    """Applies tx for each gradient tree (jitted); returns the params after each step."""

    @jax.jit
    def step(p, s, g):
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    p, s = to_jax(params), tx.init(to_jax(params))
    history, states = [], []
    for g in grads_list:
        p, s = step(p, s, to_jax(g))
        history.append(from_jax(p))
        states.append(s)
    return history, states


@pytest.mark.parametrize(
    "name, schedule", [("sgd_agc", "warmup"), ("sgd_agc", "constant"), ("sgd", "constant")]
)
def test_recipe_two_steps_against_numpy(name, schedule):
    params = ref.small_nfnet_params()
    grads = [ref.random_grads(params, seed=1), ref.random_grads(params, seed=2)]
    cfg = nfnet_optimizer_config()
    cfg.name = name
    if name == "sgd":
        cfg.clipping = None
    if schedule == "constant":
        cfg.schedule = dict(name="constant")
        lrs = [0.2, 0.2]
    else:  # one warmup step: lr(0) = 0 (momentum still accumulates), lr(1) = peak.
        cfg.schedule.warmup_epochs = 0.25
        lrs = [ref.np_warmup_cosine(t, 0.2, 40, 1.0) for t in (0, 1)]
        assert lrs == [0.0, 0.2]
    tx, lr = build_optimizer(
        cfg, ref.nest(params), batch_size=512, steps_per_epoch=4.0, total_steps=40
    )
    assert [float(lr(t)) for t in (0, 1)] == pytest.approx(lrs)
    history, states = run_steps(tx, params, grads)

    clipping = None if name == "sgd" else 0.01
    p, bufs = params, {k: np.zeros_like(v) for k, v in params.items()}
    for i in range(2):
        p, bufs = ref.np_sgd_agc_step(
            p, grads[i], bufs, lrs[i], wd=2e-5, momentum=0.9, clipping=clipping, eps=1e-3
        )
        for path in p:
            np.testing.assert_allclose(
                history[i][path], p[path], rtol=1e-6, atol=1e-9, err_msg=f"step {i} {path}"
            )
    if name == "sgd_agc":
        agc_leaves = {k: v for k, v in grads[0].items() if k != "NFNet/~/linear/w"}
        _, fraction, _ = ref.np_agc_tree(agc_leaves, params, 0.01, 1e-3)
        assert 0.2 < fraction < 0.9  # a real mix of clipped and unclipped units
        got = optax.tree_utils.tree_get(states[0], "clip_fraction")
        assert float(got) == pytest.approx(fraction)
    else:
        assert optax.tree_utils.tree_get(states[0], "clip_fraction") is None


def test_spec_one_step_check_on_f0_leaves():
    # All gradients 1 at global step 1000 (lr 1.02307), fresh momentum, on F0's shapes.
    shapes = ref.load_tree_shapes("NFNet-F0")
    keep = ["NFNet/~/linear/w", "NFNet/~/linear/b", "NFNet/~/nf_block/skip_gain"]
    keep += [p for p in shapes if p.startswith("NFNet/~/stem_conv0/")]
    rng = np.random.default_rng(0)
    params = {}
    for path in keep:
        kind = path.rsplit("/", 1)[1]
        if path == "NFNet/~/linear/w":  # the model's RandomNormal(0.01) classifier init
            params[path] = rng.normal(0, 0.01, shapes[path]).astype(np.float32)
        elif kind == "w":
            params[path] = rng.normal(0, 1 / math.sqrt(27), shapes[path]).astype(np.float32)
        elif kind == "gain":
            params[path] = np.ones(shapes[path], np.float32)
        else:
            params[path] = np.zeros(shapes[path], np.float32)
    tx, lr = build_optimizer(nfnet_optimizer_config(), ref.nest(params), **NFNET_RUN)
    assert NFNET_RUN["total_steps"] == 112_602
    assert float(lr(1000)) == pytest.approx(1.02307, abs=5e-6)
    jp = to_jax(params)
    state = optax.tree_utils.tree_set(tx.init(jp), count=jnp.asarray(1000, jnp.int32))
    grads = jax.tree.map(jnp.ones_like, jp)
    updates = from_jax(jax.jit(tx.update)(grads, state, jp)[0])
    step = float(lr(1000))
    fc_b = -updates["NFNet/~/linear/b"]
    np.testing.assert_allclose(fc_b, 1.9 * step * 1e-5 / math.sqrt(1000), rtol=1e-5)
    assert fc_b[0] == pytest.approx(6.1e-7, abs=0.05e-7)
    fc_w = -updates["NFNet/~/linear/w"]  # unclipped: (1 + 0.9) * lr * (1 + wd * w)
    w = params["NFNet/~/linear/w"]
    np.testing.assert_allclose(fc_w, 1.9 * step * (1 + 2e-5 * w), rtol=1e-6)
    assert fc_w.mean() == pytest.approx(1.944, abs=5e-4)
    skip = -updates["NFNet/~/nf_block/skip_gain"]
    assert skip == pytest.approx(1.9 * step * 1e-5, rel=1e-5)
    assert skip == pytest.approx(1.94e-5, abs=0.005e-5)


def test_adamw_with_agc_against_numpy():
    params = few_params(seed=3)
    grads = [ref.random_grads(params, seed=4), ref.random_grads(params, seed=5, low=-1, high=0)]
    cfg = dict(
        name="adamw",
        base_lr=1e-3,
        schedule=dict(name="constant"),
        weight_decay=0.05,
        clipping=0.01,
        b1=0.9,
        b2=0.99,
        adam_eps=1e-8,
    )
    tx, _ = build_optimizer(
        cfg, ref.nest(params), batch_size=64, steps_per_epoch=10.0, total_steps=100
    )
    history, _ = run_steps(tx, params, grads)
    p = params
    mu = {k: np.zeros_like(v) for k, v in params.items()}
    nu = {k: np.zeros_like(v) for k, v in params.items()}
    for t in (1, 2):
        p, mu, nu = ref.np_adamw_step(
            p,
            grads[t - 1],
            mu,
            nu,
            t,
            1e-3,
            b1=0.9,
            b2=0.99,
            eps=1e-8,
            wd=0.05,
            clipping=0.01,
            agc_eps=1e-3,
        )
        for path in p:
            np.testing.assert_allclose(
                history[t - 1][path], p[path], rtol=1e-5, atol=1e-8, err_msg=path
            )
    # AGC changes AdamW's second step (it rescales the two gradients differently).
    no_agc, _ = build_optimizer(
        {**cfg, "clipping": None},
        ref.nest(params),
        batch_size=64,
        steps_per_epoch=10.0,
        total_steps=100,
    )
    plain, _ = run_steps(no_agc, params, grads)
    conv = "NFNet/~/stem_conv0/w"
    assert np.abs(plain[1][conv] - history[1][conv]).max() > 1e-5


@pytest.mark.parametrize("name", ["lamb", "lars"])
def test_lamb_and_lars_with_agc_are_the_explicit_optax_chains(name):
    params = few_params(seed=6)
    grads = [ref.random_grads(params, seed=7), ref.random_grads(params, seed=8)]
    cfg = dict(name=name, base_lr=0.02, schedule=dict(name="constant"), weight_decay=1e-4)
    cfg.update(clipping=0.01, eps=1e-3, momentum=0.9)
    if name == "lamb":
        del cfg["momentum"]
    tx, _ = build_optimizer(
        cfg, ref.nest(params), batch_size=64, steps_per_epoch=10.0, total_steps=100
    )
    tree = ref.nest(params)
    decay = mask_from_patterns(
        tree, [r".*/(b|scale|offset)", r".*/[^/]*(gain|bias)[^/]*"], invert=True
    )
    clip = mask_from_patterns(tree, [r"NFNet/~/linear/w"], invert=True)
    agc = optax.masked(adaptive_grad_clip(0.01, 1e-3), clip)
    if name == "lamb":
        inner = optax.lamb(0.02, weight_decay=1e-4, mask=decay)
    else:
        inner = optax.lars(0.02, weight_decay=1e-4, weight_decay_mask=decay, trust_ratio_mask=decay)
    built, _ = run_steps(tx, params, grads)
    explicit, states = run_steps(optax.chain(agc, inner), params, grads)
    for path in params:
        np.testing.assert_array_equal(built[1][path], explicit[1][path], err_msg=path)
    # AGC rescales some units of a tensor and not others, which changes its direction, so
    # dropping AGC (or the mask) from the built chain could not give the same result.
    clipped = [float(optax.tree_utils.tree_get(s, "clip_fraction")) for s in states]
    assert all(0.2 < c < 0.9 for c in clipped), clipped


def test_nfnet_recipe_is_the_explicit_optax_chain_with_the_same_state_layout():
    # The chain (and so the opt_state a checkpoint holds) is AGC -> (decay, Nesterov, lr).
    params = few_params(seed=12)
    grads = [ref.random_grads(params, seed=13), ref.random_grads(params, seed=14)]
    tx, lr = build_optimizer(nfnet_optimizer_config(), ref.nest(params), **NFNET_RUN)
    tree = ref.nest(params)
    clip = mask_from_patterns(tree, NFNET_NO_CLIP_PATTERNS, invert=True)
    decay = mask_from_patterns(tree, NFNET_NO_DECAY_PATTERNS, invert=True)
    explicit = optax.chain(
        optax.masked(adaptive_grad_clip(0.01, 1e-3), clip),
        optax.chain(
            optax.add_decayed_weights(2e-5, mask=decay),
            optax.trace(decay=0.9, nesterov=True),
            optax.scale_by_learning_rate(lr),
        ),
    )
    jp = to_jax(params)
    assert jax.tree.structure(tx.init(jp)) == jax.tree.structure(explicit.init(jp))
    built, _ = run_steps(tx, params, grads)
    want, _ = run_steps(explicit, params, grads)
    for path in params:
        np.testing.assert_array_equal(built[1][path], want[1][path], err_msg=path)


def test_overrides_equal_edits_and_frozen_or_plain_configs_work():
    params = few_params(seed=9)
    grads = [ref.random_grads(params, seed=10)] * 2
    by_overrides = nfnet_optimizer_config(clipping=0.02, schedule=dict(warmup_epochs=1.0))
    edited = nfnet_optimizer_config()
    edited.clipping = 0.02
    edited.schedule.warmup_epochs = 1.0
    assert by_overrides.to_dict() == edited.to_dict()
    results = [
        build_optimizer(config, ref.nest(params), **NFNET_RUN)
        for config in (
            by_overrides,
            ml_collections.FrozenConfigDict(edited),
            edited.to_dict(),
        )
    ]
    histories = [run_steps(tx, params, grads)[0] for tx, _ in results]
    for history in histories[1:]:
        for path in params:
            np.testing.assert_array_equal(history[1][path], histories[0][1][path])
    # Warmup ends at 312.78 steps instead of 1563.92: lr(313) is the peak 1.6 already.
    assert [float(lr(313)) for _, lr in results] == [pytest.approx(1.6, abs=1e-4)] * 3
    _, lr = build_optimizer(nfnet_optimizer_config(), ref.nest(params), **NFNET_RUN)
    assert float(lr(56301)) == pytest.approx(0.8177, abs=1e-4)
    # The schedule override was merged into the NFNet schedule, not put in its place.
    assert by_overrides.schedule.to_dict() == dict(
        name="warmup_cosine", warmup_epochs=1.0, start_val=0.0, min_val=0.0
    )


def test_sgd_agc_without_momentum_decay_or_groups():
    params = {"m": {"w": jnp.array([[3.0], [4.0]]), "b": jnp.zeros(1)}}
    grads = {"m": {"w": jnp.array([[30.0], [40.0]]), "b": jnp.ones(1)}}
    config = nfnet_optimizer_config(
        base_lr=1.0,
        lr_scale_by_bs=False,
        momentum=None,
        weight_decay=None,
        clipping=0.1,
        no_decay_patterns=[],
        no_clip_patterns=[],
    )
    config.schedule = dict(name="constant")
    tx, _ = build_optimizer(config, params, batch_size=8, steps_per_epoch=1.0, total_steps=10)
    u, _ = tx.update(grads, tx.init(params), params)
    # w: unit norm 50 clipped to 0.1 * 5 = 0.5; b: zero param, clipped to 0.1 * 1e-3.
    np.testing.assert_allclose(u["m"]["w"], [[-0.3], [-0.4]], rtol=1e-6)
    np.testing.assert_allclose(u["m"]["b"], [-1e-4], rtol=1e-6)


@pytest.mark.parametrize("name", ["sgd_agc", "sgd", "adamw", "lamb", "lars"])
def test_unknown_key_is_one_error_naming_it_with_the_closest_key(name):
    params = ref.nest(few_params(seed=0))
    kw = dict(batch_size=256, steps_per_epoch=10.0, total_steps=100)
    config = {**nfnet_optimizer_config(name=name).to_dict(), "weight_decy": 1e-5}
    if name != "sgd_agc":
        config["clipping"] = None
    mine = {
        "sgd_agc": ["momentum", "nesterov"],
        "sgd": ["momentum", "nesterov"],
        "adamw": ["adam_eps", "b1", "b2"],
        "lamb": ["adam_eps", "b1", "b2"],
        "lars": ["lars_eps", "momentum", "nesterov", "trust_coefficient"],
    }[name]
    reads = sorted(
        ["name", "base_lr", "lr_scale_by_bs", "schedule", "weight_decay", "no_decay_patterns"]
        + ["clipping", "eps", "no_clip_patterns", "allow_unmatched_patterns"]
        + mine
    )
    with pytest.raises(ValueError) as error:
        build_optimizer(config, params, **kw)
    assert str(error.value) == (
        f"opt_config: unknown key(s) ['weight_decy'] for optimizer {name!r} (did you mean "
        f"'weight_decay' for 'weight_decy'?); it reads {reads}."
    )
    # A key like nothing known gets no suggestion; several unknown keys, one error.
    with pytest.raises(ValueError) as error:
        build_optimizer({**config, "zzz": 1}, params, **kw)
    assert str(error.value).startswith(
        f"opt_config: unknown key(s) ['weight_decy', 'zzz'] for optimizer {name!r} "
        "(did you mean 'weight_decay' for 'weight_decy'?); it reads"
    )


def test_build_optimizer_errors():
    params = ref.nest(ref.small_nfnet_params())
    kw = dict(batch_size=256, steps_per_epoch=10.0, total_steps=100)
    base = nfnet_optimizer_config().to_dict()
    with pytest.raises(ValueError, match=r"unknown optimizer 'adam'.*'sgd_agc'"):
        build_optimizer({**base, "name": "adam"}, params, **kw)
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['wd'\]"):
        build_optimizer({**base, "wd": 1e-5}, params, **kw)
    with pytest.raises(ValueError, match="name='sgd' does not clip"):
        build_optimizer({**base, "name": "sgd"}, params, **kw)
    with pytest.raises(ValueError, match="needs opt_config.clipping"):
        build_optimizer({**base, "clipping": None}, params, **kw)
    with pytest.raises(ValueError, match=r"missing required key\(s\) \['base_lr'\]"):
        build_optimizer({k: v for k, v in base.items() if k != "base_lr"}, params, **kw)
    with pytest.raises(ValueError, match="no_decay_patterns.*match no parameter"):
        build_optimizer({**base, "no_decay_patterns": [r".*/bais"]}, params, **kw)
    with pytest.raises(ValueError, match="momentum must be >= 0.0 and < 1.0"):
        build_optimizer({**base, "momentum": 1.5}, params, **kw)
    with pytest.raises(ValueError, match="batch_size must be positive"):
        build_optimizer(base, params, **{**kw, "batch_size": 0})
    with pytest.raises(ValueError, match="unknown name 'linear'"):
        build_optimizer({**base, "schedule": {"name": "linear"}}, params, **kw)
    # Keys of other optimizers are ignored, so switching the name is enough.
    tx, _ = build_optimizer({**base, "name": "adamw", "clipping": None}, params, **kw)
    assert isinstance(tx, optax.GradientTransformation)
    assert OPTIMIZERS == ("sgd_agc", "sgd", "adamw", "lamb", "lars")
