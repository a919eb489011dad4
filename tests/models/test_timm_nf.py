"""timm's NF family (models.timm_nf): sizes, MACs, registry, and logits against timm itself.

Golden facts (key lists, parameter counts, MACs) come from timm's own definitions via
tests/data/make_timm_family_golden.py; the parity tests import timm and torch (skipped
where timm is not installed).
"""

import json
import math
import pathlib

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nfnets_jax import checkpoints, models
from nfnets_jax.checkpoints._src.timm_models import TIMM_FAMILY_NAMES
from nfnets_jax.models import timm_nf
from nfnets_jax.models.flops import count_flops, traced_macs
from nfnets_jax.optim import masks

TIMM_KEYS = pathlib.Path(__file__).parents[1] / "data" / "timm_keys"
NAMES = tuple(timm_nf.TIMM_NF_CONFIGS)


def golden(name):
    return json.loads((TIMM_KEYS / f"{name}.json").read_text())


def abstract(name, px=64, num_classes=1000):
    # 'native': one grouped conv per layer, so tracing stays quick (same tree either way).
    make = lambda: timm_nf.TimmNFNet(num_classes, name, conv_impl="native")
    forward = hk.transform(lambda x: make()(x, is_training=False))
    return jax.eval_shape(forward.init, jax.random.key(0), jnp.zeros((1, px, px, 3)))


