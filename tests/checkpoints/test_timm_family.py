"""TIMM_FAMILY: key maps against timm's own key lists, exact round trips, preprocessing.

The golden key lists (tests/data/timm_keys/, written by
tests/data/make_timm_family_golden.py from timm's definitions) are compared without
torch; only the last test imports timm, to check the recorded preprocessing against
timm's pretrained configs.
"""

import functools
import json
import pathlib

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nfnets_jax.checkpoints._src import timm_family
from nfnets_jax.checkpoints._src.timm_family import LAYOUTS, TIMM_FAMILY
from nfnets_jax.errors import NFNetsError
from nfnets_jax.models import timm_nf

TIMM_KEYS = pathlib.Path(__file__).parents[1] / "data" / "timm_keys"
NAMES = tuple(TIMM_FAMILY)


def golden(name):
    return json.loads((TIMM_KEYS / f"{name}.json").read_text())


@functools.cache
def abstract(name, num_classes=1000):
    make = lambda: timm_nf.TimmNFNet(num_classes, name, conv_impl="native")
    forward = hk.transform(lambda x: make()(x, is_training=False))
    return jax.eval_shape(forward.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))


@pytest.mark.parametrize("name", NAMES)
def test_key_map_gives_timms_keys_and_shapes(name):
    like = abstract(name)
    entries = TIMM_FAMILY[name].key_map(like)
    theirs = {k: tuple(shape) for k, shape in golden(name)["state_dict"]}
    converted = jax.eval_shape(
        lambda tree: {e.timm_key: LAYOUTS[e.layout][0](tree[e.module][e.name]) for e in entries},
        like,
    )
    ours = {k: tuple(v.shape) for k, v in converted.items()}
    assert ours == theirs
    assert len(entries) == len(theirs)  # one to one


@pytest.mark.parametrize("name", NAMES)
def test_round_trip_shapes_for_every_model(name):
    # Haiku -> timm -> Haiku on shapes only (jax.eval_shape: nothing allocated).
    like = abstract(name)
    entries = TIMM_FAMILY[name].key_map(like)

    def round_trip(tree):
        timm = {e.timm_key: LAYOUTS[e.layout][0](tree[e.module][e.name]) for e in entries}
        back = {}
        for e in entries:
            back.setdefault(e.module, {})[e.name] = LAYOUTS[e.layout][1](timm[e.timm_key])
        return back

    back = jax.eval_shape(round_trip, like)
    assert jax.tree.map(lambda a: a.shape, back) == jax.tree.map(lambda a: a.shape, like)


@pytest.mark.parametrize("name", ["eca_nfnet_l0", "nfnet_l0", "nf_resnet50", "nf_regnet_b1"])
def test_exact_round_trip_of_values(name):
    like = abstract(name, num_classes=7)
    rng = np.random.default_rng(0)
    params = {
        m: {n: rng.standard_normal(a.shape).astype(np.float32) for n, a in sub.items()}
        for m, sub in like.items()
    }
    state_dict = timm_family.to_state_dict(params, TIMM_FAMILY[name])
    assert state_dict["head.fc.weight"].shape[0] == 7  # (out, in)
    back = timm_family.from_state_dict(state_dict, TIMM_FAMILY[name], like)
    assert back.keys() == params.keys()
    for m in params:
        for n in params[m]:
            np.testing.assert_array_equal(back[m][n], params[m][n])


