"""`train_and_evaluate` end to end on the tiny digits config (4 fake devices)."""

import glob
import json
import logging
import os
import shutil
import threading

import jax
import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator

from nfnets_jax.data import pipeline, sources
from nfnets_jax.data.sources import get_source
from nfnets_jax.training import checkpoint as checkpoint_lib
from nfnets_jax.training import loop
from tests.training.tiny import restore_state, tiny_config

# End-to-end runs of train_and_evaluate.
pytestmark = pytest.mark.slow


def _assert_states_equal(a, b, rtol=0.0):
    for path, x, y in zip(
        jax.tree_util.tree_leaves_with_path(a),
        jax.tree.leaves(a),
        jax.tree.leaves(b),
        strict=True,
    ):
        np.testing.assert_allclose(
            np.asarray(x),
            np.asarray(y),
            rtol=rtol,
            atol=0 if rtol == 0 else 1e-7,
            err_msg=jax.tree_util.keystr(path[0]),
        )


def _threads_left_by(run):
    """Calls `run()`; returns the threads it started that are still alive, and its result."""
    before = set(threading.enumerate())
    result = error = None
    try:
        result = run()
    except BaseException as caught:  # noqa: BLE001 - KeyboardInterrupt included
        error = caught
    started = [t for t in threading.enumerate() if t not in before]
    for thread in started:
        # Orbax closes its event loops with `executor.shutdown(wait=False)`: their idle
        # worker threads are already exiting. Every other thread must be gone now.
        if thread.name.startswith("asyncio_"):
            thread.join(timeout=10)
    left = [t.name for t in started if t.is_alive()]
    return left, result, error


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """An uninterrupted 6-step run: the reference for several tests."""
    workdir = str(tmp_path_factory.mktemp("full"))
    config = tiny_config()
    resolved = []

    def counting_get_source(*args, **kwargs):
        resolved.append(args)
        return get_source(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sources, "get_source", counting_get_source)
        patch.setattr(pipeline, "get_source", counting_get_source)
        left, result, error = _threads_left_by(lambda: loop.train_and_evaluate(config, workdir))
    assert error is None, error
    assert left == [], f"threads still running after the run returned: {left}"
    # Start-up validation resolves the dataset once; the train iterator and both final
    # evaluations (raw, EMA) use that source instead of reading the metadata again.
    assert resolved == [("digits",)]
    return config, workdir, result


def test_run_writes_config_params_metrics_events_and_checkpoints(full_run):
    config, workdir, result = full_run
    assert result["step"] == 6 and not result["preempted"]
    assert set(result) >= {"train", "eval", "ema_eval"}
    assert result["eval"]["num_examples"] == 40.0  # validation[:40], each once

    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f) == json.loads(config.to_json_best_effort())
    with open(os.path.join(workdir, "params.txt")) as f:
        total = f.read().strip().splitlines()[-1]
    state = restore_state(workdir, config)
    num_params = sum(x.size for x in jax.tree.leaves(state.params))
    assert total.split()[-1] == f"{num_params:,}"

    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    train_steps = [r["step"] for r in records if "train/loss" in r]
    assert train_steps == [2, 4, 6]
    for key in (
        "train/top_1_acc",
        "train/learning_rate",
        "train/grad_norm",
        "train/agc_clip_fraction",
        "train/images_per_sec",
    ):
        assert key in records[-3] or key in records[-4], key
    final_eval = [r for r in records if "eval/top_1_acc" in r][-1]
    assert final_eval["step"] == 6
    assert final_eval["eval/top_1_acc"] == pytest.approx(result["eval"]["top_1_acc"])
    assert any("ema_eval/top_1_acc" in r for r in records)

    (events,) = glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*"))
    accumulator = event_accumulator.EventAccumulator(events, size_guidance={"tensors": 0})
    accumulator.Reload()
    tags = accumulator.Tags()["tensors"]
    assert {"train/loss", "eval/top_1_acc", "ema_eval/top_1_acc"} <= set(tags)
    assert [e.step for e in accumulator.Tensors("train/loss")] == [2, 4, 6]

    # Checkpoints every 3 steps plus the last, keeping the newest 2.
    assert checkpoint_lib.Checkpointer(os.path.join(workdir, "checkpoints")).all_steps() == [3, 6]
    assert int(state.step) == 6
    with open(os.path.join(workdir, "final_metrics.json")) as f:
        final_json = json.load(f)
    assert final_json["eval"] == result["eval"]


def test_stopped_and_resumed_run_matches_uninterrupted(full_run, tmp_path):
    config, reference_dir, _ = full_run
    workdir = str(tmp_path)
    left, first, _ = _threads_left_by(
        lambda: loop.train_and_evaluate(config, workdir, stop_at_step=4)
    )
    assert left == []
    assert first["step"] == 4 and "eval" not in first
    second = loop.train_and_evaluate(config, workdir)
    assert second["step"] == 6
    resumed = restore_state(workdir, config)
    reference = restore_state(reference_dir, config)
    # Same step, params, optimizer state, EMA and RNG, and the data stream continued at
    # batch 4 (a different batch would change the parameters).
    _assert_states_equal(resumed, reference)


