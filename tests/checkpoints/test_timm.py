"""timm state dicts <-> Haiku trees, without torch: golden keys, exact round trips, errors.

The golden key lists (tests/data/timm_keys/*.json) were generated once from timm's own
definitions by tests/data/make_timm_golden.py; tests/checkpoints/test_timm_parity.py
runs timm itself.
"""

import json
import os
import sys

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from experiments import export
from nfnets_jax import checkpoints, models, pretrained
from nfnets_jax.checkpoints._src import timm as timm_lib
from nfnets_jax.data import preprocess
from nfnets_jax.models import nfnet as nfnet_lib
from nfnets_jax.training import finetune

GOLDEN = os.path.join(os.path.dirname(__file__), os.pardir, "data", "timm_keys")
F_NAMES = [f"dm_nfnet_f{i}" for i in range(8)]


def golden(name):
    with open(os.path.join(GOLDEN, f"{name}.json"), encoding="utf-8") as f:
        return {k: tuple(v) for k, v in json.load(f)["keys"].items()}


def random_tree(shapes, seed=0):
    rng = np.random.default_rng(seed)
    return {
        m: {n: rng.standard_normal(s, dtype=np.float32) for n, s in p.items()}
        for m, p in shapes.items()
    }


def probe(shape):
    """A shapes-only stand-in for a tensor (no memory): np.shape() is all matching reads."""
    return np.broadcast_to(np.float32(0), shape)


@pytest.fixture(scope="module")
def f0_params():
    return random_tree(timm_lib._haiku_shapes("dm_nfnet_f0", 1000), seed=1)


@pytest.mark.parametrize("name", F_NAMES)
def test_key_map_gives_timms_keys_and_shapes(name):
    shapes = timm_lib._haiku_shapes(name, 1000)
    entries = timm_lib.TIMM_MODELS[name].key_map(shapes)
    assert len({e.timm_key for e in entries}) == len(entries)  # one key per parameter
    assert sorted((e.module, e.name) for e in entries) == sorted(
        (m, n) for m, p in shapes.items() for n in p
    )
    assert timm_lib._timm_shapes(entries, shapes) == golden(name)
    count = sum(int(np.prod(s)) for s in golden(name).values())
    assert count == timm_lib.TIMM_MODELS[name].num_params


@pytest.mark.parametrize("name", F_NAMES)
def test_shapes_round_trip_and_recognition_of_every_variant(name):
    """Haiku -> timm -> Haiku on shapes-only trees; the state dict names its variant."""
    shapes = timm_lib._haiku_shapes(name, 1000)
    tree = {m: {n: probe(s) for n, s in p.items()} for m, p in shapes.items()}
    state_dict, model = checkpoints.haiku_to_timm(tree)
    assert model.timm_name == name
    assert {k: v.shape for k, v in state_dict.items()} == golden(name)
    back, model, classes = checkpoints.timm_to_haiku(state_dict)
    assert (model.timm_name, classes) == (name, 1000)
    assert {m: {n: v.shape for n, v in p.items()} for m, p in back.items()} == shapes


@pytest.mark.parametrize("layout", sorted(timm_lib.LAYOUTS))
def test_every_layout_is_exact_and_invertible(layout):
    shape = {"conv2d": (3, 2, 5, 7), "linear": (5, 7), "linear1x1": (5, 7)}.get(
        layout, {"scalar": ()}.get(layout, (6,))
    )
    value = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    rule = timm_lib.LAYOUTS[layout]
    torch_side = rule.to_timm(value)
    assert torch_side.shape == rule.timm_shape(shape)
    np.testing.assert_array_equal(rule.from_timm(torch_side), value)
    if layout == "conv2d":  # HWIO -> OIHW
        assert torch_side[6, 4, 1, 1] == value[1, 1, 4, 6]
    if layout.startswith("linear"):  # (in, out) -> (out, in)
        assert torch_side[6, 4].item() == value[4, 6]


def test_f0_arrays_round_trip_bit_for_bit(f0_params):
    state_dict, _ = checkpoints.haiku_to_timm(f0_params)
    assert state_dict["stages.0.0.skipinit_gain"].shape == ()
    np.testing.assert_array_equal(
        state_dict["stem.conv1.weight"], f0_params["NFNet/~/stem_conv0"]["w"].transpose(3, 2, 0, 1)
    )
    np.testing.assert_array_equal(state_dict["head.fc.weight"], f0_params["NFNet/~/linear"]["w"].T)
    back, _, _ = checkpoints.timm_to_haiku(state_dict)
    assert back.keys() == f0_params.keys()
    for module, params in f0_params.items():
        for name, value in params.items():
            np.testing.assert_array_equal(back[module][name], value)