def test_layouts_are_exact_inverses_and_timm_shaped():
    rng = np.random.default_rng(0)
    cases = {
        "conv2d": ((3, 3, 4, 8), (8, 4, 3, 3)),
        "linear": ((16, 10), (10, 16)),
        "vector": ((8,), (8,)),
        "gain4d": ((8,), (8, 1, 1, 1)),
        "linear1x1": ((16, 4), (4, 16, 1, 1)),
        "conv1d": ((5,), (1, 1, 5)),
    }
    assert set(cases) == set(LAYOUTS)
    for layout, (haiku_shape, timm_shape) in cases.items():
        x = rng.standard_normal(haiku_shape).astype(np.float32)
        to_timm, from_timm = LAYOUTS[layout]
        assert to_timm(x).shape == timm_shape
        np.testing.assert_array_equal(from_timm(to_timm(x)), x)
    # conv2d is HWIO <-> OIHW: element [h, w, i, o] lands at [o, i, h, w].
    x = rng.standard_normal((3, 3, 4, 8))
    assert LAYOUTS["conv2d"][0](x)[5, 2, 1, 0] == x[1, 0, 2, 5]
    # SE: Haiku (in, out) [i, o] <-> timm 1x1 conv (out, in) [o, i].
    x = rng.standard_normal((16, 4))
    assert LAYOUTS["linear1x1"][0](x)[3, 11, 0, 0] == x[11, 3]


def test_mismatched_state_dicts_are_clear_errors():
    entry = TIMM_FAMILY["nf_resnet26"]
    like = abstract("nf_resnet26")
    state_dict = {
        e.timm_key: np.zeros(jax.eval_shape(LAYOUTS[e.layout][0], like[e.module][e.name]).shape)
        for e in entry.key_map(like)
    }
    del state_dict["stem.conv.gain"]
    with pytest.raises(NFNetsError, match=r"missing \['stem.conv.gain'\]"):
        timm_family.from_state_dict(state_dict, entry, like)
    state_dict["stem.conv.gain"] = np.zeros((64, 1, 1, 1))
    state_dict["head.fc.weight"] = np.zeros((10, 2048))
    with pytest.raises(ValueError, match=r"head.fc.weight: shape \(10, 2048\)"):
        timm_family.from_state_dict(state_dict, entry, like)
    with pytest.raises(NFNetsError, match="not part of a timm NF-family model"):
        entry.key_map({"NFNet/~/nf_block/~/conv0": {"w": (1,)}})


# timm 1.0.31's pretrained configs, resolved for evaluation (test size and crop where
# given): name -> (image_size, crop_pct).
EXPECTED_EVAL = {
    "nfnet_l0": (288, 1.0),
    "eca_nfnet_l0": (288, 1.0),
    "eca_nfnet_l1": (320, 1.0),
    "eca_nfnet_l2": (384, 1.0),
    "eca_nfnet_l3": (448, 1.0),
    "nf_resnet26": (224, 0.9),
    "nf_resnet50": (288, 0.94),
    "nf_resnet101": (224, 0.9),
    "nf_regnet_b0": (256, 0.9),
    "nf_regnet_b1": (288, 0.9),
    "nf_regnet_b2": (272, 0.9),
    "nf_regnet_b3": (320, 0.9),
    "nf_regnet_b4": (384, 0.9),
    "nf_regnet_b5": (456, 0.9),
}


@pytest.mark.parametrize("name", NAMES)
def test_eval_preprocessing_is_timms(name):
    entry = TIMM_FAMILY[name]
    assert (entry.image_size, entry.crop_pct) == EXPECTED_EVAL[name]
    cfg = golden(name)["pretrained_cfg"]
    size = (cfg["test_input_size"] or cfg["input_size"])[-1]
    crop = cfg["test_crop_pct"] or cfg["crop_pct"]
    assert (entry.image_size, entry.crop_pct) == (size, crop)
    assert entry.interpolation == cfg["interpolation"] == "bicubic"
    assert entry.mean == tuple(cfg["mean"]) and entry.std == tuple(cfg["std"])
    assert entry.architecture == name and entry.model_kwargs == {}


def test_eval_preprocessing_against_timm_itself():
    timm = pytest.importorskip("timm")
    from timm.data import resolve_data_config

    for name, entry in TIMM_FAMILY.items():
        cfg = timm.models.get_pretrained_cfg(name).to_dict()
        resolved = resolve_data_config(pretrained_cfg=cfg, use_test_size=True)
        assert resolved["input_size"] == (3, entry.image_size, entry.image_size), name
        assert resolved["crop_pct"] == entry.crop_pct, name
        assert resolved["interpolation"] == entry.interpolation, name
        assert tuple(resolved["mean"]) == entry.mean and tuple(resolved["std"]) == entry.std
