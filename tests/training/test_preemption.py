"""Real signals on a real training process: SIGTERM saves, SIGKILL loses only recent steps.

The runs are the README's command line on the tiny config, so they also check that a
finished or preempted run exits 0 with nothing on its console but the run's own lines.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from nfnets_jax.training import checkpoint as checkpoint_lib
from nfnets_jax.training import loop
from tests.training.tiny import restore_state, tiny_config

# Real runs signalled and killed in subprocesses.
pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 24
# Every line a run prints itself: "[HH:MM:SS] ..." progress lines, and absl warnings.
RUN_LINE = re.compile(r"^(\[\d\d:\d\d:\d\d\] |W\d{4} [\d:.]+ +\d+ \w+\.py:\d+\] )")


def assert_quiet(output):
    """No library banner (TensorFlow's oneDNN notice, XLA's backend search...) and no
    traceback or abort: only the run's own lines."""
    foreign = [line for line in output.splitlines() if line and not RUN_LINE.match(line)]
    assert not foreign, "\n".join(foreign)


def _start(workdir, *overrides, steps=STEPS):
    return subprocess.Popen(
        [
            sys.executable,
            "-u",
            "-m",
            "experiments.train",
            "--config=tests/training/tiny.py",
            f"--config.num_train_steps={steps}",
            f"--workdir={workdir}",
            *overrides,
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for(predicate, process, timeout=240.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if process.poll() is not None:
            raise AssertionError(f"training exited early:\n{process.stdout.read()}")
        time.sleep(0.05)
    process.kill()
    raise AssertionError("timed out waiting for the training process")


def _finished_steps(workdir):
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        return []
    return sorted(int(d) for d in os.listdir(directory) if d.isdigit())


def test_sigterm_saves_a_checkpoint_at_the_current_step_and_exits_cleanly(tmp_path):
    workdir = str(tmp_path)
    # No periodic checkpoints: the only one must come from the SIGTERM handler.
    steps = 100_000  # far more than can run before the signal arrives
    process = _start(
        workdir, "--config.checkpoint_every_steps=0", "--config.log_every_steps=1", steps=steps
    )
    lines = []
    deadline = time.time() + 240
    for line in process.stdout:  # blocks until the run prints its third step
        assert time.time() < deadline, "".join(lines)
        lines.append(line)
        if re.search(r" step +3/", line):
            break
    process.send_signal(signal.SIGTERM)
    output = "".join(lines) + process.communicate(timeout=120)[0]
    assert process.returncode == 0, output
    assert_quiet(output)
    stopped = int(re.search(r"Preempted at step (\d+): the newest checkpoint", output).group(1))
    assert 3 <= stopped < steps
    assert _finished_steps(workdir) == [stopped]
    state = restore_state(workdir, tiny_config(num_train_steps=steps))
    assert int(state.step) == stopped


def test_sigkill_loses_only_the_steps_since_the_last_checkpoint(tmp_path):
    # The default dataset.seed (unset): the seed is drawn at the first start, recorded, and
    # reused by the resumed run, so the resume is exact without choosing a seed.
    workdir = str(tmp_path / "killed")
    flags = ["--config.checkpoint_every_steps=2", "--config.keep_checkpoints=50"]
    process = _start(workdir, "--config.dataset.seed=None", *flags)
    _wait_for(lambda: len(_finished_steps(workdir)) >= 2, process)
    process.kill()  # SIGKILL: no handler runs, nothing is flushed.
    process.wait(timeout=30)
    survived = _finished_steps(workdir)
    last = survived[-1]
    assert last < STEPS, "the run finished before it could be killed"
    assert survived == list(range(2, last + 1, 2))  # every periodic checkpoint is intact
    with open(os.path.join(workdir, "config.json")) as f:
        seed = json.load(f)["dataset"]["seed"]
    assert isinstance(seed, int) and seed >= 0

    # Resuming (the same command, seed still unset) continues from the last checkpoint and
    # ends exactly where an uninterrupted run with that seed ends: only the work after
    # step `last` was redone.
    resumed = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.train",
            "--config=tests/training/tiny.py",
            f"--config.num_train_steps={STEPS}",
            "--config.dataset.seed=None",
            *flags,
            f"--workdir={workdir}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert_quiet(resumed.stdout + resumed.stderr)
    assert f"Resumed from {os.path.join(workdir, 'checkpoints')} at step {last}." in resumed.stdout
    assert f"data seed {seed}." in resumed.stdout

    # Checkpoint frequency does not change the numbers: the reference saves only at the end.
    config = tiny_config(num_train_steps=STEPS, checkpoint_every_steps=0, **{"dataset.seed": seed})
    reference_dir = str(tmp_path / "reference")
    loop.train_and_evaluate(config, reference_dir)
    final = restore_state(workdir, config)
    reference = restore_state(reference_dir, config)
    assert int(final.step) == int(reference.step) == STEPS
    for x, y in zip(jax.tree.leaves(final), jax.tree.leaves(reference), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    checkpointer = checkpoint_lib.Checkpointer(os.path.join(workdir, "checkpoints"))
    assert checkpointer.latest_step() == STEPS
    assert checkpointer.read_meta(STEPS)["data_seed"] == seed
    checkpointer.close()
