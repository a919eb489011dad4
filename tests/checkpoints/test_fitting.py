"""fit_checkpoint: the one check between a checkpoint and the model that uses it."""

import jax
import numpy as np
import pytest

from nfnets_jax import checkpoints

HEAD = "Net/~/linear"


def tree(classes=10, with_state=False):
    params = {
        "Net/~/conv": {"w": np.full((3, 3, 3, 4), 0.5, np.float32)},
        HEAD: {"w": np.ones((4, classes), np.float32), "b": np.zeros(classes, np.float32)},
    }
    state = {"Net/~/bn": {"mean": np.arange(4.0, dtype=np.float32)}} if with_state else {}
    return params, state


def as_file(params, name="f.npz"):
    return checkpoints.LoadedCheckpoint(params, None, None, name, f"parameter file {name}")


def test_a_fitting_file_comes_back_in_the_model_dtypes():
    params, _ = tree()
    loaded = as_file(jax.tree.map(lambda x: x.astype(np.float64), params))
    fitted = checkpoints.fit_checkpoint(loaded, params, target="Net")
    assert fitted.replaced == [] and fitted.state == {}
    assert fitted.params[HEAD]["w"].dtype == np.float32
    np.testing.assert_array_equal(fitted.params["Net/~/conv"]["w"], 0.5)


def test_state_stored_beside_the_parameters_is_separated_again(tmp_path):
    params, state = tree(with_state=True)
    path = tmp_path / "teacher.npz"
    checkpoints.save_model_variables(params, state, path)
    loaded = checkpoints.load_checkpoint(path)
    fitted = checkpoints.fit_checkpoint(loaded, params, state, target="Net")
    assert set(fitted.params) == set(params) and "Net/~/bn" not in fitted.params
    np.testing.assert_array_equal(fitted.state["Net/~/bn"]["mean"], [0, 1, 2, 3])


def test_a_stateful_model_needs_its_statistics():
    params, state = tree(with_state=True)
    with pytest.raises(checkpoints.CheckpointMismatchError) as error:
        checkpoints.fit_checkpoint(as_file(params), params, state, target="Net (BatchNorm)")
    message = str(error.value)
    assert "Net (BatchNorm) keeps state (1 entries, e.g. 'Net/~/bn/mean'" in message
    assert "save_model_variables" in message
    # Fine-tuning keeps its fresh statistics instead.
    fitted = checkpoints.fit_checkpoint(
        as_file(params), params, state, target="Net", state_required=False
    )
    assert fitted.state is None


def test_another_number_of_classes_is_named_as_such():
    params, _ = tree(classes=1000)
    expected, _ = tree(classes=10)
    with pytest.raises(checkpoints.CheckpointMismatchError) as error:
        checkpoints.fit_checkpoint(as_file(params), expected, target="the 10-way Net", hint="Do X.")
    first, hint, *rest = str(error.value).splitlines()
    assert first == "parameter file f.npz classifies 1000 classes but the 10-way Net has 10."
    assert hint == "Do X."
    assert any("Net/~/linear/w: checkpoint (4, 1000) vs model (4, 10)" in line for line in rest)


def test_check_only_copies_nothing_and_replace_head_keeps_fresh_values():
    params, _ = tree(classes=1000)
    expected, _ = tree(classes=10)
    abstract = jax.eval_shape(lambda: expected)
    checked = checkpoints.fit_checkpoint(
        as_file(params), abstract, target="Net", replace_head=True, check_only=True
    )
    assert checked == (None, None, [f"{HEAD}/b", f"{HEAD}/w"])
    fresh = jax.tree.map(lambda x: x + 7, expected)
    fitted = checkpoints.fit_checkpoint(as_file(params), fresh, target="Net", replace_head=True)
    np.testing.assert_array_equal(fitted.params[HEAD]["w"], fresh[HEAD]["w"])
    np.testing.assert_array_equal(fitted.params["Net/~/conv"]["w"], 0.5)


def test_shapes_that_differ_elsewhere_are_all_listed():
    params, _ = tree()
    broken = {**params, "Net/~/conv": {"w": np.zeros((1, 1, 3, 4))}, "Extra": {"w": np.zeros(2)}}
    with pytest.raises(checkpoints.CheckpointMismatchError) as error:
        checkpoints.fit_checkpoint(as_file(broken), params, target="Net")
    message = str(error.value)
    assert message.startswith("parameter file f.npz does not fit Net.")
    assert "Net/~/conv/w: checkpoint (1, 1, 3, 4) vs model (3, 3, 3, 4)" in message
    assert "unexpected in the checkpoint (1)" in message and "Extra/w (2,)" in message
