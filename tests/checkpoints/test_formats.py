"""Checkpoint I/O: DeepMind's pickle layout (safely), .npz archives and tree validation."""

import io
import os
import pickle
import pickletools

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nfnets_jax import checkpoints
from nfnets_jax.models import NFNet
from tests.models.conftest import random_params


# ------------------------------------------------- writing pickles like 2021 tools did
def _standin(module: str, name: str) -> type:
    """A class that pickles as the global ``module.name`` (which may not be importable)."""
    return type(name, (), {"_pickle_as": (module, name)})


FLAT_MAPPING = _standin("haiku._src.data_structures", "FlatMapping")
DILL_CREATE_ARRAY = _standin("dill._dill", "_create_array")
NUMPY1_RECONSTRUCT = _standin("numpy.core.multiarray", "_reconstruct")
NUMPY1_SCALAR = _standin("numpy.core.multiarray", "scalar")


class FlatMappingDict(dict):
    """Marks a dict that 2021 Haiku would have stored as a FlatMapping."""


class LegacyPickler(pickle._Pickler):
    """Emits what dill + numpy 1.x + Haiku 0.0.3 emitted, without needing any of them.

    Haiku 0.0.3's FlatMapping reduces to ``(FlatMapping, (dict,))``; dill wraps every
    ndarray in ``dill._dill._create_array(f, args, state, npdict)``; numpy 1.x names its
    helpers ``numpy.core.multiarray.*``.
    """

    def __init__(self, file, protocol, numpy1=True, dill_arrays=True):
        super().__init__(file, protocol)
        self.numpy1, self.dill_arrays = numpy1, dill_arrays

    def reducer_override(self, obj):
        if type(obj) is FlatMappingDict:
            return FLAT_MAPPING, (dict(obj),)
        if type(obj) is np.ndarray:
            f, args, state = obj.__reduce__()
            f = NUMPY1_RECONSTRUCT if self.numpy1 else f
            if self.dill_arrays:
                return DILL_CREATE_ARRAY, (f, args, state, None)
            return f, args, state
        if isinstance(obj, np.generic) and self.numpy1:
            return NUMPY1_SCALAR, obj.__reduce__()[1]
        return NotImplemented

    def save_global(self, obj, name=None):
        target = getattr(obj, "_pickle_as", None)
        if target is None:
            return super().save_global(obj, name)
        module, qualname = target
        if self.proto >= 4:
            self.save(module)
            self.save(qualname)
            self.write(pickle.STACK_GLOBAL)
        else:
            self.write(pickle.GLOBAL + f"{module}\n{qualname}\n".encode())
        self.memoize(obj)


def legacy_bytes(params, protocol=3, numpy1=True, dill_arrays=True, flat_mapping=True):
    tree = {m: dict(sub) for m, sub in params.items()}
    if flat_mapping:
        tree = FlatMappingDict({m: FlatMappingDict(sub) for m, sub in tree.items()})
    buffer = io.BytesIO()
    LegacyPickler(buffer, protocol, numpy1, dill_arrays).dump(tree)
    return buffer.getvalue()


def globals_in(data: bytes) -> set[str]:
    found, strings = set(), []
    for op, arg, _ in pickletools.genops(data):
        if op.name == "GLOBAL":
            found.add(arg.replace(" ", "."))
        elif op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            strings.append(arg)
        elif op.name == "STACK_GLOBAL":
            found.add(f"{strings[-2]}.{strings[-1]}")
    return found


SMALL = {
    "NFNet/~/linear": {
        "w": np.arange(12, dtype=np.float32).reshape(4, 3) / 7,
        "b": np.array([0.5, -1.0, 2.0], np.float32),
    },
    "NFNet/~/nf_block": {"skip_gain": np.array(0.25, np.float32)},
    "NFNet/~/nf_block/~/conv0": {"w": np.ones((1, 1, 2, 2), np.float32)},
}


def assert_same_tree(got, want):
    assert sorted(got) == sorted(want)
    for module in want:
        assert sorted(got[module]) == sorted(want[module])
        for name, value in want[module].items():
            leaf = got[module][name]
            assert isinstance(leaf, np.ndarray) and leaf.flags.writeable
            assert leaf.dtype == np.float32 and leaf.shape == np.shape(value)
            np.testing.assert_array_equal(leaf, value)