def test_safetensors_file_loads_as_a_checkpoint_with_timms_spec(f0_params, tmp_path):
    path = tmp_path / "dm_nfnet_f0.safetensors"
    model = checkpoints.save_timm(f0_params, path)
    assert model.timm_name == "dm_nfnet_f0"
    assert load_file(str(path)).keys() == golden("dm_nfnet_f0").keys()
    loaded = checkpoints.load_checkpoint(path)
    spec = loaded.spec
    assert (spec.model, dict(spec.model_kwargs)) == ("NFNet", {"variant": "F0", "numerics": "timm"})
    assert (spec.image_size, spec.eval_preproc, spec.variant) == (256, "resize_crop_0.9", "F0")
    assert spec.class_names[281] == "tabby"
    assert "dm_nfnet_f0" in loaded.description
    np.testing.assert_array_equal(
        loaded.params["NFNet/~/nf_block_5/~/conv1"]["w"],
        f0_params["NFNet/~/nf_block_5/~/conv1"]["w"],
    )


def test_another_number_of_classes_is_recognised(f0_params):
    tree = dict(f0_params)
    tree["NFNet/~/linear"] = {"w": probe((3072, 10)), "b": probe((10,))}
    state_dict, _ = checkpoints.haiku_to_timm(tree)
    assert state_dict["head.fc.weight"].shape == (10, 3072)
    model, classes = checkpoints.match_timm_state_dict(state_dict)
    assert (model.timm_name, classes) == ("dm_nfnet_f0", 10)


def test_timm_specs_record_timms_eval_preprocessing():
    # timm 1.0.31 default_cfgs of dm_nfnet_f*: test_input_size, crop_pct, all bicubic.
    expected = {
        "dm_nfnet_f0": (256, 0.9),
        "dm_nfnet_f1": (320, 0.91),
        "dm_nfnet_f2": (352, 0.92),
        "dm_nfnet_f3": (416, 0.94),
        "dm_nfnet_f4": (512, 0.951),
        "dm_nfnet_f5": (544, 0.954),
        "dm_nfnet_f6": (576, 0.956),
    }
    for name, (size, crop) in expected.items():
        model = checkpoints.TIMM_MODELS[name]
        spec = checkpoints.timm_model_spec(model, 1000)
        assert (spec.image_size, spec.eval_preproc) == (size, f"resize_crop_{crop}")
        assert model.interpolation == "bicubic"
        # The project's normalization is timm's (ImageNet mean/std).
        np.testing.assert_allclose(np.array(model.mean) * 255, preprocess.MEAN_RGB)
        np.testing.assert_allclose(np.array(model.std) * 255, preprocess.STDDEV_RGB)
    # F7 (not in timm's registry): DeepMind's 608 px, resize 640 and crop, as a fraction.
    assert checkpoints.timm_model_spec(checkpoints.TIMM_MODELS["dm_nfnet_f7"], 5).eval_preproc == (
        "resize_crop_0.95"
    )


# --------------------------------------------------------------------------- errors