def n_params(tree):
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def test_every_timm_family_model_is_covered():
    # The folder also holds the dm_nfnet_* lists of DeepMind's NFNets (test_timm.py).
    family_files = [p.stem for p in TIMM_KEYS.glob("*.json") if not p.stem.startswith("dm_")]
    assert sorted(NAMES) == sorted(family_files)
    assert set(NAMES) == set(TIMM_FAMILY_NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_parameter_count_is_timms(name):
    params = abstract(name)
    count = n_params(params)
    from_shapes = sum(int(np.prod(shape)) for _, shape in golden(name)["state_dict"])
    assert count == from_shapes == golden(name)["num_params"]
    assert count == checkpoints.TIMM_MODELS[name].num_params
    # Same number of tensors as timm's state dict (no buffers in these models).
    assert len(jax.tree.leaves(params)) == len(golden(name)["state_dict"])


def test_published_parameter_counts():
    # timm's model cards / the issue: ECA-NFNet-L0 24.1 M (24.14 M), NF-ResNet-50 25.6 M,
    # NFNet-L0 35.1 M, NF-RegNet-B1 10.2 M.
    published_m = {"eca_nfnet_l0": 24.14, "nfnet_l0": 35.07, "nf_resnet50": 25.56}
    published_m["nf_regnet_b1"] = 10.22
    for name, millions in published_m.items():
        assert round(n_params(abstract(name)) / 1e6, 2) == millions


@pytest.mark.parametrize("name", NAMES)
def test_macs_match_torch_count_of_timm(name):
    # Reference: torch.utils.flop_counter on timm's meta model at the eval resolution
    # (FLOPs / 2). Our analytic count uses the same integer output sizes, so it agrees
    # exactly; a 1e-9 relative slack only absorbs float rounding of the sum.
    ((size, macs),) = golden(name)["macs"].items()
    ours = count_flops(lambda: timm_nf.TimmNFNet(1000, name), int(size), int(size))
    assert ours == pytest.approx(macs, rel=1e-9)


def test_eca_nfnet_l0_macs_at_288():
    ours = count_flops(lambda: timm_nf.TimmNFNet(1000, "eca_nfnet_l0"), 288, 288)
    assert round(ours / 1e9, 3) == 7.014


@pytest.mark.parametrize("name", ["eca_nfnet_l0", "nf_regnet_b1", "nf_resnet50"])
def test_analytic_macs_agree_with_the_traced_jaxpr(name):
    # An independent count from the traced convs and matmuls of the real forward pass at
    # an odd-sized input (ceil-mode pooling, symmetric padding): the weight
    # standardization's own matmuls are not convs, so traced == analytic exactly.
    forward = models.transform_model(name, 1000, {"conv_impl": "native"})
    x = jax.ShapeDtypeStruct((1, 72, 72, 3), jnp.float32)
    params, state = jax.eval_shape(lambda x: forward.init(jax.random.key(0), x, False), x)
    traced = traced_macs(lambda p, s, x: forward.apply(p, s, None, x, False), params, state, x)
    analytic = count_flops(lambda: timm_nf.TimmNFNet(1000, name), 72, 72)
    # ECA is computed as k shifted products (no matmul), so it is absent from the trace.
    eca = 0
    if name.startswith("eca"):
        eca = sum(
            b.attn_last.channels * b.attn_last.kernel_size
            for b in hk.transform(lambda: timm_nf.TimmNFNet(1000, name).blocks).apply({}, None)
        )
    assert traced == analytic - eca


def test_registry_builds_each_timm_name():
    for name in NAMES:
        cls = models.get_model(name)
        assert issubclass(cls, timm_nf.TimmNFNet) and cls.default_variant == name
    assert models.get_model("TimmNFNet") is timm_nf.TimmNFNet
    forward = models.transform_model("nf_regnet_b0", 10, {"drop_path_rate": 0.1})
    params, _ = jax.eval_shape(
        lambda x: forward.init(jax.random.key(0), x, True), jnp.zeros((1, 32, 32, 3))
    )
    assert params["TimmNFNet/~/linear"]["w"].shape == (960, 10)


def test_unknown_variant_is_a_clear_error():
    with pytest.raises(ValueError, match="Unknown timm NF variant 'eca_nfnet_l9'.*nfnet_l0"):
        hk.transform(lambda: timm_nf.TimmNFNet(10, "eca_nfnet_l9")).init(None)


def test_initial_blocks_are_identities_on_the_shortcut():
    # conv3's gain starts at 0 (timm's gain_init, no skip gain): stage outputs of blocks
    # without a projection equal their inputs at initialization.
    def f(x):
        net = timm_nf.TimmNFNet(10, "nf_resnet26", conv_impl="native")
        block = net.blocks[1]  # stages_0_1: no downsample
        return block(x, is_training=False)[0]

    forward = hk.transform(f)
    x = jax.random.normal(jax.random.key(1), (1, 4, 4, 256))
    params = jax.jit(forward.init)(jax.random.key(0), x)
    assert np.all(params["TimmNFNet/~/stages_0_1/~/conv3"]["gain"] == 0)
    np.testing.assert_array_equal(jax.jit(forward.apply)(params, None, x), x)


def test_helpers_match_timm_formulas():
    # make_divisible / ECA kernel sizes, checked on the values timm's configs produce.
    assert timm_nf.make_divisible(48 * 0.75) == 40  # NF-RegNet-B0 stem
    assert timm_nf.make_divisible(1536 * 0.25 * 0.25, round_limit=0.0) == 96  # L0 SE
    assert [timm_nf.eca_kernel_size(c) for c in (256, 512, 1536)] == [5, 5, 5]
    assert timm_nf.eca_kernel_size(64) == 3 and timm_nf.eca_kernel_size(2**11) == 7
    assert timm_nf.symmetric_padding(3, 2) == ((1, 1), (1, 1))
    assert timm_nf.symmetric_padding(7, 2) == ((3, 3), (3, 3))


# --- parity with timm itself ---------------------------------------------------------

PARITY = ("eca_nfnet_l0", "nfnet_l0", "nf_resnet50", "nf_regnet_b1")


@pytest.fixture(scope="module")
def torch_timm():
    timm = pytest.importorskip("timm")
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield torch, timm
    torch.set_num_threads(threads)


def _randomize_torch(torch, model, seed):
    # Every tensor random, gains away from timm's init (conv3's 0 would hide the branch).
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, p in model.named_parameters():
            if key.endswith(".gain"):
                p.copy_(0.5 + torch.rand(p.shape, generator=g))
            elif key.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                fan_in = max(1, p[0].numel())
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))


def _randomize_haiku(params, seed):
    rng = np.random.default_rng(seed)
    out = {}
    for module, sub in params.items():
        out[module] = {}
        for name, leaf in sub.items():
            shape = leaf.shape
            if name == "gain":
                value = rng.uniform(0.5, 1.5, shape)
            elif name in ("bias", "b"):
                value = 0.1 * rng.standard_normal(shape)
            else:
                value = rng.standard_normal(shape) / math.sqrt(max(1, int(np.prod(shape[:-1]))))
            out[module][name] = value.astype(np.float32)
    return out