@pytest.mark.parametrize(
    "protocol,numpy1,dill_arrays,flat_mapping,expected_globals",
    [
        (
            3,
            True,
            True,
            True,
            {
                "dill._dill._create_array",
                "numpy.core.multiarray._reconstruct",
                "haiku._src.data_structures.FlatMapping",
            },
        ),
        (2, True, False, True, {"numpy.core.multiarray._reconstruct", "_codecs.encode"}),
        (4, True, True, False, {"dill._dill._create_array", "numpy.core.multiarray._reconstruct"}),
        (4, False, False, True, {"numpy._core.multiarray._reconstruct"}),
        (5, False, True, True, {"dill._dill._create_array"}),
    ],
)
def test_legacy_layouts_load(
    tmp_path, protocol, numpy1, dill_arrays, flat_mapping, expected_globals
):
    data = legacy_bytes(SMALL, protocol, numpy1, dill_arrays, flat_mapping)
    assert expected_globals <= globals_in(data)  # the file really uses those encodings
    path = tmp_path / "F0_haiku.npz"  # DeepMind's name for a pickle
    path.write_bytes(data)
    assert_same_tree(checkpoints.load_params(path), SMALL)


def test_a_real_haiku_flatmap_pickle_loads(tmp_path):
    from haiku._src import data_structures

    tree = data_structures.FlatMap({m: data_structures.FlatMap(sub) for m, sub in SMALL.items()})
    data = pickle.dumps(tree, protocol=4)
    assert "haiku._src.data_structures.FlatMapping" in globals_in(data)
    path = tmp_path / "flat.pkl"
    path.write_bytes(data)
    assert_same_tree(checkpoints.load_params(path), SMALL)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_plain_pickles_of_numpy_arrays_and_scalars_load(tmp_path, protocol):
    tree = {"m": {"w": np.ones((2, 2), np.float32), "s": np.float32(3.0)}}
    path = tmp_path / "p.pkl"
    path.write_bytes(pickle.dumps(tree, protocol=protocol))
    loaded = checkpoints.load_params(path)
    np.testing.assert_array_equal(loaded["m"]["w"], np.ones((2, 2)))
    assert loaded["m"]["s"].shape == () and loaded["m"]["s"] == 3.0


class Evil:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.mark.parametrize(
    "payload,refused",
    [
        (lambda marker: Evil(os.system, f"touch {marker}"), f"'{os.system.__module__}.system'"),
        (lambda marker: Evil(eval, f"open({str(marker)!r}, 'w')"), "'builtins.eval'"),
        (lambda marker: Evil(np.save, str(marker), np.zeros(1)), "'numpy.save'"),
        (lambda marker: Evil(getattr, "text", "upper"), "'builtins.getattr'"),
    ],
)
def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path, payload, refused):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.npz"
    tree = {"NFNet/~/linear": {"w": np.ones(2, np.float32), "b": payload(marker)}}
    path.write_bytes(pickle.dumps(tree, protocol=3))
    with pytest.raises(checkpoints.UnsafePickleError, match=refused) as info:
        checkpoints.load_params(path)
    assert "Nothing from it was executed" in str(info.value)
    assert not marker.exists() and not (tmp_path / "pwned.npy").exists()


def test_codecs_encode_only_for_latin1(tmp_path):
    path = tmp_path / "codec.pkl"
    import codecs

    path.write_bytes(pickle.dumps({"m": {"w": Evil(codecs.encode, "abc", "rot13")}}, protocol=2))
    with pytest.raises(checkpoints.UnsafePickleError, match="encoding 'rot13'"):
        checkpoints.load_params(path)


def test_npz_round_trip_and_dotted_keys(tmp_path):
    path = tmp_path / "params.npz"
    checkpoints.save_params(SMALL, path, format="npz")
    with np.load(path) as archive:
        assert sorted(archive.files) == sorted(checkpoints.flatten_params(SMALL))
    assert_same_tree(checkpoints.load_params(path), SMALL)
    # DeepMind's flatten_haiku_tree keys: '/~/' and '/' both became '.'.
    dotted = tmp_path / "dotted.npz"
    np.savez(dotted, **{"NFNet.nf_block.conv0.w": np.ones((1, 1, 2, 2), np.float32)})
    assert list(checkpoints.load_params(dotted)) == ["NFNet/~/nf_block/~/conv0"]