def test_unsupported_model_says_which_timm_names_are():
    resnet = {
        "conv1.weight": probe((64, 3, 7, 7)),
        "bn1.weight": probe((64,)),
        "layer1.0.conv1.weight": probe((64, 64, 1, 1)),
        "fc.weight": probe((1000, 2048)),
    }
    with pytest.raises(checkpoints.UnsupportedTimmModelError) as info:
        checkpoints.match_timm_state_dict(resnet)
    assert "dm_nfnet_f0" in str(info.value) and "dm_nfnet_f6" in str(info.value)
    narrow = hk.transform(
        lambda x: models.NFNet(10, width_pattern=(32, 64, 128, 128), group_width=16)(x, False)
    )
    tree = jax.eval_shape(narrow.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    with pytest.raises(checkpoints.UnsupportedTimmModelError, match="standard variants"):
        checkpoints.haiku_to_timm(tree)


def test_mismatched_file_lists_every_difference(f0_params):
    state_dict, _ = checkpoints.haiku_to_timm(
        {m: {n: probe(v.shape) for n, v in p.items()} for m, p in f0_params.items()}
    )
    del state_dict["stages.2.3.conv2b.gain"]
    state_dict["stages.1.1.conv1.weight"] = probe((256, 512, 3, 3))
    state_dict["stages.9.0.extra"] = probe((4,))
    with pytest.raises(checkpoints.TimmMismatchError) as info:
        checkpoints.match_timm_state_dict(state_dict)
    message = str(info.value)
    assert "dm_nfnet_f0" in message and "3 differences" in message
    assert "missing: stages.2.3.conv2b.gain (768, 1, 1, 1)" in message
    assert "mis-shaped: stages.1.1.conv1.weight: file (256, 512, 3, 3) vs (256, 512, 1, 1)" in (
        message
    )
    assert "unexpected: stages.9.0.extra (4,)" in message
    assert isinstance(info.value, checkpoints.CheckpointMismatchError)


def test_corrupt_safetensors_files(tmp_path):
    good = tmp_path / "good.safetensors"
    save_file({"a": np.ones((64, 64), np.float32)}, str(good))
    data = good.read_bytes()
    (tmp_path / "short.safetensors").write_bytes(data[: len(data) - 100])
    (tmp_path / "header.safetensors").write_bytes(
        b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}" + data
    )
    for name in ("short", "header"):
        with pytest.raises(checkpoints.TimmFileError, match="corrupt or truncated"):
            checkpoints.load_checkpoint(tmp_path / f"{name}.safetensors")


def test_pth_without_torch_says_what_to_do(tmp_path, monkeypatch):
    path = tmp_path / "model.pth"
    path.write_bytes(b"anything")
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    with pytest.raises(checkpoints.TimmFileError, match="pip install torch"):
        checkpoints.read_timm_file(path)


# ------------------------------------------------------------ numerics and consumers


def test_numerics_keep_the_tree_and_reject_unknown_names():
    def tree(numerics):
        net = hk.transform(
            lambda x: models.NFNet(
                4, width_pattern=(16, 32), depth_pattern=(1, 1), group_width=8, numerics=numerics
            )(x, False)
        )
        return jax.eval_shape(net.init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))

    assert jax.tree.map(lambda s: s.shape, tree("timm")) == jax.tree.map(
        lambda s: s.shape, tree("deepmind")
    )
    with pytest.raises(ValueError, match="deepmind, timm"):
        tree("torch")
    assert nfnet_lib.NUMERICS["timm"] == nfnet_lib.Numerics(1e-5, "add", False)


def test_fine_tuning_a_timm_file_keeps_timms_numerics_unless_overridden():
    from experiments import configs

    config = configs.load_config("nfnet_f0")
    config.init_from = "weights/dm_nfnet_f0.pth"
    assert finetune.resolve_init_from_numerics(config)
    assert config.model_kwargs.numerics == "timm"
    config = configs.load_config("nfnet_f0")
    config.init_from = "dm_nfnet_f0.safetensors"
    with config.unlocked():
        config.model_kwargs.numerics = "deepmind"
    assert not finetune.resolve_init_from_numerics(config)
    assert config.model_kwargs.numerics == "deepmind"
    config = configs.load_config("nfnet_f0")
    config.init_from = "F0_haiku.npz"
    assert not finetune.resolve_init_from_numerics(config)
    assert "numerics" not in config.model_kwargs


def test_export_command_writes_timms_layout(f0_params, tmp_path, monkeypatch, capsys):
    loaded = checkpoints.LoadedCheckpoint(f0_params, {}, None, "RUN", "run RUN, step 9")
    monkeypatch.setattr(checkpoints, "read_run", lambda *a, **k: loaded)
    out = tmp_path / "mine.safetensors"
    assert export.main(["--workdir=RUN", f"--out={out}", "--format=timm"]) == 0
    assert "dm_nfnet_f0" in capsys.readouterr().out
    np.testing.assert_array_equal(
        load_file(str(out))["final_conv.gain"][:, 0, 0, 0], f0_params["NFNet/~/final_conv"]["gain"]
    )


def test_pretrained_load_and_evaluate_take_a_timm_file(f0_params, tmp_path):
    from experiments import evaluate

    path = tmp_path / "f0.safetensors"
    checkpoints.save_timm(f0_params, path)
    config, origin = evaluate.config_for_checkpoint(str(path))
    assert "timm" in origin
    assert (config.model_kwargs.numerics, config.dataset.eval_preproc) == (
        "timm",
        "resize_crop_0.9",
    )
    model = pretrained.load(path)
    assert (model.variant, model.image_size, model.spec.model_kwargs["numerics"]) == (
        "F0",
        256,
        "timm",
    )