def test_shard_map_run_matches_pmap_run(full_run, tmp_path):
    config, reference_dir, _ = full_run
    sharded_config = tiny_config(parallelism="shard_map")
    loop.train_and_evaluate(sharded_config, str(tmp_path))
    _assert_states_equal(
        restore_state(str(tmp_path), sharded_config),
        restore_state(reference_dir, config),
        rtol=1e-5,
    )


def test_corrupt_latest_checkpoint_falls_back_with_warning(full_run, tmp_path, caplog):
    config, reference_dir, _ = full_run
    workdir = str(tmp_path / "run")
    shutil.copytree(reference_dir, workdir)
    for path in glob.glob(
        os.path.join(workdir, "checkpoints", "6", "state", "**", "*"), recursive=True
    ):
        if os.path.isfile(path):
            with open(path, "wb") as f:
                f.write(b"garbage")
    with caplog.at_level(logging.WARNING):
        state = restore_state(workdir, config)
    assert int(state.step) == 3
    assert "step 6" in caplog.text and "falling back" in caplog.text


def test_every_checkpoint_corrupt_is_a_clear_error(full_run, tmp_path):
    config, reference_dir, _ = full_run
    workdir = str(tmp_path / "run")
    shutil.copytree(reference_dir, workdir)
    for step in (3, 6):
        shutil.rmtree(os.path.join(workdir, "checkpoints", str(step), "state"))
    with pytest.raises(checkpoint_lib.CheckpointError, match="None of the checkpoints"):
        restore_state(workdir, config)


def test_nan_in_a_batch_stops_the_run_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    real_iterator = loop.data.train_iterator

    def poisoned_iterator(*args, **kwargs):
        iterator = real_iterator(*args, **kwargs)
        for index, batch in enumerate(iterator, start=kwargs["start_step"]):
            if index == 4:
                batch = dict(batch, images=np.full_like(batch["images"], np.nan))
            yield batch

    monkeypatch.setattr(loop.data, "train_iterator", poisoned_iterator)
    config = tiny_config(num_train_steps=8)
    left, _, error = _threads_left_by(lambda: loop.train_and_evaluate(config, str(tmp_path)))
    assert left == []
    assert isinstance(error, loop.NonFiniteLossError)
    assert "stopped at step 4: the loss was" in str(error)
    assert "last good checkpoint (step 3) is intact" in str(error)
    steps = checkpoint_lib.Checkpointer(os.path.join(tmp_path, "checkpoints")).all_steps()
    assert steps == [3]
    assert int(restore_state(str(tmp_path), config).step) == 3


@pytest.mark.parametrize("failure", [KeyboardInterrupt, OSError])
def test_interrupted_or_failing_run_stops_every_thread_and_keeps_its_checkpoint(
    failure, tmp_path, monkeypatch, capsys
):
    real_iterator = loop.data.train_iterator

    def failing_iterator(*args, **kwargs):
        for index, batch in enumerate(real_iterator(*args, **kwargs)):
            if index == 4:  # Ctrl-C, or a read error, while step 4 is being fetched
                raise failure("input broke" if failure is OSError else None)
            yield batch

    monkeypatch.setattr(loop.data, "train_iterator", failing_iterator)
    config = tiny_config(num_train_steps=8)
    left, _, error = _threads_left_by(lambda: loop.train_and_evaluate(config, str(tmp_path)))
    assert left == []
    assert isinstance(error, failure)
    steps = checkpoint_lib.Checkpointer(os.path.join(tmp_path, "checkpoints")).all_steps()
    assert steps == [3]  # the periodic checkpoint, completely written
    if failure is KeyboardInterrupt:
        assert "Interrupted at step 4: the newest checkpoint (step 3)" in capsys.readouterr().out


def test_default_data_seed_is_drawn_once_recorded_and_reused(tmp_path):
    config = tiny_config(**{"dataset.seed": None})
    workdir = str(tmp_path)
    first = loop.train_and_evaluate(config, workdir, stop_at_step=2)
    seed = first["data_seed"]
    assert isinstance(seed, int) and seed >= 0
    assert config.dataset.seed is None  # the caller's config is left as it was
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f)["dataset"]["seed"] == seed
    checkpointer = checkpoint_lib.Checkpointer(os.path.join(workdir, "checkpoints"))
    meta = checkpointer.read_meta(2)
    checkpointer.close()
    assert meta["data_seed"] == seed
    second = loop.train_and_evaluate(config, workdir)
    assert second["step"] == 6 and second["data_seed"] == seed