def test_saved_pickle_is_the_original_layout(tmp_path):
    path = tmp_path / "export.npz"
    checkpoints.save_params(jax.tree.map(jnp.asarray, SMALL), path)  # jax arrays in
    # What DeepMind's loader does (dill.load is pickle.load for these objects):
    with open(path, "rb") as f:
        raw = pickle.load(f)
    assert type(raw) is dict and all(type(sub) is dict for sub in raw.values())
    for module, sub in SMALL.items():
        for name, value in sub.items():
            assert type(raw[module][name]) is np.ndarray
            assert raw[module][name].dtype == np.float32
            np.testing.assert_array_equal(raw[module][name], value)
    # Only `numpy.ndarray` is referenced: loadable under numpy 1.x and 2.x alike.
    assert globals_in(path.read_bytes()) == {"numpy.ndarray"}
    assert_same_tree(checkpoints.load_params(path), SMALL)


def test_bad_files_and_bad_params_give_clear_errors(tmp_path):
    text = tmp_path / "page.html"
    text.write_text("<html>Access denied</html>")
    with pytest.raises(ValueError, match="partial download"):
        checkpoints.load_params(text)
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(legacy_bytes(SMALL)[:-40])
    with pytest.raises(ValueError, match="truncated"):
        checkpoints.load_params(truncated)
    not_a_tree = tmp_path / "list.pkl"
    not_a_tree.write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(ValueError, match="expected a mapping"):
        checkpoints.load_params(not_a_tree)
    strings = tmp_path / "strings.pkl"
    strings.write_bytes(pickle.dumps({"m": {"w": "abc"}}))
    with pytest.raises(ValueError, match="m/w: expected a numeric array"):
        checkpoints.load_params(strings)
    objects = tmp_path / "objects.npz"
    np.savez(objects, **{"m/w": np.array([{"a": 1}], dtype=object)})
    with pytest.raises(ValueError, match="could not read the .npz archive"):
        checkpoints.load_params(objects)
    with pytest.raises(ValueError, match="format must be one of"):
        checkpoints.save_params(SMALL, tmp_path / "x", format="h5")
    with pytest.raises(ValueError, match="only floating parameters"):
        checkpoints.save_params({"m": {"step": np.array(3)}}, tmp_path / "x")
    assert not (tmp_path / "x").exists()  # nothing half-written


# ----------------------------------------------------------------------- validation
def expected_tree(num_classes=10):
    return {
        "NFNet/~/linear": {
            "w": jax.ShapeDtypeStruct((4, num_classes), jnp.float32),
            "b": jax.ShapeDtypeStruct((num_classes,), jnp.float32),
        },
        "NFNet/~/nf_block": {"skip_gain": jax.ShapeDtypeStruct((), jnp.float32)},
        "NFNet/~/nf_block/~/conv0": {"w": jax.ShapeDtypeStruct((1, 1, 2, 2), jnp.float32)},
    }


def test_validation_lists_every_problem_in_one_error():
    loaded = {m: dict(sub) for m, sub in SMALL.items()}
    del loaded["NFNet/~/nf_block"]  # missing skip_gain
    loaded["NFNet/~/nf_block/~/conv0"]["w"] = np.ones((1, 1, 2, 3), np.float32)  # shape
    loaded["NFNet/~/extra"] = {"w": np.ones(3, np.float32)}  # unexpected
    with pytest.raises(checkpoints.CheckpointMismatchError) as info:
        checkpoints.validate_and_merge(loaded, expected_tree(num_classes=3))
    message = str(info.value)
    assert "missing from the checkpoint (1):\n    NFNet/~/nf_block/skip_gain ()" in message
    assert "unexpected in the checkpoint (1):\n    NFNet/~/extra/w (3,)" in message
    assert "NFNet/~/nf_block/~/conv0/w: checkpoint (1, 1, 2, 3) vs model (1, 1, 2, 2)" in message
    assert "variant and options" in message