@pytest.mark.parametrize("name", PARITY)
def test_logits_match_timm_both_directions(torch_timm, name):
    torch, timm = torch_timm
    entry = checkpoints.TIMM_MODELS[name]
    forward = models.transform_model(entry.architecture, 1000, {"conv_impl": "native"})
    # 72 px: odd sizes downstream exercise ceil-mode pooling and symmetric padding.
    x = np.random.default_rng(0).standard_normal((2, 72, 72, 3)).astype(np.float32)
    like, _ = jax.eval_shape(lambda x: forward.init(jax.random.key(0), x, False), x)
    apply = jax.jit(lambda p, x: forward.apply(p, {}, None, x, False)[0]["logits"])
    model = timm.create_model(name).eval()
    x_torch = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())

    # timm -> ours
    _randomize_torch(torch, model, seed=1)
    state_dict = {k: v.numpy() for k, v in model.state_dict().items()}
    with torch.no_grad():
        expected = model(x_torch).numpy()
    ours = np.asarray(apply(checkpoints.timm_to_haiku(state_dict, name)[0], x))
    scale = np.abs(expected).max()
    assert scale > 0.1  # the random weights give non-trivial logits
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4 * scale)

    # ours -> timm
    params = _randomize_haiku(like, seed=2)
    converted = {
        k: torch.from_numpy(np.ascontiguousarray(v))
        for k, v in checkpoints.haiku_to_timm(params, name)[0].items()
    }
    model.load_state_dict(converted, strict=True)
    with torch.no_grad():
        expected = model(x_torch).numpy()
    ours = np.asarray(apply(params, x))
    scale = np.abs(expected).max()
    assert scale > 0.1
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4 * scale)


def test_drop_path_rates_match_timm(torch_timm):
    torch, timm = torch_timm
    with torch.device("meta"):
        model = timm.create_model("nf_regnet_b0", drop_path_rate=0.2)
    theirs = [
        getattr(block.drop_path, "drop_prob", 0.0) for stage in model.stages for block in stage
    ]
    blocks = hk.transform(
        lambda: timm_nf.TimmNFNet(10, "nf_regnet_b0", drop_path_rate=0.2).blocks
    ).apply({}, None)
    ours = [b.drop_path_rate for b in blocks]
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-9)
    assert theirs[0] == 0.0 and theirs[-1] == pytest.approx(0.2)


@pytest.mark.parametrize("name", ["nfnet_l0", "eca_nfnet_l0", "nf_regnet_b0"])
def test_the_nfnet_recipe_groups_family_parameters_like_an_nfnets(name):
    # AGC clips every weight but the classifier's (SE and ECA weights included); weight
    # decay skips gains and biases.
    forward = models.transform_model(name, 10, {"conv_impl": "native"})
    params, _ = jax.eval_shape(
        lambda x: forward.init(jax.random.key(0), x, False), jnp.zeros((1, 32, 32, 3))
    )
    clipped = checkpoints.flatten_params(
        masks.mask_from_patterns(params, masks.NFNET_NO_CLIP_PATTERNS, invert=True)
    )
    decayed = checkpoints.flatten_params(
        masks.mask_from_patterns(params, masks.NFNET_NO_DECAY_PATTERNS, invert=True)
    )
    unclipped = sorted(path for path, clip in clipped.items() if not clip)
    assert unclipped == ["TimmNFNet/~/linear/w"]
    for path, decay in decayed.items():
        leaf = path.rsplit("/", 1)[1]
        assert decay == (leaf == "w"), path  # gains and biases are not decayed
    se = [p for p in clipped if "squeeze_excite" in p and p.endswith("/w")]
    eca = [p for p in clipped if p.endswith("attn_last/w")]
    assert (len(se) > 0) == (name != "eca_nfnet_l0") and (len(eca) > 0) == (name == "eca_nfnet_l0")
    assert all(clipped[p] and decayed[p] for p in se + eca)
