"""Fine-tuning: `config.init_from` loads every weight but a head of another size."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import evaluate
from nfnets_jax import checkpoints
from nfnets_jax.training import config as config_lib
from nfnets_jax.training import finetune, loop, parallel, startup
from tests.pretrained_helpers import HEAD, synthetic_params, write_released_layout
from tests.training.tiny import restore_state, tiny_config


@pytest.fixture(scope="module")
def fresh():
    """The tiny run's freshly initialised state (10 digit classes), its setup and mapper."""
    config = tiny_config()
    mapper = parallel.DeviceMapper("pmap")
    setup = startup.build_setup(config, startup.plan_run(config, mapper), mapper)
    state = jax.jit(setup.init, out_shardings=mapper.replicated)(
        jax.random.PRNGKey(config.seed), jnp.zeros(setup.image_shape)
    )
    return state, setup, mapper


@pytest.fixture(scope="module")
def imagenet_file(tmp_path_factory):
    """DeepMind's layout, the tiny architecture, a 1,000-class head."""
    params = synthetic_params(1000, seed=7)
    return write_released_layout(params, tmp_path_factory.mktemp("w") / "F0_haiku.npz"), params


def flat(tree):
    return {
        k: np.asarray(v) for k, v in checkpoints.flatten_params(parallel.host_copy(tree)).items()
    }


def test_everything_but_a_head_of_another_size_comes_from_the_file(fresh, imagenet_file):
    state, setup, mapper = fresh
    path, loaded = imagenet_file
    new = finetune.init_state_from_checkpoint(state, path, optimizer=setup.optimizer, mapper=mapper)
    params, before, source = (
        flat(new.params),
        flat(state.params),
        checkpoints.flatten_params(loaded),
    )
    head = {f"{HEAD}/w", f"{HEAD}/b"}
    for key in params:
        expected = before[key] if key in head else source[key]
        np.testing.assert_array_equal(params[key], expected, err_msg=key)
    assert params[f"{HEAD}/w"].shape == (32, 10)  # the model's own, freshly initialised
    for key, value in flat(new.ema_params).items():
        np.testing.assert_array_equal(value, params[key])  # EMA starts at the loaded weights
    assert int(parallel.host_copy(new.step)) == 0
    # A fresh optimizer state: zero momentum, zero counters and AGC statistics.
    assert all(not np.any(x) for x in jax.tree.leaves(parallel.host_copy(new.opt_state)))
    assert jax.tree.structure(new.opt_state) == jax.tree.structure(state.opt_state)
    shardings = {x.sharding for x in jax.tree.leaves(new)}
    assert shardings == {mapper.replicated}


def test_a_head_of_the_same_size_is_loaded_too(fresh, tmp_path):
    state, setup, mapper = fresh
    params = synthetic_params(10, seed=8)
    path = write_released_layout(params, tmp_path / "digits.npz")
    new = finetune.init_state_from_checkpoint(state, path, optimizer=setup.optimizer, mapper=mapper)
    for key, value in checkpoints.flatten_params(params).items():
        np.testing.assert_array_equal(flat(new.params)[key], value)


def test_mismatches_other_than_the_head_are_one_clear_error(fresh, tmp_path):
    state, setup, mapper = fresh
    wider = write_released_layout(
        synthetic_params(1000, seed=9, width_pattern=(16, 32)), tmp_path / "wider.npz"
    )
    with pytest.raises(finetune.InitFromError) as error:
        finetune.init_state_from_checkpoint(state, wider, optimizer=setup.optimizer, mapper=mapper)
    message = str(error.value)
    assert "does not fit the model being trained" in message
    assert "mis-shaped (23):" in message  # every difference, in one message
    assert "nf_block_1/~/conv2/w: checkpoint (1, 1, 16, 32) vs model (1, 1, 8, 16)" in message
    assert "NFNet/~/linear/w: checkpoint (64, 1000) vs model (32, 10)" in message
    assert "replace_head" not in message  # the head is already replaceable
    assert "Check that the model variant and options" in message
    with pytest.raises(finetune.InitFromError, match="does not exist"):
        finetune.init_state_from_checkpoint(state, str(tmp_path / "gone.npz"))
    config = tiny_config(init_from=str(tmp_path / "F0_haiku.npz"))
    with pytest.raises(config_lib.ConfigError, match="dm-nfnets/F0_haiku.npz"):
        loop.train_and_evaluate(config, str(tmp_path / "fresh_run"))