def test_head_mismatch_suggests_replace_head_and_replace_head_reinitialises():
    with pytest.raises(checkpoints.CheckpointMismatchError, match="pass replace_head=True") as info:
        checkpoints.validate_and_merge(SMALL, expected_tree(num_classes=10))
    assert "NFNet/~/linear/w: checkpoint (4, 3) vs model (4, 10)" in str(info.value)

    merged, replaced = checkpoints.validate_and_merge(
        SMALL, expected_tree(10), replace_head=True, rng=jax.random.key(0)
    )
    assert replaced == ["NFNet/~/linear/b", "NFNet/~/linear/w"]
    head = merged["NFNet/~/linear"]
    assert head["w"].shape == (4, 10) and head["b"].shape == (10,)
    np.testing.assert_array_equal(head["b"], np.zeros(10))
    assert 0.003 < head["w"].std() < 0.02  # N(0, 0.01)
    np.testing.assert_array_equal(merged["NFNet/~/nf_block/~/conv0"]["w"], np.ones((1, 1, 2, 2)))

    # Real initial params as `expected`: the new head is exactly theirs.
    concrete = jax.tree.map(lambda s: jnp.full(s.shape, 0.5, s.dtype), expected_tree(10))
    merged, _ = checkpoints.validate_and_merge(SMALL, concrete, replace_head=True)
    np.testing.assert_array_equal(merged["NFNet/~/linear"]["w"], np.full((4, 10), 0.5))

    # Same number of classes: nothing is replaced.
    assert checkpoints.validate_and_merge(SMALL, expected_tree(3), replace_head=True).replaced == []
    with pytest.raises(ValueError, match="pass rng="):
        checkpoints.validate_and_merge(SMALL, expected_tree(10), replace_head=True)


def test_replace_head_does_not_hide_a_different_feature_width():
    wide = expected_tree(10)
    wide["NFNet/~/linear"]["w"] = jax.ShapeDtypeStruct((8, 10), jnp.float32)
    with pytest.raises(checkpoints.CheckpointMismatchError, match="checkpoint \\(4, 3\\) vs model"):
        checkpoints.validate_and_merge(SMALL, wide, replace_head=True, rng=jax.random.key(0))


def test_loaded_values_are_cast_to_the_expected_dtype():
    loaded = jax.tree.map(lambda a: np.asarray(a, np.float64), SMALL)
    merged, _ = checkpoints.validate_and_merge(loaded, expected_tree(3))
    assert {a.dtype for a in jax.tree.leaves(merged)} == {np.dtype(np.float32)}


# ------------------------------------------------------------------ model round trip
def test_checkpoint_round_trips_give_identical_outputs(tmp_path):
    make = lambda: NFNet(
        5, "F0", width_pattern=[16], depth_pattern=[2], group_width=8, stem_widths=(4, 4, 4)
    )
    forward = hk.transform(lambda x: make()(x, is_training=False))
    x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
    expected = jax.eval_shape(forward.init, jax.random.key(0), x)
    params = random_params(expected, seed=3)
    apply = jax.jit(forward.apply)
    reference = np.asarray(apply(params, None, x)["logits"])

    numpy_params = jax.tree.map(np.asarray, params)
    files = {
        "deepmind_layout.npz": legacy_bytes(numpy_params),  # FlatMapping, dill, numpy 1
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    checkpoints.save_params(params, tmp_path / "ours.pkl")
    checkpoints.save_params(params, tmp_path / "ours.npz", format="npz")
    for name in ("deepmind_layout.npz", "ours.pkl", "ours.npz"):
        merged, replaced = checkpoints.validate_and_merge(
            checkpoints.load_params(tmp_path / name), expected
        )
        assert replaced == []
        np.testing.assert_array_equal(np.asarray(apply(merged, None, x)["logits"]), reference)

    # Fine-tuning on 3 classes from the 5-class checkpoint.
    forward3 = hk.transform(
        lambda x: NFNet(
            3, "F0", width_pattern=[16], depth_pattern=[2], group_width=8, stem_widths=(4, 4, 4)
        )(x, False)
    )
    expected3 = jax.eval_shape(forward3.init, jax.random.key(0), x)
    merged, replaced = checkpoints.validate_and_merge(
        checkpoints.load_params(tmp_path / "ours.pkl"),
        expected3,
        replace_head=True,
        rng=jax.random.key(1),
    )
    assert replaced == ["NFNet/~/linear/b", "NFNet/~/linear/w"]
    assert jax.jit(forward3.apply)(merged, None, x)["logits"].shape == (2, 3)
