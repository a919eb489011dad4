"""Reading run directories (raw or EMA, any step) and exporting them as standalone files."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import export
from nfnets_jax import checkpoints, pretrained
from nfnets_jax.training import checkpoint, parallel, startup
from tests.training.tiny import tiny_config

EMA_OFFSET = 1.0  # the fixture's EMA parameters are the raw ones plus this


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run directory as train_and_evaluate leaves it: config.json and orbax steps 2 and 5.

    The state is the tiny model's initial state (no training step is compiled), with EMA
    parameters shifted so that raw and EMA reads can be told apart.
    """
    workdir = tmp_path_factory.mktemp("run")
    config = tiny_config()
    mapper = parallel.DeviceMapper("pmap")
    setup = startup.build_setup(config, startup.plan_run(config, mapper), mapper)
    state = jax.jit(setup.init, out_shardings=mapper.replicated)(
        jax.random.PRNGKey(0), jnp.zeros(setup.image_shape)
    )
    state = state._replace(ema_params=jax.tree.map(lambda x: x + EMA_OFFSET, state.params))
    saver = checkpoint.Checkpointer(str(workdir / "checkpoints"), async_save=False)
    for step in (2, 5):
        saver.save(step, state, {"step": step})
    saver.close()
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2, sort_keys=True))
    return str(workdir), parallel.host_copy(state.params)


def assert_same(tree, expected, offset=0.0):
    flat, want = checkpoints.flatten_params(tree), checkpoints.flatten_params(expected)
    assert flat.keys() == want.keys()
    for key in want:
        np.testing.assert_allclose(flat[key], np.asarray(want[key]) + offset, rtol=1e-6)


@pytest.mark.slow
def test_read_run_gives_ema_or_raw_parameters_and_the_spec(run_dir):
    path, raw = run_dir
    ema = checkpoints.read_run(path)
    assert (ema.step, ema.ema) == (5, True)
    assert ema.description == f"run {path}, step 5, EMA parameters"
    assert_same(ema.params, raw, EMA_OFFSET)
    plain = checkpoints.read_run(os.path.join(path, "checkpoints"), use_ema=False, step=2)
    assert (plain.step, plain.ema) == (2, False)
    assert_same(plain.params, raw)
    spec = ema.spec  # from the run's config.json
    assert (spec.model, spec.num_classes, spec.image_size, spec.eval_preproc) == (
        "NFNet",
        10,
        16,
        "resize",
    )
    assert spec.dataset == "digits" and spec.class_names == tuple("0123456789")
    assert plain.spec == spec  # config.json is found from checkpoints/ too
    # A path relative to the working directory reads the same run.
    relative = checkpoints.read_run(os.path.relpath(path))
    assert relative.step == 5 and relative.source == str(path)
    assert_same(relative.params, raw, EMA_OFFSET)


@pytest.mark.slow
def test_missing_runs_and_steps(run_dir, tmp_path):
    path, _ = run_dir
    with pytest.raises(checkpoints.CheckpointNotFoundError, match=r"step 3 \(it has"):
        checkpoints.read_run(path, step=3)
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(checkpoints.CheckpointNotFoundError, match="no checkpoint yet"):
        checkpoints.read_run(tmp_path)
    os.rmdir(tmp_path / "checkpoints")
    with pytest.raises(checkpoints.CheckpointNotFoundError, match="not a training run"):
        checkpoints.load_checkpoint(tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["pickle", "npz"])
def test_export_command_writes_the_released_layout_and_a_spec(run_dir, tmp_path, capsys, fmt):
    path, raw = run_dir
    out = tmp_path / f"mine.{fmt}"
    assert export.main([f"--workdir={path}", f"--out={out}", f"--format={fmt}"]) == 0
    printed = capsys.readouterr().out
    assert f"(run {path}, step 5, EMA parameters) to {out}" in printed
    assert f"Wrote the model spec to {out}.json." in printed
    with open(out, "rb") as f:
        head = f.read(2)
    assert head == (b"PK" if fmt == "npz" else b"\x80\x04")  # zip, or pickle protocol 4
    assert_same(checkpoints.load_params(out), raw, EMA_OFFSET)
    assert json.loads((tmp_path / f"mine.{fmt}.json").read_text())["num_classes"] == 10
    # --no-ema exports the raw parameters.
    assert export.main([f"--workdir={path}", f"--out={out}", "--no-ema", "--step=2"]) == 0
    assert_same(checkpoints.load_params(out), raw)


def test_export_errors(tmp_path, capsys):
    assert export.main([f"--workdir={tmp_path}", f"--out={tmp_path / 'x.npz'}"]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert export.main([f"--workdir={tmp_path}", "--out=/nonexistent/dir/x.npz"]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_exported_file_and_run_directory_give_the_same_model(run_dir, tmp_path):
    path, _ = run_dir
    out = tmp_path / "demo.npz"
    checkpoints.export_run(path, out)
    from_run = pretrained.load(path)
    from_file = pretrained.load(out)
    assert "recorded with the checkpoint" in from_file.description
    assert from_file.spec == from_run.spec
    assert from_file.class_names == tuple("0123456789")
    digits = np.stack([np.eye(8, dtype=np.uint8) * 255] * 3, axis=-1)  # a real-size image
    np.testing.assert_array_equal(from_file.logits(digits), from_run.logits(digits))