@pytest.mark.slow
def test_fine_tuning_run_export_and_evaluate(fresh, imagenet_file, tmp_path, capsys):
    """train --config.init_from, then export the run and evaluate the exported file."""
    state, _, _ = fresh
    released, loaded = imagenet_file
    path = str(shutil.copy(released, tmp_path / "F0_haiku.npz"))
    config = tiny_config(init_from=path, num_train_steps=1)
    with config.unlocked():
        config.optimizer.base_lr = 0.0  # the one update leaves the weights as loaded
        config.optimizer.schedule.warmup_epochs = 0.0
        config.dataset.eval_split = "validation[:32]"
    workdir = str(tmp_path / "run")
    result = loop.train_and_evaluate(config, workdir)
    assert result["step"] == 1
    assert "Initialised from parameter file" in capsys.readouterr().out
    trained = flat(restore_state(workdir, config).params)
    source, before = checkpoints.flatten_params(loaded), flat(state.params)
    for key, value in trained.items():
        expected = before[key] if key.startswith(HEAD) else source[key]
        np.testing.assert_array_equal(value, expected, err_msg=key)
    # The exported EMA weights evaluate exactly as the run's own final EMA evaluation.
    out = tmp_path / "finetuned.npz"
    checkpoints.export_run(workdir, out)
    output = tmp_path / "eval.json"
    argv = ["evaluate", f"--checkpoint={out}", f"--output={output}"]
    assert evaluate.main(argv + ["--config.dataset.eval_split=validation[:32]"]) == 0
    results = json.loads(output.read_text())
    assert results["config"] == f"the spec {out}.json"  # dataset, size, preproc from export
    assert results["num_examples"] == 32
    for key in ("top_1_acc", "top_5_acc", "loss"):
        np.testing.assert_allclose(results[key], result["ema_eval"][key], rtol=1e-5)
    # init_from only matters for a fresh start: the run resumes without the file.
    os.remove(path)
    assert loop.train_and_evaluate(config, workdir)["step"] == 1


def test_a_timm_family_file_initialises_a_run_of_its_model(tmp_path):
    # timm's nf_regnet_b0 (1,000 classes, saved in timm's layout) into a 10-class run of
    # the project's nf_regnet_b0: every body weight from the file, a fresh head.
    config = tiny_config(model="nf_regnet_b0", init_from=str(tmp_path / "b0.safetensors"))
    with config.unlocked():
        config.model_kwargs = type(config.model_kwargs)({"conv_impl": "native"})
    assert not finetune.resolve_init_from_numerics(config)  # the family has no numerics
    mapper = parallel.DeviceMapper("pmap")
    setup = startup.build_setup(config, startup.plan_run(config, mapper), mapper)
    state = jax.jit(setup.init, out_shardings=mapper.replicated)(
        jax.random.PRNGKey(0), jnp.zeros(setup.image_shape)
    )
    spec = checkpoints.timm_model_spec(checkpoints.TIMM_MODELS["nf_regnet_b0"], 1000)
    rng = np.random.default_rng(3)
    source = jax.tree.map(
        lambda a: rng.standard_normal(a.shape).astype(np.float32), spec.abstract_params()
    )
    assert checkpoints.save_timm(source, config.init_from).timm_name == "nf_regnet_b0"

    new = finetune.init_state_from_checkpoint(
        state, config.init_from, optimizer=setup.optimizer, mapper=mapper
    )
    params, before = flat(new.params), flat(state.params)
    source = checkpoints.flatten_params(source)
    assert params.keys() == source.keys()
    head = {"TimmNFNet/~/linear/w", "TimmNFNet/~/linear/b"}
    for key, value in params.items():
        np.testing.assert_array_equal(value, before[key] if key in head else source[key], key)
    assert params["TimmNFNet/~/linear/w"].shape == (960, 10)
