"""timm's NF family in TIMM_MODELS: key maps against timm's key lists, round trips, errors.

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

from nfnets_jax import checkpoints
from nfnets_jax.checkpoints import LAYOUTS, TIMM_MODELS
from nfnets_jax.checkpoints._src.timm_models import TIMM_FAMILY_NAMES
from nfnets_jax.errors import NFNetsError
from nfnets_jax.models import timm_nf

TIMM_KEYS = pathlib.Path(__file__).parents[1] / "data" / "timm_keys"
NAMES = TIMM_FAMILY_NAMES
TIMM_FAMILY = {name: TIMM_MODELS[name] for name in NAMES}


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
        lambda tree: {
            e.timm_key: LAYOUTS[e.layout].to_timm(tree[e.module][e.name]) for e in entries
        },
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
        timm = {e.timm_key: LAYOUTS[e.layout].to_timm(tree[e.module][e.name]) for e in entries}
        back = {}
        for e in entries:
            back.setdefault(e.module, {})[e.name] = LAYOUTS[e.layout].from_timm(timm[e.timm_key])
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
    state_dict, model = checkpoints.haiku_to_timm(params)  # recognised from the tree
    assert model.timm_name == name
    assert state_dict["head.fc.weight"].shape[0] == 7  # (out, in)
    back, model, classes = checkpoints.timm_to_haiku(state_dict)  # and from the keys
    assert (model.timm_name, classes) == (name, 7)
    assert back.keys() == params.keys()
    for m in params:
        for n in params[m]:
            np.testing.assert_array_equal(back[m][n], params[m][n])


def test_the_eca_layout_is_exact_and_timm_shaped():
    # The layout the family adds to the NFNets' (tests/checkpoints/test_timm.py checks
    # those): Haiku's ECA kernel (k,) <-> timm's Conv1d(1, 1, k) weight (1, 1, k).
    x = np.random.default_rng(0).standard_normal(5).astype(np.float32)
    layout = LAYOUTS["conv1d"]
    assert layout.to_timm(x).shape == layout.timm_shape(x.shape) == (1, 1, 5)
    np.testing.assert_array_equal(layout.to_timm(x)[0, 0], x)
    np.testing.assert_array_equal(layout.from_timm(layout.to_timm(x)), x)


def test_mismatched_state_dicts_are_clear_errors():
    entry = TIMM_FAMILY["nf_resnet26"]
    like = abstract("nf_resnet26")
    state_dict = {
        e.timm_key: np.zeros(
            jax.eval_shape(LAYOUTS[e.layout].to_timm, like[e.module][e.name]).shape
        )
        for e in entry.key_map(like)
    }
    del state_dict["stem.conv.gain"]
    state_dict["stages.0.0.conv1.weight"] = np.zeros((64, 63, 1, 1))
    with pytest.raises(checkpoints.TimmMismatchError) as error:
        checkpoints.timm_to_haiku(state_dict)
    message = str(error.value)
    assert "looks like timm's nf_resnet26" in message and "(2 differences)" in message
    assert "missing: stem.conv.gain (64, 1, 1, 1)" in message
    assert "mis-shaped: stages.0.0.conv1.weight: file (64, 63, 1, 1) vs (64, 64, 1, 1)" in message
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


def test_a_family_file_loads_for_inference_evaluation_and_export(tmp_path):
    from experiments import evaluate
    from nfnets_jax import pretrained

    rng = np.random.default_rng(4)
    spec = checkpoints.timm_model_spec(TIMM_MODELS["nf_regnet_b0"], 1000)
    params = jax.tree.map(
        lambda a: rng.standard_normal(a.shape).astype(np.float32), spec.abstract_params()
    )
    path = tmp_path / "nf_regnet_b0.safetensors"
    checkpoints.save_timm(params, path)

    loaded = checkpoints.load_checkpoint(path)
    assert (loaded.spec.model, dict(loaded.spec.model_kwargs)) == ("nf_regnet_b0", {})
    assert (loaded.spec.image_size, loaded.spec.eval_preproc) == (256, "resize_crop_0.9")
    assert loaded.spec.class_names[281] == "tabby"
    assert "nf_regnet_b0" in loaded.description
    for module, leaves in params.items():
        for name, value in leaves.items():
            np.testing.assert_array_equal(loaded.params[module][name], value)

    config, origin = evaluate.config_for_checkpoint(str(path))
    assert "timm" in origin and config.model == "nf_regnet_b0"
    assert (config.dataset.eval_image_size, config.dataset.eval_preproc) == (256, "resize_crop_0.9")
    model = pretrained.load(path)
    assert (model.spec.model, model.image_size) == ("nf_regnet_b0", 256)
    # And back: the loaded tree writes the same state dict.
    again, model = checkpoints.haiku_to_timm(loaded.params)
    assert model.timm_name == "nf_regnet_b0"
    written = checkpoints.read_timm_file(path)
    assert again.keys() == written.keys()
    for key, value in written.items():
        np.testing.assert_array_equal(again[key], value)


def test_the_readme_table_lists_every_timm_model_with_its_eval_input():
    readme = (pathlib.Path(__file__).parents[2] / "README.md").read_text().splitlines()
    for name, model in TIMM_MODELS.items():
        rows = [line for line in readme if line.startswith(f"| `{name}`")]
        assert len(rows) == 1, name
        assert f"| {model.image_size}, {model.crop_pct}" in rows[0], rows[0]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_files_load_exactly_as_float32(tmp_path, dtype):
    # Hub weights are often saved in half precision: every value widens exactly.
    import ml_dtypes
    from safetensors.numpy import save_file

    half = {"bfloat16": ml_dtypes.bfloat16, "float16": np.float16}[dtype]
    spec = checkpoints.timm_model_spec(TIMM_MODELS["nf_regnet_b0"], 10)
    rng = np.random.default_rng(5)
    params = jax.tree.map(
        lambda a: rng.standard_normal(a.shape).astype(np.float32), spec.abstract_params()
    )
    state_dict, _ = checkpoints.haiku_to_timm(params)
    path = tmp_path / f"b0_{dtype}.safetensors"
    save_file({k: np.ascontiguousarray(v).astype(half) for k, v in state_dict.items()}, str(path))
    loaded = checkpoints.load_checkpoint(path)
    assert loaded.spec.model == "nf_regnet_b0" and loaded.spec.num_classes == 10
    for module, leaves in params.items():
        for name, value in leaves.items():
            got = loaded.params[module][name]
            assert got.dtype == np.float32
            np.testing.assert_array_equal(got, value.astype(half).astype(np.float32))
            assert not np.array_equal(got, value)  # the file really was rounded
